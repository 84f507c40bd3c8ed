--[[
  Shared helpers, spliced into every script that says
  `--- @include "includes/lease-state"` (see lease-scripts.ts).

  Key layout (every key starts with the store prefix, ARGV[1] of each script):
    worker:<workerId>           hash   pool, capacity, labels ("\n"-wrapped), accepts ("1"/"0"),
                                       session, replica, hbTtl (ms, of the last attach or TTL change),
                                       leases (count), exclusive (lease id of an exclusive lease),
                                       sel (selection member)
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
    pool-avail:<poolId>         zset   healthy workers with room (and no exclusive lease),
                                       score = active leases, member = sel = "<16-digit seq>:<workerId>",
                                       so ZRANGE order is (leases, last-leased seq, workerId)
    pool-room:<poolId>          set    workerIds of pool-avail, for intersection with label sets
    pool-label:<poolId>:<label> set    workerIds of the pool carrying the label
    leases                      hash   "<jobId>:<attempt>" -> workerId
    lease-expiry                zset   lease id, score = expiry (ms)
    lease-seq                   string counter giving each lease its "last leased" sequence
    run:<runId>                 string the worker that last served the run (24 h TTL)

  Keys other than those in KEYS are derived here from the prefix, as BullMQ
  does: the store runs against one Redis (a cluster would need a hash-tagged prefix).
]]

local function nowMs()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function workerKey(prefix, workerId)
  return prefix .. "worker:" .. workerId
end

local function workerLeasesKey(prefix, workerId)
  return prefix .. "worker-leases:" .. workerId
end

local function poolKeys(prefix, poolId)
  return prefix .. "pool-healthy:" .. poolId, prefix .. "pool-avail:" .. poolId, prefix .. "pool-room:" .. poolId
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

local function initialSel(workerId)
  return string.format("%016d", 0) .. ":" .. workerId
end

-- Puts the worker into (or takes it out of) its pool's healthy, avail and room
-- sets according to its hash and the store clock. Every write to a worker ends here.
-- knownHealthy: the caller knows the worker is in pool-healthy and fresh
-- (acquire just chose it from pool-avail), so its freshness is not read again.
local function reindexWorker(prefix, workerId, now, knownHealthy)
  local f = redis.call("HMGET", workerKey(prefix, workerId),
    "pool", "capacity", "accepts", "session", "leases", "exclusive", "sel")
  local poolId = f[1]
  if not poolId then
    return
  end
  local healthyKey, availKey, roomKey = poolKeys(prefix, poolId)
  local healthy = knownHealthy
  if not healthy then
    local expiry = false
    if f[3] == "1" and f[4] then
      expiry = tonumber(redis.call("ZSCORE", prefix .. "heartbeats", workerId))
    end
    healthy = expiry and expiry > now
    if healthy then
      redis.call("ZADD", healthyKey, expiry, workerId)
    else
      redis.call("ZREM", healthyKey, workerId)
    end
  end
  local leases = tonumber(f[5]) or 0
  local sel = f[7] or initialSel(workerId)
  if healthy and leases < (tonumber(f[2]) or 0) and not f[6] then
    redis.call("ZADD", availKey, leases, sel)
    redis.call("SADD", roomKey, workerId)
  else
    redis.call("ZREM", availKey, sel)
    redis.call("SREM", roomKey, workerId)
  end
end

-- Takes the worker out of every structure of its current pool.
local function unindexWorker(prefix, workerId)
  local f = redis.call("HMGET", workerKey(prefix, workerId), "pool", "labels", "sel")
  local poolId = f[1]
  if not poolId then
    return
  end
  local healthyKey, availKey, roomKey = poolKeys(prefix, poolId)
  redis.call("ZREM", healthyKey, workerId)
  redis.call("ZREM", availKey, f[3] or initialSel(workerId))
  redis.call("SREM", roomKey, workerId)
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
  redis.call("HSETNX", key, "sel", initialSel(workerId))
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
  if redis.call("EXISTS", key) == 1 then
    if redis.call("HINCRBY", key, "leases", -1) < 0 then
      redis.call("HSET", key, "leases", 0)
    end
    if redis.call("HGET", key, "exclusive") == leaseId then
      redis.call("HDEL", key, "exclusive")
    end
    reindexWorker(prefix, workerId, now)
  end
  return workerId
end
