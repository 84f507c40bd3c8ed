--[[
  Brings data written by an older version of the store up to this layout;
  run by every replica at start, idempotent and cheap.

  1. Stores before the heartbeat batches (heartbeat-many-4.lua) kept no
     leased-workers set, and a heartbeat extends only the leases of workers in
     it: without this, leases taken before an upgrade would expire although
     their workers heartbeat. One pass over the leases hash, every start.
     (Sessions and freshness need nothing: a session attached by an older
     replica is refused at its first heartbeat, and its agent reconnects and
     attaches again.)
  2. Layout 3 (see includes/lease-state): pool-free replaced pool-avail and
     pool-room, the worker hash's seq replaced sel. Once per store (the layout
     key records it): every worker that was ever attached (the heartbeats
     zset) gets its seq from sel, the old sets of its pool are deleted, and it
     is reindexed into pool-free. Selection order is unchanged: sel was
     "<16-digit seq>:<workerId>", pool-free orders by (leases, seq, workerId).
     Replicas of the older version must not place jobs on the store after
     this (they read and write the old sets): upgrade every replica together.

  Input:
    KEYS[1] leases hash
    KEYS[2] leased-workers set
    KEYS[3] heartbeats zset
    KEYS[4] layout string
    ARGV[1] key prefix

  Output:
    the number of workers holding leases
]]
--- @include "includes/lease-state"

local LAYOUT = "3"
local prefix = ARGV[1]

local holders = redis.call("HVALS", KEYS[1])
for first = 1, #holders, 1000 do
  redis.call("SADD", KEYS[2], unpack(holders, first, math.min(first + 999, #holders)))
end

if redis.call("GET", KEYS[4]) ~= LAYOUT then
  local now = nowMs()
  local workers = redis.call("ZRANGE", KEYS[3], 0, -1)
  local oldPools = {}
  for i = 1, #workers do
    local key = workerKey(prefix, workers[i])
    local f = redis.call("HMGET", key, "pool", "sel")
    if f[1] then
      oldPools[f[1]] = true
    end
    if f[2] then
      local seq = tonumber(string.sub(f[2], 1, 16))
      if seq and seq > 0 then
        redis.call("HSET", key, "seq", string.format("%d", seq))
      end
      redis.call("HDEL", key, "sel")
    end
  end
  for poolId in pairs(oldPools) do
    redis.call("DEL", prefix .. "pool-avail:" .. poolId, prefix .. "pool-room:" .. poolId)
  end
  for i = 1, #workers do
    reindexWorker(prefix, workers[i], now)
  end
  redis.call("SET", KEYS[4], LAYOUT)
end

return redis.call("SCARD", KEYS[2])
