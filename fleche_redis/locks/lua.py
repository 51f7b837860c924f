"""The server side of :class:`~fleche_redis.locks.redlock.Redlock`: its Lua scripts.

Each script runs on one master and touches only keys of the lock's hash
slot (key layout: ``docs/locks.md``).  ACQUIRE and RELEASE share the
helpers in ``_SHARED``: strictly increasing fencing tokens and the
hand-over to the oldest live waiter.
"""

from __future__ import annotations

from ..transport.scripts import LuaScript

__all__ = ["ACQUIRE", "RELEASE", "EXTEND", "SETTLE"]

# Shared by the scripts below.  ``fence`` is strictly increasing per counter;
# a counter that is new (or was lost with a restart) starts again from the
# server clock in microseconds, above every token drawn before (exact in a
# Lua double until the year 2255).
_SHARED = """
local function fence(counter)
  local n = redis.call('INCR', counter)
  if n < 1000000000000000 then
    local t = redis.call('TIME')
    n = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call('SET', counter, string.format('%.0f', n))
  end
  return string.format('%.0f', n)
end

-- The oldest waiter whose lease is alive, and the ttl it asked for;
-- waiters whose lease ran out are dropped on the way.
local function head(lock, queue)
  for _ = 1, 64 do
    local w = redis.call('LINDEX', queue, 0)
    if not w then return nil end
    local ttl = redis.call('GET', lock .. ':a:' .. w)
    if ttl then return w, ttl end
    redis.call('LPOP', queue)
  end
  return nil
end

-- The lock has just become free.  Fair mode makes the oldest waiter the
-- holder and sends it its fencing token; otherwise it is only woken.
local function pass_on(lock, queue, counter, fair)
  local w, ttl = head(lock, queue)
  if not w then return nil end
  local alive = lock .. ':a:' .. w
  local signal = lock .. ':s:' .. w
  if fair then
    redis.call('LPOP', queue)
    redis.call('DEL', alive)
    redis.call('SET', lock, w, 'PX', ttl)
    redis.call('RPUSH', signal, fence(counter))
    redis.call('PEXPIRE', signal, ttl)
  else
    redis.call('DEL', signal)  -- one wake-up is enough
    redis.call('RPUSH', signal, '0')
    redis.call('PEXPIRE', signal, math.max(redis.call('PTTL', alive), 1))
  end
  return w
end
"""


ACQUIRE = LuaScript(
    _SHARED
    + """
    -- KEYS[1] lock, KEYS[2] fencing counter (same slot; the queue, leases
    -- and signals are the lock's name plus ':q', ':a:<token>', ':s:<token>')
    -- ARGV[1] token, ARGV[2] ttl ms, ARGV[3] waiter lease ms,
    -- ARGV[4] mode: 'f' fair hand-over (one master) or 'w' wake only,
    --   then 'q' to queue the caller if the lock is taken, 'c' if the caller
    --   may be queued already (a re-check), 'p' if a BLPOP on the caller's
    --   signal follows in the same write (so success must push the fence)
    -- Returns {1, fencing token, 0} if the caller holds the lock now, else
    -- {0, 0, ms until the holder's lease ends}.
    local lock, token, mode = KEYS[1], ARGV[1], ARGV[4]
    local fair = string.sub(mode, 1, 1) == 'f'
    local queue = lock .. ':q'
    local alive, signal = lock .. ':a:' .. token, lock .. ':s:' .. token
    local holder = redis.call('GET', lock)
    if holder == token then
      -- Handed over while the caller was not listening (or a retried
      -- attempt): collect the token's fence, or draw a new one.
      local f = redis.call('LPOP', signal)
      if not f or f == '0' then f = fence(KEYS[2]) end
      redis.call('PEXPIRE', lock, ARGV[2])
      redis.call('DEL', alive, signal)
      redis.call('LREM', queue, 0, token)
      return {1, f, 0}
    end
    if not holder and fair then
      -- Free but with live waiters (the holder expired): the oldest goes first.
      local w = head(lock, queue)
      if w and w ~= token then
        pass_on(lock, queue, KEYS[2], true)
        holder = w
      end
    end
    if not holder then
      redis.call('SET', lock, token, 'NX', 'PX', ARGV[2])
      if string.find(mode, 'c', 2, true) then
        redis.call('DEL', alive, signal)
        redis.call('LREM', queue, 0, token)
      end
      local f = fence(KEYS[2])
      if string.find(mode, 'p', 2, true) then redis.call('RPUSH', signal, f) end
      return {1, f, 0}
    end
    if string.find(mode, 'q', 2, true) then
      if redis.call('EXISTS', alive) == 0 then redis.call('RPUSH', queue, token) end
      redis.call('SET', alive, ARGV[2], 'PX', ARGV[3])
      redis.call('PEXPIRE', queue, ARGV[3])
    end
    return {0, 0, redis.call('PTTL', lock)}
    """
)
"""Try to take the lock; queue the caller otherwise."""

RELEASE = LuaScript(
    _SHARED
    + """
    -- KEYS as ACQUIRE
    -- ARGV[1] token, ARGV[2] mode: 'f' fair hand-over or 'w' wake only,
    --   then 'c' if the caller may be queued (a waiter giving up)
    -- Returns 1 if the token held the lock (now released), else 0.
    local lock, token, mode = KEYS[1], ARGV[1], ARGV[2]
    local released = 0
    if redis.call('GET', lock) == token then
      redis.call('DEL', lock)
      released = 1
    end
    if string.find(mode, 'c', 2, true) then
      redis.call('LREM', lock .. ':q', 0, token)
      redis.call('DEL', lock .. ':a:' .. token, lock .. ':s:' .. token)
    end
    if released == 1 then
      pass_on(lock, lock .. ':q', KEYS[2], string.sub(mode, 1, 1) == 'f')
    end
    return released
    """
)
"""Release if the token holds the lock, and pass it on; idempotent."""

EXTEND = LuaScript(
    """
    -- KEYS[1] lock; ARGV[1] token, ARGV[2] ttl ms
    -- Returns 1 if the token holds the lock (its lease is now ttl), else 0.
    if redis.call('GET', KEYS[1]) == ARGV[1] then
      return redis.call('PEXPIRE', KEYS[1], ARGV[2])
    end
    return 0
    """
)
"""Renew the lease if the token still holds the lock."""

SETTLE = LuaScript(
    """
    -- KEYS[1] lock, KEYS[2] fencing counter; ARGV[1] token, ARGV[2] fencing token
    -- Several masters, after a quorum was won: lifts the counter to the
    -- quorum's token, so every later quorum draws a larger one, and takes
    -- the caller out of this master's queue (a stale head would be woken
    -- in its place).  Returns 1.
    local c = tonumber(redis.call('GET', KEYS[2]) or '0')
    if c < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], ARGV[2]) end
    redis.call('LREM', KEYS[1] .. ':q', 0, ARGV[1])
    redis.call('DEL', KEYS[1] .. ':a:' .. ARGV[1], KEYS[1] .. ':s:' .. ARGV[1])
    return 1
    """
)
"""Make a quorum's fencing token the floor everywhere and leave every queue."""
