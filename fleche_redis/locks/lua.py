"""The server side of :class:`~fleche_redis.locks.redlock.Redlock`: its Lua scripts.

Each script runs on one master and touches only keys of the lock's hash
slot (key layout: ``docs/locks.md``).  ACQUIRE and RELEASE share the
helpers in ``_SHARED``: strictly increasing fencing tokens and the
hand-over to the oldest live waiter.

Reads first: only the lock and its fencing counter are declared keys; the
queue, leases and signals are named from them.  While a slot migrates, a
script that touches one of those keys not (or no longer) on this node stops
there with "Script attempted to access a non local key", and what it wrote
before stays written.  So each script touches every key it may write
before its first write: stopped, it wrote nothing, and is sent again
(:meth:`~fleche_redis.locks.holder.LockHolder._run`).
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

-- Reads only: the oldest waiter other than `skip` whose lease is alive,
-- the ttl it asked for, and the waiters before it whose lease ran out.
-- It touches the waiter's signal key too (see "Reads first" above).
local function head(lock, queue, skip)
  local dead = {}
  for _, w in ipairs(redis.call('LRANGE', queue, 0, 63)) do
    if w ~= skip then
      local ttl = redis.call('GET', lock .. ':a:' .. w)
      if ttl then
        redis.call('EXISTS', lock .. ':s:' .. w)
        return w, ttl, dead
      end
      dead[#dead + 1] = w
    end
  end
  return nil, nil, dead
end

-- Writes, once the lock has become free: drop the dead waiters head()
-- found, then fair mode makes waiter w the holder and sends it its fencing
-- token; otherwise w is only woken.
local function pass_on(lock, queue, counter, fair, w, ttl, dead)
  for _, d in ipairs(dead) do redis.call('LREM', queue, 1, d) end
  if not w then return nil end
  local alive = lock .. ':a:' .. w
  local signal = lock .. ':s:' .. w
  if fair then
    redis.call('LREM', queue, 1, w)
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
    -- Reads: every key this script may write (see "Reads first").
    local holder = redis.call('GET', lock)
    redis.call('EXISTS', queue, alive, signal)
    local w, ttl, dead
    if not holder and fair then w, ttl, dead = head(lock, queue, nil) end
    -- Writes.
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
    if w and w ~= token then
      -- Free but with live waiters (the holder expired): the oldest goes first.
      pass_on(lock, queue, KEYS[2], true, w, ttl, dead)
      holder = w
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
    local queue = lock .. ':q'
    local leaving = string.find(mode, 'c', 2, true)
    -- Reads: every key this script may write (see "Reads first").
    local held = redis.call('GET', lock) == token
    if leaving then redis.call('EXISTS', queue, lock .. ':a:' .. token, lock .. ':s:' .. token) end
    local w, ttl, dead
    if held then w, ttl, dead = head(lock, queue, token) end
    -- Writes.
    if leaving then
      redis.call('LREM', queue, 0, token)
      redis.call('DEL', lock .. ':a:' .. token, lock .. ':s:' .. token)
    end
    if not held then return 0 end
    redis.call('DEL', lock)
    pass_on(lock, queue, KEYS[2], string.sub(mode, 1, 1) == 'f', w, ttl, dead)
    return 1
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
    redis.call('EXISTS', KEYS[1] .. ':q', KEYS[1] .. ':a:' .. ARGV[1], KEYS[1] .. ':s:' .. ARGV[1])
    local c = tonumber(redis.call('GET', KEYS[2]) or '0')
    if c < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], ARGV[2]) end
    redis.call('LREM', KEYS[1] .. ':q', 0, ARGV[1])
    redis.call('DEL', KEYS[1] .. ':a:' .. ARGV[1], KEYS[1] .. ':s:' .. ARGV[1])
    return 1
    """
)
"""Make a quorum's fencing token the floor everywhere and leave every queue."""
