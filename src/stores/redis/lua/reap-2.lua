--[[
  Removes up to `limit` leases whose expiry has passed and frees their
  capacity. The caller calls again while a full batch comes back, so one call
  never holds Redis for long.

  Input:
    KEYS[1] leases hash
    KEYS[2] lease-expiry zset
    ARGV[1] key prefix
    ARGV[2] limit

  Output:
    {leaseId1, workerId1, leaseId2, workerId2, ...}
]]
--- @include "includes/lease-state"

local now = nowMs()
local expired = redis.call("ZRANGE", KEYS[2], "-inf", now, "BYSCORE", "LIMIT", 0, tonumber(ARGV[2]))
local reaped = {}
for i = 1, #expired do
  local workerId = removeLease(ARGV[1], KEYS[1], KEYS[2], expired[i], now)
  if workerId then
    reaped[#reaped + 1] = expired[i]
    reaped[#reaped + 1] = workerId
  else
    redis.call("ZREM", KEYS[2], expired[i])
  end
end
return reaped
