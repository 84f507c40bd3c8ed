--[[
  Brings data written by an older version of the store up to this layout;
  run by every replica at start. Once per store (the layout key records it),
  so a current store costs one GET.

  1. Stores before the heartbeat batches (heartbeat-many-4.lua) kept no
     leased-workers set, and a heartbeat extends only the leases of workers in
     it: without this, leases taken before an upgrade would expire although
     their workers heartbeat. One pass over the leases hash. (Sessions and
     freshness need nothing: a session attached by an older replica is
     refused at its first heartbeat, and its agent reconnects and attaches
     again.)
  2. Layout 3 (see includes/lease-state): pool-free replaced pool-avail and
     pool-room, the worker hash's seq replaced sel. Every worker hash (a
     SCAN of the worker keys: stores of every older layout have them, not
     all have the heartbeats zset) gets its seq from sel, the old sets of
     its pool are deleted, and it is reindexed into pool-free. Selection
     order is unchanged: sel was "<16-digit seq>:<workerId>", pool-free
     orders by (leases, seq, workerId). Replicas of the older version must
     not place jobs on the store after this (they read and write the old
     sets): upgrade every replica together.

  Input:
    KEYS[1] leases hash
    KEYS[2] leased-workers set
    KEYS[3] layout string
    ARGV[1] key prefix

  Output:
    1 when the store was converted, 0 when it was current
]]
--- @include "includes/lease-state"

local LAYOUT = "3"
local prefix = ARGV[1]

if redis.call("GET", KEYS[3]) == LAYOUT then
  return 0
end

local holders = redis.call("HVALS", KEYS[1])
for first = 1, #holders, 1000 do
  redis.call("SADD", KEYS[2], unpack(holders, first, math.min(first + 999, #holders)))
end

local workers = {}
local keyStart = #workerKey(prefix, "") + 1
local pattern = string.gsub(workerKey(prefix, ""), "([%*%?%[%]\\])", "\\%1") .. "*"
local cursor = "0"
repeat
  local page = redis.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000, "TYPE", "hash")
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    workers[#workers + 1] = string.sub(key, keyStart)
  end
until cursor == "0"

local now = nowMs()
local oldPools = {}
for i = 1, #workers do
  local key = workerKey(prefix, workers[i])
  local f = redis.call("HMGET", key, "pool", "sel")
  if f[1] then
    oldPools[f[1]] = true
  end
  if f[2] then
    local seq = tonumber(string.sub(f[2], 1, 16))
    if seq and seq > 0 then
      redis.call("HSET", key, "seq", string.format("%d", seq))
    end
    redis.call("HDEL", key, "sel")
  end
end
for poolId in pairs(oldPools) do
  redis.call("DEL", prefix .. "pool-avail:" .. poolId, prefix .. "pool-room:" .. poolId)
end
for i = 1, #workers do
  reindexWorker(prefix, workers[i], now)
end
redis.call("SET", KEYS[3], LAYOUT)
return 1
