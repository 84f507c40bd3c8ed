--[[
  Reads the live status of workers with the store clock.

  Input:
    ARGV[1]   key prefix
    ARGV[2..] workerIds

  Output:
    {now, then per worker: session, replica, hb, hbTtl, leases}
    ("" for a missing field; hb = heartbeat expiry - hbTtl)
]]
--- @include "includes/lease-state"

local prefix = ARGV[1]
local reply = {nowMs()}
if #ARGV < 2 then
  return reply
end
-- In chunks, to stay far below Lua's limit on unpacked arguments.
local expiries = {}
for first = 2, #ARGV, 1000 do
  local chunk = redis.call("ZMSCORE", prefix .. "heartbeats", unpack(ARGV, first, math.min(first + 999, #ARGV)))
  for j = 1, #chunk do
    expiries[#expiries + 1] = chunk[j]
  end
end
for i = 2, #ARGV do
  local f = redis.call("HMGET", workerKey(prefix, ARGV[i]), "session", "replica", "hbTtl", "leases")
  local expiry, hbTtl = tonumber(expiries[i - 1]), tonumber(f[3])
  reply[#reply + 1] = f[1] or ""
  reply[#reply + 1] = f[2] or ""
  reply[#reply + 1] = (expiry and hbTtl) and string.format("%d", expiry - hbTtl) or ""
  reply[#reply + 1] = f[3] or ""
  reply[#reply + 1] = f[4] or ""
end
return reply
