--[[
  Places a page of one pool's queue in one call: the requests are decided in
  order, each exactly as acquire-6.lua decides one (includes/acquire), and
  each sees the leases taken by those before it. The walk stops after the
  first request without labels and without exclusivity that found every
  matching worker busy: the requests behind it could only take room that job
  is owed (priority, then FIFO). Requests with labels or exclusivity that
  must wait do not stop it. What the call reads once for all its decisions
  (pool-free's size, capacities, labels, lease-seq) is described in
  includes/acquire.

  Input:
    KEYS[1] pool-healthy zset
    KEYS[2] pool-free zset
    KEYS[3] leases hash
    KEYS[4] lease-expiry zset
    KEYS[5] lease-seq counter
    ARGV[1] key prefix
    ARGV[2] poolId
    ARGV[3] lease TTL (ms)
    ARGV[4] run affinity TTL (ms)
    ARGV[5..] per request: lease id, runId ("" for none), exclusive ("1"/"0"),
              number of labels n, then n labels

  Output: one reply per request decided, in order, as acquire-6.lua's; fewer
  replies than requests when the walk stopped.
]]
--- @include "includes/acquire"

local prefix = ARGV[1]
local leaseIds = {}
local i = 5
while i <= #ARGV do
  leaseIds[#leaseIds + 1] = ARGV[i]
  i = i + 4 + tonumber(ARGV[i + 3])
end
local pool = newPool(prefix, ARGV[2], KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], tonumber(ARGV[3]), tonumber(ARGV[4]), leaseIds)
purgeStale(pool)

local replies = {}
i = 5
while i <= #ARGV do
  local leaseId, runId, exclusive, n = ARGV[i], ARGV[i + 1], ARGV[i + 2] == "1", tonumber(ARGV[i + 3])
  local required = {}
  for k = 1, n do
    required[k] = ARGV[i + 3 + k]
  end
  i = i + 4 + n
  local reply = acquireOne(pool, {
    leaseId = leaseId, runId = runId, runKey = prefix .. "run:" .. runId, exclusive = exclusive, required = required,
  })
  replies[#replies + 1] = reply
  if reply[1] == -2 and n == 0 and not exclusive then
    break
  end
end
finishPool(pool)
return replies
