--[[
  Publishes a message on the delivery channel of the replica whose session
  holds the worker's stream.

  Input:
    KEYS[1] worker hash
    ARGV[1] delivery channel prefix (the replica id is appended)
    ARGV[2] message

  Output:
    n   subscribers that received it (0: the replica is gone)
    -1  no session holds the worker
]]

local replica = redis.call("HGET", KEYS[1], "replica")
if not replica then
  return -1
end
return redis.call("PUBLISH", ARGV[1] .. replica, ARGV[2])
