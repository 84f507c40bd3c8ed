--[[
  Chooses a worker of the pool and records a lease on it, atomically.

  Eligible: healthy (attached, fresh, accepting work), carrying every required
  label, with room (leases < capacity, no exclusive lease), and for an
  exclusive request holding no lease at all. Among those: fewest leases; ties
  go to the worker that last served the run, then to the least recently
  leased (pool-avail order: never-leased first, then by workerId).

  Cost in the common case (no labels): the walk stops at the first or second
  member of pool-avail, so the script does a fixed number of O(log n) calls
  whatever the pool size or lease count. With labels: at most
  LABELED_WALK_BUDGET members, else a scan of the smallest required label set
  (and the counts intersect that set). Stale workers are purged from the
  pool's sets here, each once.

  Input:
    KEYS[1] pool-healthy zset
    KEYS[2] pool-avail zset
    KEYS[3] pool-room set
    KEYS[4] leases hash
    KEYS[5] lease-expiry zset
    KEYS[6] lease-seq counter
    KEYS[7] run key: the run's last worker (unused when runId is empty)
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
--- @include "includes/lease-state"

local WALK_BATCH = 32
-- Members a labeled walk may look at before scanning the smallest label set instead.
local LABELED_WALK_BUDGET = 64

local healthyKey, availKey, roomKey = KEYS[1], KEYS[2], KEYS[3]
local prefix, poolId, leaseId, runId = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local exclusive = ARGV[5] == "1"

if redis.call("HEXISTS", KEYS[4], leaseId) == 1 then
  return {-3}
end

local now = nowMs()

-- Purge workers whose heartbeat expired since they were indexed.
local stale = redis.call("ZRANGE", healthyKey, "-inf", now, "BYSCORE")
for i = 1, #stale do
  redis.call("ZREM", healthyKey, stale[i])
  redis.call("ZREM", availKey, redis.call("HGET", workerKey(prefix, stale[i]), "sel") or initialSel(stale[i]))
  redis.call("SREM", roomKey, stale[i])
end

local healthy = redis.call("ZCARD", healthyKey)
if healthy == 0 then
  return {-1, 0, 0}
end

local required, labelKeys = {}, {}
for i = 8, #ARGV do
  required[#required + 1] = ARGV[i]
  labelKeys[#labelKeys + 1] = labelKey(prefix, poolId, ARGV[i])
end

local matching = healthy
if #required > 0 then
  matching = redis.call("ZINTERCARD", 1 + #labelKeys, healthyKey, unpack(labelKeys))
  if matching == 0 then
    return {-1, healthy, 0}
  end
end

local function workerIdOf(sel)
  return string.sub(sel, 18)
end

local function carriesLabels(workerId)
  if #required == 0 then
    return true
  end
  return hasLabels(redis.call("HGET", workerKey(prefix, workerId), "labels"), required)
end

-- Two ways to the same choice (the minimum of (leases, sel) among eligible
-- workers, tied when two share the minimum lease count):
--   walk pool-avail in order: the first member carrying the labels is the
--   choice, one more at the same lease count is a tie. Without labels it stops
--   after one or two members; with labels it may skip many, so it gets a budget;
--   scan the smallest required label set: cost bounded by that set's size.
local maxLeases = exclusive and 0 or math.huge

-- Returns chosenSel, chosenLeases, tied, complete (false: budget ran out).
local function walkAvail(budget)
  local chosenSel, chosenLeases = nil, nil
  local seen, start = 0, 0
  while true do
    local batch = redis.call("ZRANGE", availKey, start, start + WALK_BATCH - 1, "WITHSCORES")
    if #batch == 0 then
      return chosenSel, chosenLeases, false, true
    end
    for i = 1, #batch, 2 do
      local sel, leases = batch[i], tonumber(batch[i + 1])
      if leases > maxLeases or (chosenSel and leases > chosenLeases) then
        return chosenSel, chosenLeases, false, true
      end
      if seen >= budget then
        return nil, nil, false, false
      end
      seen = seen + 1
      if carriesLabels(workerIdOf(sel)) then
        if chosenSel then
          return chosenSel, chosenLeases, true, true
        end
        chosenSel, chosenLeases = sel, leases
      end
    end
    start = start + WALK_BATCH
  end
end

local function smallestLabelSet()
  local smallest, size = labelKeys[1], redis.call("SCARD", labelKeys[1])
  for i = 2, #labelKeys do
    local n = redis.call("SCARD", labelKeys[i])
    if n < size then
      smallest, size = labelKeys[i], n
    end
  end
  return smallest
end

-- Returns chosenSel, chosenLeases, tied, eligible.
local function scanLabelSet(setKey)
  local chosenSel, chosenLeases, atMinimum, eligible = nil, nil, 0, 0
  local members = redis.call("SMEMBERS", setKey)
  for i = 1, #members do
    local f = redis.call("HMGET", workerKey(prefix, members[i]), "labels", "sel")
    local score = f[2] and hasLabels(f[1], required) and redis.call("ZSCORE", availKey, f[2])
    score = score and tonumber(score)
    if score and score <= maxLeases then
      eligible = eligible + 1
      if not chosenSel or score < chosenLeases then
        chosenSel, chosenLeases, atMinimum = f[2], score, 1
      elseif score == chosenLeases then
        atMinimum = atMinimum + 1
        if f[2] < chosenSel then
          chosenSel = f[2]
        end
      end
    end
  end
  return chosenSel, chosenLeases, atMinimum > 1, eligible
end

local chosenSel, chosenLeases, tied, eligible
if #required == 0 then
  chosenSel, chosenLeases, tied = walkAvail(math.huge)
  if exclusive then
    eligible = redis.call("ZCOUNT", availKey, 0, 0)
  else
    eligible = redis.call("ZCARD", availKey)
  end
else
  local complete
  chosenSel, chosenLeases, tied, complete = walkAvail(LABELED_WALK_BUDGET)
  if not complete then
    chosenSel, chosenLeases, tied, eligible = scanLabelSet(smallestLabelSet())
  elseif not chosenSel then
    eligible = 0
  elseif exclusive then
    eligible = select(4, scanLabelSet(smallestLabelSet()))
  else
    eligible = redis.call("SINTERCARD", 1 + #labelKeys, roomKey, unpack(labelKeys))
  end
end

if not chosenSel then
  return {-2, healthy, matching}
end

local tieBreak = 1
if tied then
  tieBreak = 3
  if runId ~= "" then
    -- The run's last worker wins the tie if it is among the tied and eligible.
    local served = redis.call("GET", KEYS[7])
    if served then
      local f = redis.call("HMGET", workerKey(prefix, served), "pool", "sel")
      if f[1] == poolId and f[2] then
        local score = redis.call("ZSCORE", availKey, f[2])
        if score and tonumber(score) == chosenLeases and carriesLabels(served) then
          chosenSel, tieBreak = f[2], 2
        end
      end
    end
  end
end

local workerId = workerIdOf(chosenSel)
local key = workerKey(prefix, workerId)
local newSel = string.format("%016d", redis.call("INCR", KEYS[6])) .. ":" .. workerId
redis.call("ZREM", availKey, chosenSel)
redis.call("HSET", key, "sel", newSel)
if exclusive then
  redis.call("HSET", key, "exclusive", leaseId)
end
addLease(prefix, KEYS[4], KEYS[5], leaseId, workerId, now + tonumber(ARGV[6]))
reindexWorker(prefix, workerId, now)
if runId ~= "" then
  redis.call("SET", KEYS[7], workerId, "PX", ARGV[7])
end
return {1, workerId, chosenLeases, eligible, tieBreak}
