--[[
  Records a batch of heartbeats that one replica received from its sessions
  (redis-lease-store.ts coalesces them). For each heartbeat whose session
  still holds the worker: its freshness becomes (received + heartbeat TTL) and
  every lease it holds that had not expired when the heartbeat was received
  is extended to (received + lease TTL), where received = now - age, judged
  by the store clock. Leases already past expiry then are left for the reaper.

  The steady state of N idle, fresh workers in P pools costs a fixed number of
  commands whatever N: HMGET sessions, ZADD heartbeats, SMISMEMBER
  leased-workers, then per pool ZMSCORE + ZADD XX on pool-healthy. Per-worker
  commands are spent only on workers that hold leases (SMEMBERS), that were
  not healthy (reindexWorker), whose pool this replica does not know, or
  whose heartbeat TTL changed.

  Input:
    KEYS[1] sessions hash
    KEYS[2] heartbeats zset
    KEYS[3] leased-workers set
    KEYS[4] lease-expiry zset
    ARGV[1] key prefix
    ARGV[2] the heartbeats, JSON: [[workerId, sessionId, age (ms), heartbeat TTL (ms),
            lease TTL (ms), poolId as the replica knows it ("" if it does not),
            1 if the heartbeat TTL differs from the one recorded for the worker else 0], ...]
            (one argument: cheaper to send and parse than seven per heartbeat)

  Output:
    {i, ...} the 1-based positions of the heartbeats whose session no longer
    holds the worker (usually none); every other one was recorded
]]
--- @include "includes/lease-state"

-- Members per multi-member command, far below Lua's limit on unpacked arguments.
local CHUNK = 1000

local prefix = ARGV[1]
local now = nowMs()
local beats = cjson.decode(ARGV[2])
local count = #beats

-- Calls `command key ...` with `values` in chunks; returns the replies concatenated.
local function chunked(command, key, values, option, step)
  step = step or 1
  local replies = {}
  local size = CHUNK * step
  for first = 1, #values, size do
    local args = {unpack(values, first, math.min(first + size - 1, #values))}
    local reply
    if option then
      reply = redis.call(command, key, option, unpack(args))
    else
      reply = redis.call(command, key, unpack(args))
    end
    if type(reply) == "table" then
      for j = 1, #reply do
        replies[#replies + 1] = reply[j]
      end
    end
  end
  return replies
end

local ids = {}
for i = 1, count do
  ids[i] = beats[i][1]
end
local holders = chunked("HMGET", KEYS[1], ids)

local lost = {}
local owned = {}
for i = 1, count do
  local beat = beats[i]
  if holders[i] == beat[2] then
    owned[#owned + 1] = {
      workerId = beat[1],
      received = now - beat[3],
      hbTtl = beat[4],
      leaseTtl = beat[5],
      poolId = beat[6],
      ttlChanged = beat[7] == 1,
    }
  else
    lost[#lost + 1] = i
  end
end
if #owned == 0 then
  return lost
end

-- Freshness.
local scored, ownedIds = {}, {}
for k = 1, #owned do
  local beat = owned[k]
  beat.expiry = beat.received + beat.hbTtl
  scored[#scored + 1] = beat.expiry
  scored[#scored + 1] = beat.workerId
  ownedIds[k] = beat.workerId
  if beat.ttlChanged then
    redis.call("HSET", workerKey(prefix, beat.workerId), "hbTtl", beat.hbTtl)
  end
end
chunked("ZADD", KEYS[2], scored, nil, 2)

-- Leases: only workers in leased-workers can hold any.
local leased = chunked("SMISMEMBER", KEYS[3], ownedIds)
local leaseIds, leaseExpiries, leaseReceived = {}, {}, {}
for k = 1, #owned do
  if leased[k] == 1 then
    local beat = owned[k]
    local held = redis.call("SMEMBERS", workerLeasesKey(prefix, beat.workerId))
    if #held == 0 then
      redis.call("SREM", KEYS[3], beat.workerId)
    end
    for j = 1, #held do
      leaseIds[#leaseIds + 1] = held[j]
      leaseExpiries[#leaseIds] = beat.received + beat.leaseTtl
      leaseReceived[#leaseIds] = beat.received
    end
  end
end
if #leaseIds > 0 then
  local expiries = chunked("ZMSCORE", KEYS[4], leaseIds)
  local extend = {}
  for j = 1, #leaseIds do
    -- Unexpired when the heartbeat arrived (a reaped lease is gone from the zset).
    if expiries[j] and tonumber(expiries[j]) > leaseReceived[j] then
      extend[#extend + 1] = leaseExpiries[j]
      extend[#extend + 1] = leaseIds[j]
    end
  end
  chunked("ZADD", KEYS[4], extend, "XX", 2)
end

-- Selection. A worker still healthy in the pool the replica knows only has
-- its score moved (a heartbeat changes no lease count); any other is
-- reindexed from its hash (it went stale, moved pools, stopped or started
-- accepting work).
local byPool, reindex = {}, {}
for k = 1, #owned do
  local beat = owned[k]
  if beat.poolId == "" then
    reindex[#reindex + 1] = beat.workerId
  else
    local members = byPool[beat.poolId]
    if not members then
      members = {}
      byPool[beat.poolId] = members
    end
    members[#members + 1] = beat
  end
end
for poolId, members in pairs(byPool) do
  local healthyKey = poolKeys(prefix, poolId)
  local memberIds = {}
  for k = 1, #members do
    memberIds[k] = members[k].workerId
  end
  local scores = chunked("ZMSCORE", healthyKey, memberIds)
  local move = {}
  for k = 1, #members do
    if scores[k] and tonumber(scores[k]) > now then
      move[#move + 1] = members[k].expiry
      move[#move + 1] = members[k].workerId
    else
      reindex[#reindex + 1] = members[k].workerId
    end
  end
  chunked("ZADD", healthyKey, move, "XX", 2)
end
for k = 1, #reindex do
  reindexWorker(prefix, reindex[k], now)
end
return lost
