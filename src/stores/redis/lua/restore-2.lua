--[[
  Re-creates a lease (adoption after a store loss or a server restart).
  Idempotent: a lease already held by the worker only gets its expiry reset;
  one held by another worker moves. Capacity counts it once. The worker need
  not be attached yet; attach keeps the lease count.

  Input:
    KEYS[1] leases hash
    KEYS[2] lease-expiry zset
    ARGV[1] key prefix
    ARGV[2] lease id ("<jobId>:<attempt>")
    ARGV[3] workerId
    ARGV[4] lease TTL (ms)

  Output:
    1  created
    0  it existed already
]]
--- @include "includes/lease-state"

local prefix, leaseId, workerId = ARGV[1], ARGV[2], ARGV[3]
local now = nowMs()
local expiry = now + tonumber(ARGV[4])
local holder = redis.call("HGET", KEYS[1], leaseId)
if holder == workerId then
  redis.call("ZADD", KEYS[2], expiry, leaseId)
  return 0
end
if holder then
  removeLease(prefix, KEYS[1], KEYS[2], leaseId, now)
end
addLease(prefix, KEYS[1], KEYS[2], leaseId, workerId, expiry)
reindexWorker(prefix, workerId, now)
return 1
