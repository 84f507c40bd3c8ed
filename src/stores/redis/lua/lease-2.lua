--[[
  Reads a lease unless it is past its expiry (store clock).

  Input:
    KEYS[1] leases hash
    KEYS[2] lease-expiry zset
    ARGV[1] lease id ("<jobId>:<attempt>")

  Output:
    workerId  the lease is held
    nil       released, reaped or expired
]]
--- @include "includes/lease-state"

local workerId = redis.call("HGET", KEYS[1], ARGV[1])
if not workerId then
  return nil
end
local expiry = redis.call("ZSCORE", KEYS[2], ARGV[1])
if not expiry or tonumber(expiry) <= nowMs() then
  return nil
end
return workerId
