--[[
  Updates the worker's placement attributes (pool, capacity, labels, accepts
  work) without touching its session; selection sees the change at once.

  Input:
    KEYS[1] worker hash
    ARGV[1] key prefix
    ARGV[2] workerId
    ARGV[3] poolId
    ARGV[4] capacity
    ARGV[5] labels, "\n"-joined
    ARGV[6] accepts work, "1" or "0"

  Output:
    1
]]
--- @include "includes/lease-state"

local prefix, workerId = ARGV[1], ARGV[2]
setPlacement(prefix, workerId, ARGV[3], ARGV[4], ARGV[5], ARGV[6])
reindexWorker(prefix, workerId, nowMs())
return 1
