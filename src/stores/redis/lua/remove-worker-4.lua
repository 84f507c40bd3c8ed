--[[
  Forgets the worker entirely: session, heartbeat, placement attributes,
  selection entries, label memberships and the leases it held.

  Input:
    KEYS[1] worker hash
    KEYS[2] worker-leases set
    KEYS[3] leases hash
    KEYS[4] lease-expiry zset
    ARGV[1] key prefix
    ARGV[2] workerId

  Output:
    1  the worker was known
    0  it was not
]]
--- @include "includes/lease-state"

local prefix, workerId = ARGV[1], ARGV[2]
local known = redis.call("EXISTS", KEYS[1])
unindexWorker(prefix, workerId)
local leaseIds = redis.call("SMEMBERS", KEYS[2])
for i = 1, #leaseIds do
  redis.call("HDEL", KEYS[3], leaseIds[i])
  redis.call("ZREM", KEYS[4], leaseIds[i])
end
redis.call("DEL", KEYS[1], KEYS[2])
redis.call("HDEL", prefix .. "sessions", workerId)
redis.call("ZREM", prefix .. "heartbeats", workerId)
redis.call("SREM", prefix .. "leased-workers", workerId)
return known
