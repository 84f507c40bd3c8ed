--[[
  Releases a lease and frees its worker's capacity.

  Input:
    KEYS[1] leases hash
    KEYS[2] lease-expiry zset
    ARGV[1] key prefix
    ARGV[2] lease id ("<jobId>:<attempt>")

  Output:
    1  released
    0  there was no such lease (lost, reaped or released)
]]
--- @include "includes/lease-state"

if removeLease(ARGV[1], KEYS[1], KEYS[2], ARGV[2], nowMs()) then
  return 1
end
return 0
