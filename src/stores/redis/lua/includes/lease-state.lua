--[[
  Shared helpers, spliced into every script that says
  `--- @include "includes/lease-state"` (see lease-scripts.ts).

  Key layout (every key starts with the store prefix, ARGV[1] of each script):
    worker:<workerId>           hash   pool, capacity, labels ("\n"-wrapped), accepts ("1"/"0"),
                                       session, replica, hbTtl (ms, of the last attach or TTL change),
                                       leases (count), exclusive (lease id of an exclusive lease),
                                       seq (lease-seq value of its last lease; absent = never leased)
    worker-leases:<workerId>    set    lease ids the worker holds
    sessions                    hash   workerId -> sessionId of attached workers (mirrors the worker
                                       hash's session, so one HMGET checks a whole heartbeat batch)
    heartbeats                  zset   workerId, score = heartbeat expiry (ms): last heartbeat + its TTL.
                                       Freshness lives here, not in the worker hash, so a batch of
                                       heartbeats is one ZADD (heartbeat-many-4.lua)
    leased-workers              set    every worker holding a lease (and, until the next heartbeat
                                       batch of that worker, some that no longer do)
    pool-healthy:<poolId>       zset   attached + accepting workers, score = heartbeat expiry (ms);
                                       stale members are purged by acquire
    pool-free:<poolId>          zset   healthy workers with room (and no exclusive lease), member =
                                       workerId, score = leases * SEQ_SPAN + seq, so ZRANGE order is
                                       (leases, last-leased seq, workerId): the selection order. A lease
                                       moves its worker with one ZADD (or one ZREM when it is full), and
                                       the set intersects with label sets directly
    pool-label:<poolId>:<label> set    workerIds of the pool carrying the label
    leases                      hash   "<jobId>:<attempt>" -> workerId
    lease-expiry                zset   lease id, score = expiry (ms)
    lease-seq                   string counter giving each lease its "last leased" sequence
    run:<runId>                 string the worker that last served the run (24 h TTL)
    layout                      string "3" once upgrade-3.lua has brought older data to this layout

  Before layout 3, pool-avail:<poolId> (member "<16-digit seq>:<workerId>", score = leases),
  pool-room:<poolId> (its workerIds) and the worker hash's sel field did what pool-free and seq do.

  Keys other than those in KEYS are derived here from the prefix, as BullMQ
  does: the store runs against one Redis (a cluster would need a hash-tagged prefix).
]]

local function nowMs()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- pool-free scores are leases * SEQ_SPAN + seq. Both parts stay exact in a
-- double (and in Redis's score) while the whole is below 2^53: lease counts
-- in the set are below the capacity (at most MAX_WORKER_CAPACITY, 1,000, of
-- lease-store.ts, checked by redis-lease-store.ts) and seq below 2^43 (8.8e12 leases).
local SEQ_SPAN = 8796093022208

local function freeScore(leases, seq)
  -- %d, not tostring: a Lua number becomes a string with 14 significant digits.
  return string.format("%d", leases * SEQ_SPAN + seq)
end

local function leasesOfScore(score)
  return math.floor(score / SEQ_SPAN)
end

local function workerKey(prefix, workerId)
  return prefix .. "worker:" .. workerId
end

local function workerLeasesKey(prefix, workerId)
  return prefix .. "worker-leases:" .. workerId
end

local function poolKeys(prefix, poolId)
  return prefix .. "pool-healthy:" .. poolId, prefix .. "pool-free:" .. poolId
end

local function labelKey(prefix, poolId, label)
  return prefix .. "pool-label:" .. poolId .. ":" .. label
end

-- Labels travel as one "\n"-joined string and are stored wrapped in "\n" so a
-- plain substring search finds a whole label.
local function splitLabels(joined)
  local labels = {}
  if joined == nil or joined == false then
    return labels
  end
  for label in string.gmatch(joined, "[^\n]+") do
    labels[#labels + 1] = label
  end
  return labels
end

local function hasLabels(storedLabels, required)
  for i = 1, #required do
    if not storedLabels or not string.find(storedLabels, "\n" .. required[i] .. "\n", 1, true) then
      return false
    end
  end
  return true
end

-- The worker hash fields reindexing reads, in this order (HMGET worker unpack(INDEX_FIELDS)).
local INDEX_FIELDS = {"pool", "capacity", "accepts", "session", "leases", "exclusive", "seq"}

-- Puts the worker into (or takes it out of) its pool's healthy and free sets
-- according to its hash fields f (INDEX_FIELDS order, as read or just
-- written) and the store clock. Every write to a worker ends here.
local function reindexFields(prefix, workerId, f, now)
  local poolId = f[1]
  if not poolId then
    return
  end
  local healthyKey, freeKey = poolKeys(prefix, poolId)
  local expiry = false
  if f[3] == "1" and f[4] then
    expiry = tonumber(redis.call("ZSCORE", prefix .. "heartbeats", workerId))
  end
  local healthy = expiry and expiry > now
  if healthy then
    redis.call("ZADD", healthyKey, expiry, workerId)
  else
    redis.call("ZREM", healthyKey, workerId)
  end
  local leases = tonumber(f[5]) or 0
  if healthy and leases < (tonumber(f[2]) or 0) and not f[6] then
    redis.call("ZADD", freeKey, freeScore(leases, tonumber(f[7]) or 0), workerId)
  else
    redis.call("ZREM", freeKey, workerId)
  end
end

local function reindexWorker(prefix, workerId, now)
  reindexFields(prefix, workerId, redis.call("HMGET", workerKey(prefix, workerId), unpack(INDEX_FIELDS)), now)
end

-- Takes the worker out of every structure of its current pool.
local function unindexWorker(prefix, workerId)
  local f = redis.call("HMGET", workerKey(prefix, workerId), "pool", "labels")
  local poolId = f[1]
  if not poolId then
    return
  end
  local healthyKey, freeKey = poolKeys(prefix, poolId)
  redis.call("ZREM", healthyKey, workerId)
  redis.call("ZREM", freeKey, workerId)
  local labels = splitLabels(f[2])
  for i = 1, #labels do
    redis.call("SREM", labelKey(prefix, poolId, labels[i]), workerId)
  end
end

-- Records pool, capacity, labels and accepts; moves the worker between pools
-- and label sets when they changed. The caller reindexes afterwards.
local function setPlacement(prefix, workerId, poolId, capacity, joinedLabels, accepts)
  local key = workerKey(prefix, workerId)
  unindexWorker(prefix, workerId)
  local labels = splitLabels(joinedLabels)
  local stored = "\n" .. table.concat(labels, "\n") .. "\n"
  redis.call("HSET", key, "pool", poolId, "capacity", capacity, "labels", stored, "accepts", accepts)
  redis.call("HSETNX", key, "leases", 0)
  for i = 1, #labels do
    redis.call("SADD", labelKey(prefix, poolId, labels[i]), workerId)
  end
end

local function addLease(prefix, leasesKey, expiryKey, leaseId, workerId, expiry)
  redis.call("HSET", leasesKey, leaseId, workerId)
  redis.call("ZADD", expiryKey, expiry, leaseId)
  redis.call("SADD", workerLeasesKey(prefix, workerId), leaseId)
  redis.call("SADD", prefix .. "leased-workers", workerId)
  redis.call("HINCRBY", workerKey(prefix, workerId), "leases", 1)
end

-- Removes a lease and frees its capacity. Returns the worker that held it, or false.
local function removeLease(prefix, leasesKey, expiryKey, leaseId, now)
  local workerId = redis.call("HGET", leasesKey, leaseId)
  if not workerId then
    return false
  end
  redis.call("HDEL", leasesKey, leaseId)
  redis.call("ZREM", expiryKey, leaseId)
  redis.call("SREM", workerLeasesKey(prefix, workerId), leaseId)
  local key = workerKey(prefix, workerId)
  -- One read for the count, the exclusive lease and the reindex. A removed
  -- worker (no hash) is left alone; a worker known only from a restored lease
  -- (restore-2.lua, not attached yet) has a count and no pool.
  local f = redis.call("HMGET", key, unpack(INDEX_FIELDS))
  if f[1] or f[5] then
    local leases = math.max((tonumber(f[5]) or 0) - 1, 0)
    redis.call("HSET", key, "leases", leases)
    f[5] = tostring(leases)
    if f[6] == leaseId then
      redis.call("HDEL", key, "exclusive")
      f[6] = false
    end
    reindexFields(prefix, workerId, f, now)
  end
  return workerId
end
