--[[
  The placement decision, shared by acquire (one request) and acquire-many (a
  page of a pool's queue in one call). See acquire-7.lua for the rules.

  acquireOne(pool, req) takes
    pool: { prefix, poolId, healthyKey, availKey, roomKey, leasesKey, expiryKey, seqKey, now,
            leaseTtl (ms), runTtl (ms) }
    req:  { leaseId, runId ("" for none), runKey, exclusive (boolean), required (labels) }
  and returns the reply of one decision:
    {1, workerId, leasesBefore, eligible, tieBreak}
    {-1, healthy, matching} / {-2, healthy, matching} / {-3}
]]
--- @include "includes/lease-state"

local WALK_BATCH = 32
-- Members a labeled walk may look at before scanning the smallest label set instead.
local LABELED_WALK_BUDGET = 64

-- Purge workers whose heartbeat expired since they were indexed.
local function purgeStale(pool)
  local stale = redis.call("ZRANGE", pool.healthyKey, "-inf", pool.now, "BYSCORE")
  for i = 1, #stale do
    redis.call("ZREM", pool.healthyKey, stale[i])
    redis.call("ZREM", pool.availKey, redis.call("HGET", workerKey(pool.prefix, stale[i]), "sel") or initialSel(stale[i]))
    redis.call("SREM", pool.roomKey, stale[i])
  end
end

local function workerIdOf(sel)
  return string.sub(sel, 18)
end

local function acquireOne(pool, req)
  local prefix, poolId = pool.prefix, pool.poolId
  local healthyKey, availKey, roomKey = pool.healthyKey, pool.availKey, pool.roomKey
  local leaseId, runId, exclusive, required = req.leaseId, req.runId, req.exclusive, req.required

  if redis.call("HEXISTS", pool.leasesKey, leaseId) == 1 then
    return {-3}
  end

  local healthy = redis.call("ZCARD", healthyKey)
  if healthy == 0 then
    return {-1, 0, 0}
  end

  local labelKeys = {}
  for i = 1, #required do
    labelKeys[i] = labelKey(prefix, poolId, required[i])
  end

  local matching = healthy
  if #required > 0 then
    matching = redis.call("ZINTERCARD", 1 + #labelKeys, healthyKey, unpack(labelKeys))
    if matching == 0 then
      return {-1, healthy, 0}
    end
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
      local served = redis.call("GET", req.runKey)
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
  local newSel = string.format("%016d", redis.call("INCR", pool.seqKey)) .. ":" .. workerId
  redis.call("ZREM", availKey, chosenSel)
  redis.call("HSET", key, "sel", newSel)
  if exclusive then
    redis.call("HSET", key, "exclusive", leaseId)
  end
  addLease(prefix, pool.leasesKey, pool.expiryKey, leaseId, workerId, pool.now + pool.leaseTtl)
  -- Chosen from pool-avail after purgeStale: healthy and fresh, so only avail and room move.
  reindexWorker(prefix, workerId, pool.now, true)
  if runId ~= "" then
    redis.call("SET", req.runKey, workerId, "PX", pool.runTtl)
  end
  return {1, workerId, chosenLeases, eligible, tieBreak}
end
