--[[
  The placement decision, shared by acquire (one request) and acquire-many (a
  page of a pool's queue in one call). See acquire-6.lua for the rules.

  newPool(...) makes the state one script call shares between its decisions:
  the keys, the clock, and what the call has already read (the pool-free
  size, workers' capacities and labels, the lease-seq counter), so a page
  reads each of them once. finishPool(pool) writes back what it kept locally.

  acquireOne(pool, req) takes
    req: { leaseId, runId ("" for none), runKey, exclusive (boolean), required (labels) }
  and returns the reply of one decision:
    {1, workerId, leasesBefore, eligible, tieBreak}
    {-1, healthy, matching} / {-2, healthy, matching} / {-3}

  What a decision costs (no labels, not exclusive, no tie on a run): one
  ZRANGE of two members of pool-free and one ZADD (or ZREM when the worker is
  full) there, the worker's capacity (once per worker per call). The lease's
  own records are written once per call, by finishPool: one HSET of the
  leases hash and one ZADD of lease-expiry for all of them (a call's leases
  share one expiry), one SADD worker-leases and one HSET (count, seq,
  exclusive) per worker chosen, one SADD leased-workers. Nothing a later
  decision of the same call reads is deferred: choices read pool-free, kept
  current at once, and "already held" reads the leases hash as it was before
  the call (one HMGET for the page) plus the leases taken in the call.
]]
--- @include "includes/lease-state"

-- The first look at pool-free takes two members: enough for the choice and
-- its tie whenever the head carries the labels (always, without labels).
local WALK_FIRST = 2
local WALK_BATCH = 32
-- Members a labeled walk may look at before scanning the smallest label set instead.
local LABELED_WALK_BUDGET = 64
-- Members per multi-member command, far below Lua's limit on unpacked arguments.
local CHUNK = 1000

-- leaseIds: every lease id the call may decide (acquire-many reads whether
-- they are held with one HMGET), or nil (each is checked when decided).
local function newPool(prefix, poolId, healthyKey, freeKey, leasesKey, expiryKey, seqKey, leaseTtl, runTtl, leaseIds)
  local now = nowMs()
  local heldBefore = nil
  if leaseIds then
    heldBefore = {}
    for first = 1, #leaseIds, CHUNK do
      local last = math.min(first + CHUNK - 1, #leaseIds)
      local holders = redis.call("HMGET", leasesKey, unpack(leaseIds, first, last))
      for j = 1, #holders do
        if holders[j] then
          heldBefore[leaseIds[first + j - 1]] = true
        end
      end
    end
  end
  return {
    prefix = prefix, poolId = poolId,
    healthyKey = healthyKey, freeKey = freeKey, leasesKey = leasesKey, expiryKey = expiryKey, seqKey = seqKey,
    now = now, expiry = string.format("%d", now + leaseTtl), runTtl = runTtl,
    -- Read once per call, then kept in step locally.
    freeCount = nil, seq = nil, seqDirty = false,
    capacity = {}, labels = {}, heldBefore = heldBefore,
    -- Written by finishPool: lease id -> worker (and the order they were
    -- taken), and per worker its new lease ids, count, seq and exclusive lease.
    taken = {}, takenIds = {}, chosen = {}, chosenIds = {},
  }
end

local function isHeld(pool, leaseId)
  if pool.taken[leaseId] then
    return true
  end
  if pool.heldBefore then
    return pool.heldBefore[leaseId] == true
  end
  return redis.call("HEXISTS", pool.leasesKey, leaseId) == 1
end

-- Calls `command key values...` in chunks of CHUNK pairs of values.
local function writePairs(command, key, values)
  for first = 1, #values, 2 * CHUNK do
    redis.call(command, key, unpack(values, first, math.min(first + 2 * CHUNK - 1, #values)))
  end
end

-- Writes the records of the leases taken in this call.
local function finishPool(pool)
  local n = #pool.takenIds
  if n > 0 then
    local holders, expiries = {}, {}
    for i = 1, n do
      local leaseId = pool.takenIds[i]
      holders[2 * i - 1], holders[2 * i] = leaseId, pool.taken[leaseId]
      expiries[2 * i - 1], expiries[2 * i] = pool.expiry, leaseId
    end
    writePairs("HSET", pool.leasesKey, holders)
    writePairs("ZADD", pool.expiryKey, expiries)
    for i = 1, #pool.chosenIds do
      local workerId = pool.chosenIds[i]
      local w = pool.chosen[workerId]
      local ids = w.leaseIds
      for first = 1, #ids, CHUNK do
        redis.call("SADD", workerLeasesKey(pool.prefix, workerId), unpack(ids, first, math.min(first + CHUNK - 1, #ids)))
      end
      if w.exclusive then
        redis.call("HSET", workerKey(pool.prefix, workerId), "leases", w.leases, "seq", string.format("%d", w.seq), "exclusive", w.exclusive)
      else
        redis.call("HSET", workerKey(pool.prefix, workerId), "leases", w.leases, "seq", string.format("%d", w.seq))
      end
    end
    for first = 1, #pool.chosenIds, CHUNK do
      redis.call("SADD", pool.prefix .. "leased-workers", unpack(pool.chosenIds, first, math.min(first + CHUNK - 1, #pool.chosenIds)))
    end
  end
  if pool.seqDirty then
    redis.call("SET", pool.seqKey, string.format("%d", pool.seq))
  end
end

-- Notes a lease for finishPool: the worker now holds `leases`, its last at `seq`.
local function recordLease(pool, leaseId, workerId, leases, seq, exclusive)
  pool.taken[leaseId] = workerId
  pool.takenIds[#pool.takenIds + 1] = leaseId
  local w = pool.chosen[workerId]
  if not w then
    w = {leaseIds = {}}
    pool.chosen[workerId] = w
    pool.chosenIds[#pool.chosenIds + 1] = workerId
  end
  w.leaseIds[#w.leaseIds + 1] = leaseId
  w.leases, w.seq = leases, seq
  if exclusive then
    w.exclusive = leaseId
  end
end

-- Purge workers whose heartbeat expired since they were indexed.
local function purgeStale(pool)
  local stale = redis.call("ZRANGE", pool.healthyKey, "-inf", pool.now, "BYSCORE")
  for first = 1, #stale, CHUNK do
    local last = math.min(first + CHUNK - 1, #stale)
    redis.call("ZREM", pool.healthyKey, unpack(stale, first, last))
    redis.call("ZREM", pool.freeKey, unpack(stale, first, last))
  end
end

local function freeCount(pool)
  if not pool.freeCount then
    pool.freeCount = redis.call("ZCARD", pool.freeKey)
  end
  return pool.freeCount
end

local function leaveFree(pool, workerId)
  redis.call("ZREM", pool.freeKey, workerId)
  if pool.freeCount then
    pool.freeCount = pool.freeCount - 1
  end
end

local function nextSeq(pool)
  if pool.seq then
    pool.seq = pool.seq + 1
    pool.seqDirty = true
  else
    pool.seq = redis.call("INCR", pool.seqKey)
  end
  return pool.seq
end

-- Placement attributes cannot change during a call: each is read once.
local function capacityOf(pool, workerId)
  local capacity = pool.capacity[workerId]
  if not capacity then
    capacity = tonumber(redis.call("HGET", workerKey(pool.prefix, workerId), "capacity")) or 0
    pool.capacity[workerId] = capacity
  end
  return capacity
end

local function carriesLabels(pool, workerId, required)
  if #required == 0 then
    return true
  end
  local labels = pool.labels[workerId]
  if labels == nil then
    labels = redis.call("HGET", workerKey(pool.prefix, workerId), "labels")
    pool.labels[workerId] = labels
  end
  return hasLabels(labels, required)
end

-- Two ways to the same choice (the minimum of (leases, seq, workerId) among
-- eligible workers, tied when two share the minimum lease count):
--   walk pool-free in order: the first member carrying the labels is the
--   choice, one more at the same lease count is a tie. Without labels it stops
--   after one or two members; with labels it may skip many, so it gets a budget;
--   scan the smallest required label set: cost bounded by that set's size.

-- Returns chosen, chosenLeases, tied, complete (false: budget ran out).
local function walkFree(pool, required, maxLeases, budget)
  local chosen, chosenLeases = nil, nil
  local seen, start, size = 0, 0, WALK_FIRST
  while true do
    local batch = redis.call("ZRANGE", pool.freeKey, start, start + size - 1, "WITHSCORES")
    for i = 1, #batch, 2 do
      local workerId, leases = batch[i], leasesOfScore(tonumber(batch[i + 1]))
      if leases > maxLeases or (chosen and leases > chosenLeases) then
        return chosen, chosenLeases, false, true
      end
      if seen >= budget then
        return nil, nil, false, false
      end
      seen = seen + 1
      if carriesLabels(pool, workerId, required) then
        if chosen then
          return chosen, chosenLeases, true, true
        end
        chosen, chosenLeases = workerId, leases
      end
    end
    if #batch < 2 * size then
      -- The end of pool-free.
      return chosen, chosenLeases, false, true
    end
    start = start + size
    size = WALK_BATCH
  end
end

local function smallestLabelSet(labelKeys)
  local smallest, size = labelKeys[1], redis.call("SCARD", labelKeys[1])
  for i = 2, #labelKeys do
    local n = redis.call("SCARD", labelKeys[i])
    if n < size then
      smallest, size = labelKeys[i], n
    end
  end
  return smallest
end

-- Returns chosen, chosenLeases, tied, eligible. Every member of the set
-- carries one required label; only the others are checked.
local function scanLabelSet(pool, setKey, required, maxLeases)
  local chosen, chosenLeases, chosenScore, atMinimum, eligible = nil, nil, nil, 0, 0
  local members = redis.call("SMEMBERS", setKey)
  local check = #required > 1
  for first = 1, #members, CHUNK do
    local scores = redis.call("ZMSCORE", pool.freeKey, unpack(members, first, math.min(first + CHUNK - 1, #members)))
    for j = 1, #scores do
      local score = scores[j] and tonumber(scores[j])
      if score then
        local workerId, leases = members[first + j - 1], leasesOfScore(score)
        if leases <= maxLeases and (not check or carriesLabels(pool, workerId, required)) then
          eligible = eligible + 1
          if not chosen or leases < chosenLeases then
            chosen, chosenLeases, chosenScore, atMinimum = workerId, leases, score, 1
          elseif leases == chosenLeases then
            atMinimum = atMinimum + 1
            if score < chosenScore or (score == chosenScore and workerId < chosen) then
              chosen, chosenScore = workerId, score
            end
          end
        end
      end
    end
  end
  return chosen, chosenLeases, atMinimum > 1, eligible
end

-- Why nothing was chosen.
local function refusal(pool, labelKeys)
  local healthy = redis.call("ZCARD", pool.healthyKey)
  if healthy == 0 then
    return {-1, 0, 0}
  end
  local matching = healthy
  if #labelKeys > 0 then
    matching = redis.call("ZINTERCARD", 1 + #labelKeys, pool.healthyKey, unpack(labelKeys))
    if matching == 0 then
      return {-1, healthy, 0}
    end
  end
  return {-2, healthy, matching}
end

local function acquireOne(pool, req)
  local prefix, freeKey = pool.prefix, pool.freeKey
  local leaseId, runId, exclusive, required = req.leaseId, req.runId, req.exclusive, req.required
  if isHeld(pool, leaseId) then
    return {-3}
  end
  -- An exclusive request takes only a worker with no lease.
  local maxLeases = exclusive and 0 or math.huge

  local labelKeys = {}
  for i = 1, #required do
    labelKeys[i] = labelKey(prefix, pool.poolId, required[i])
  end

  local chosen, chosenLeases, tied, eligible
  if #required == 0 then
    chosen, chosenLeases, tied = walkFree(pool, required, maxLeases, math.huge)
    if chosen then
      if exclusive then
        eligible = redis.call("ZCOUNT", freeKey, 0, "(" .. string.format("%d", SEQ_SPAN))
      else
        eligible = freeCount(pool)
      end
    end
  else
    local complete
    chosen, chosenLeases, tied, complete = walkFree(pool, required, maxLeases, LABELED_WALK_BUDGET)
    if not complete then
      chosen, chosenLeases, tied, eligible = scanLabelSet(pool, smallestLabelSet(labelKeys), required, maxLeases)
    elseif chosen then
      if exclusive then
        eligible = select(4, scanLabelSet(pool, smallestLabelSet(labelKeys), required, maxLeases))
      else
        eligible = redis.call("ZINTERCARD", 1 + #labelKeys, freeKey, unpack(labelKeys))
      end
    end
  end

  if not chosen then
    return refusal(pool, labelKeys)
  end

  local tieBreak = 1
  if tied then
    tieBreak = 3
    if runId ~= "" then
      -- The run's last worker wins the tie if it is among the tied and eligible
      -- (in pool-free, so in this pool with room, at the same lease count).
      local served = redis.call("GET", req.runKey)
      if served then
        local score = redis.call("ZSCORE", freeKey, served)
        if score and leasesOfScore(tonumber(score)) == chosenLeases and carriesLabels(pool, served, required) then
          chosen, tieBreak = served, 2
        end
      end
    end
  end

  -- The worker's count and place in the selection order: its score said how
  -- many leases it held (pool-free is kept in step with the hash).
  local leases = chosenLeases + 1
  local seq = nextSeq(pool)
  recordLease(pool, leaseId, chosen, leases, seq, exclusive)
  if exclusive or leases >= capacityOf(pool, chosen) then
    leaveFree(pool, chosen)
  else
    redis.call("ZADD", freeKey, freeScore(leases, seq), chosen)
  end
  if runId ~= "" then
    redis.call("SET", req.runKey, chosen, "PX", pool.runTtl)
  end
  return {1, chosen, chosenLeases, eligible, tieBreak}
end
