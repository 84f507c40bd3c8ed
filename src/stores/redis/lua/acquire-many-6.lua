--[[
  Places a page of one pool's queue in one call: the requests are decided in
  order, each exactly as acquire-7.lua decides one (includes/acquire), and
  each sees the leases taken by those before it. The walk stops after the
  first request without labels and without exclusivity that found every
  matching worker busy: the requests behind it could only take room that job
  is owed (priority, then FIFO). Requests with labels or exclusivity that
  must wait do not stop it.

  Input:
    KEYS[1] pool-healthy zset
    KEYS[2] pool-avail zset
    KEYS[3] pool-room set
    KEYS[4] leases hash
    KEYS[5] lease-expiry zset
    KEYS[6] lease-seq counter
    ARGV[1] key prefix
    ARGV[2] poolId
    ARGV[3] lease TTL (ms)
    ARGV[4] run affinity TTL (ms)
    ARGV[5..] per request: lease id, runId ("" for none), exclusive ("1"/"0"),
              number of labels n, then n labels

  Output: one reply per request decided, in order, as acquire-7.lua's; fewer
  replies than requests when the walk stopped.
]]
--- @include "includes/acquire"

local prefix = ARGV[1]
local pool = {
  prefix = prefix, poolId = ARGV[2],
  healthyKey = KEYS[1], availKey = KEYS[2], roomKey = KEYS[3],
  leasesKey = KEYS[4], expiryKey = KEYS[5], seqKey = KEYS[6],
  now = nowMs(), leaseTtl = tonumber(ARGV[3]), runTtl = tonumber(ARGV[4]),
}
purgeStale(pool)

local replies = {}
local i = 5
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
return replies
