--[[
  Chooses a worker of the pool and records a lease on it, atomically.

  Eligible: healthy (attached, fresh, accepting work), carrying every required
  label, with room (leases < capacity, no exclusive lease), and for an
  exclusive request holding no lease at all. Among those: fewest leases; ties
  go to the worker that last served the run, then to the least recently
  leased (pool-free order: never-leased first, then by workerId).

  Cost in the common case (no labels): the walk reads the first two members
  of pool-free, so the script does a fixed number of O(log n) calls whatever
  the pool size or lease count (the list is in includes/acquire). With
  labels: at most LABELED_WALK_BUDGET members, else a scan of the smallest
  required label set (and the counts intersect that set). Stale workers are purged from the
  pool's sets here, each once.

  Input:
    KEYS[1] pool-healthy zset
    KEYS[2] pool-free zset
    KEYS[3] leases hash
    KEYS[4] lease-expiry zset
    KEYS[5] lease-seq counter
    KEYS[6] run key: the run's last worker (unused when runId is empty)
    ARGV[1] key prefix
    ARGV[2] poolId
    ARGV[3] lease id ("<jobId>:<attempt>")
    ARGV[4] runId, "" for none
    ARGV[5] exclusive, "1" or "0"
    ARGV[6] lease TTL (ms)
    ARGV[7] run affinity TTL (ms)
    ARGV[8..] required labels

  Output:
    {1, workerId, leasesBefore, eligible, tieBreak}
        tieBreak: 1 fewest leases, 2 same run, 3 least recently leased
    {-1, healthy, matching}  no healthy worker (or none with the labels)
    {-2, healthy, matching}  all matching healthy workers are busy
    {-3}                     the lease id is already held
]]
--- @include "includes/acquire"

local required = {}
for i = 8, #ARGV do
  required[#required + 1] = ARGV[i]
end
local pool = newPool(ARGV[1], ARGV[2], KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], tonumber(ARGV[6]), tonumber(ARGV[7]))
purgeStale(pool)
local reply = acquireOne(pool, {
  leaseId = ARGV[3], runId = ARGV[4], runKey = KEYS[6], exclusive = ARGV[5] == "1", required = required,
})
finishPool(pool)
return reply
