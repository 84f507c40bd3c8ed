--[[
  Brings data written by an older version of the store up to this layout;
  run by every replica at start, idempotent and cheap (one pass over the
  leases hash). Stores before the heartbeat batches (heartbeat-many-4.lua)
  kept no leased-workers set, and a heartbeat extends only the leases of
  workers in it: without this, leases taken before an upgrade would expire
  although their workers heartbeat. (Sessions and freshness need nothing:
  a session attached by an older replica is refused at its first heartbeat,
  and its agent reconnects and attaches again.)

  Input:
    KEYS[1] leases hash
    KEYS[2] leased-workers set

  Output:
    the number of workers holding leases
]]

local holders = redis.call("HVALS", KEYS[1])
for first = 1, #holders, 1000 do
  redis.call("SADD", KEYS[2], unpack(holders, first, math.min(first + 999, #holders)))
end
return redis.call("SCARD", KEYS[2])
