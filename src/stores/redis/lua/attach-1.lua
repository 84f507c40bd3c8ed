--[[
  Records that a session on a replica holds the worker's stream, replacing any
  older session, refreshes its heartbeat and records its placement attributes.

  Input:
    KEYS[1] worker hash
    ARGV[1] key prefix
    ARGV[2] workerId
    ARGV[3] poolId
    ARGV[4] capacity
    ARGV[5] labels, "\n"-joined
    ARGV[6] accepts work, "1" or "0"
    ARGV[7] sessionId
    ARGV[8] replicaId
    ARGV[9] heartbeat TTL (ms)

  Output:
    1
]]
--- @include "includes/lease-state"

local prefix, workerId = ARGV[1], ARGV[2]
local now = nowMs()
setPlacement(prefix, workerId, ARGV[3], ARGV[4], ARGV[5], ARGV[6])
redis.call("HSET", KEYS[1], "session", ARGV[7], "replica", ARGV[8], "hbTtl", ARGV[9])
redis.call("HSET", prefix .. "sessions", workerId, ARGV[7])
redis.call("ZADD", prefix .. "heartbeats", now + tonumber(ARGV[9]), workerId)
reindexWorker(prefix, workerId, now)
return 1
