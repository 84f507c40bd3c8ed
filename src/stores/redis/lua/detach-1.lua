--[[
  Detaches the worker's stream, only if the given session still holds it, so a
  stale stream's cleanup cannot evict a fresh reconnect. Leases stay, and so
  does the last heartbeat (workerStatus still reports it).

  Input:
    KEYS[1] worker hash
    ARGV[1] key prefix
    ARGV[2] workerId
    ARGV[3] sessionId

  Output:
    1  detached
    0  another session (or none) holds the worker
]]
--- @include "includes/lease-state"

local prefix, workerId = ARGV[1], ARGV[2]
if redis.call("HGET", KEYS[1], "session") ~= ARGV[3] then
  return 0
end
redis.call("HDEL", KEYS[1], "session", "replica")
redis.call("HDEL", prefix .. "sessions", workerId)
reindexWorker(prefix, workerId, nowMs())
return 1
