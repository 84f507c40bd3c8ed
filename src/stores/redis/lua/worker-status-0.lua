--[[
  Reads the live status of workers with the store clock.

  Input:
    ARGV[1]   key prefix
    ARGV[2..] workerIds

  Output:
    {now, then per worker: session, replica, hb, hbTtl, leases}
    ("" for a missing field)
]]
--- @include "includes/lease-state"

local reply = {nowMs()}
for i = 2, #ARGV do
  local f = redis.call("HMGET", workerKey(ARGV[1], ARGV[i]), "session", "replica", "hb", "hbTtl", "leases")
  for j = 1, 5 do
    reply[#reply + 1] = f[j] or ""
  end
end
return reply
