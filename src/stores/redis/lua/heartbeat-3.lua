--[[
  Refreshes the worker's heartbeat and extends every unexpired lease it holds
  to now + lease TTL, if the session still holds the worker. Leases already
  past expiry are left for the reaper.

  Input:
    KEYS[1] worker hash
    KEYS[2] worker-leases set
    KEYS[3] lease-expiry zset
    ARGV[1] key prefix
    ARGV[2] workerId
    ARGV[3] sessionId
    ARGV[4] heartbeat TTL (ms)
    ARGV[5] lease TTL (ms)

  Output:
    1  refreshed
    0  the session no longer holds the worker
]]
--- @include "includes/lease-state"

local prefix, workerId = ARGV[1], ARGV[2]
local f = redis.call("HMGET", KEYS[1], "session", "hb", "hbTtl", "leases", "pool")
if f[1] ~= ARGV[3] then
  return 0
end
local now = nowMs()
local hbTtl = tonumber(ARGV[4])
redis.call("HSET", KEYS[1], "hb", now, "hbTtl", hbTtl)
if (tonumber(f[4]) or 0) > 0 then
  local leaseExpiry = now + tonumber(ARGV[5])
  local leaseIds = redis.call("SMEMBERS", KEYS[2])
  -- In chunks, to stay far below Lua's limit on unpacked arguments.
  for first = 1, #leaseIds, 1000 do
    local chunk = {unpack(leaseIds, first, math.min(first + 999, #leaseIds))}
    local expiries = redis.call("ZMSCORE", KEYS[3], unpack(chunk))
    local extend = {}
    for i = 1, #chunk do
      if expiries[i] and tonumber(expiries[i]) > now then
        extend[#extend + 1] = leaseExpiry
        extend[#extend + 1] = chunk[i]
      end
    end
    if #extend > 0 then
      redis.call("ZADD", KEYS[3], "XX", unpack(extend))
    end
  end
end
local wasFresh = f[2] and f[3] and (tonumber(f[2]) + tonumber(f[3])) > now
if wasFresh and f[5] then
  -- Still healthy and indexed as before (a heartbeat changes no lease count):
  -- only its freshness moves. XX: a worker that is not accepting work stays out.
  local healthyKey = poolKeys(prefix, f[5])
  redis.call("ZADD", healthyKey, "XX", now + hbTtl, workerId)
else
  reindexWorker(prefix, workerId, now)
end
return 1
