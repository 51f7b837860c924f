"""The server side of one stored entry: the Lua that writes it with its index entries, and removes it.

Every script touches only keys of the entry's hash slot (see
:class:`~fleche_redis.keys.KeyLayout`): the data key, the index shard that
lists it, the shard's references hash and its gc flag.  PUT writes the bytes
and indexes them; INDEX is PUT without the write, for bytes that a plain
``SET`` put in just before (see ``RedisBackend._write``); both share
``_INDEX_ENTRY``.  EVICT removes an entry, its index entries and any chunks.
RESIGN puts the same entry, signed with another key, in place of its bytes.
Each reads every key it may write before its first write, so a slot
migration that stops a script midway finds it wrote nothing
(``transport.health.NOT_HERE_YET``).
"""

from __future__ import annotations

from ..transport.scripts import LuaScript

__all__ = ["PUT", "INDEX", "EVICT", "RESIGN", "GUARD"]

# Checks every key an entry's write touches before anything is written: a
# key of the wrong type (a foreign key in the namespace) refuses the whole
# write, so data and index go in together or not at all.  Sets ``bad`` (why,
# or nil) and ``run`` (the garbage collection running now, or false).
GUARD = """
    local function wrong(key, want)
      local kind = redis.call('TYPE', key)['ok']
      if kind ~= want and kind ~= 'none' then
        return key .. ' holds a ' .. kind .. ', not a ' .. want
      end
    end
    local function refuse(why)
      return redis.error_reply('WRONGTYPE ' .. why .. ' (fleche-redis: run repair)')
    end
    """

_ENTRY_GUARD = (
    GUARD
    + """
    local bad = wrong(KEYS[1], 'string') or wrong(KEYS[2], 'zset')
      or wrong(KEYS[3], 'hash') or wrong(KEYS[4], 'string')
    local run = not bad and redis.call('GET', KEYS[4])
    if run then bad = wrong(KEYS[4] .. ':' .. run, 'set') end
    """
)

# The part of an entry's write that indexes it, ending PUT and INDEX: index
# member, references (for gc), and the gc write barrier's mark.
_INDEX_ENTRY = """
    redis.call('ZADD', KEYS[2], 0, ARGV[2])
    if ARGV[4] ~= '' then
      redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
    end
    if run then
      redis.call('SADD', KEYS[4] .. ':' .. run, ARGV[5])
    end
    return 1
    """

PUT = LuaScript(
    """
    -- KEYS[1] data key, KEYS[2] index shard listing it, KEYS[3] the shard's
    --   references hash, KEYS[4] the shard's gc flag (all one hash slot)
    -- ARGV[1] encoded entry, ARGV[2] digest, ARGV[3] time to live in ms
    --   (0: none), ARGV[4] digests the entry refers to, 32 bytes each
    --   (usually empty), ARGV[5] digest (32 raw bytes)
    -- Writes entry, index member and references together; returns 1, or a
    -- WRONGTYPE error (nothing written) when a key holds a foreign type.
    -- The SET is the first write: under maxmemory only a script's first
    -- write can be refused, so an OOM leaves nothing half written.  While a
    -- garbage collection runs, what is written is marked reachable, so the
    -- sweep never removes a value stored after the mark phase read the records.
    """
    + _ENTRY_GUARD
    + """
    if bad then return refuse(bad) end
    if tonumber(ARGV[3]) > 0 then
      redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
    else
      redis.call('SET', KEYS[1], ARGV[1])
    end
    """
    + _INDEX_ENTRY
)

INDEX = LuaScript(
    """
    -- PUT for an entry whose bytes a plain SET just wrote to KEYS[5] (the
    -- data key + ':w') in the same MULTI/EXEC (see _write): KEYS and ARGV as
    -- PUT's, ARGV[1] and ARGV[3] unused.  Renames the bytes into place and
    -- indexes them, or deletes them if a key holds a foreign type.
    """
    + _ENTRY_GUARD
    + """
    if bad then
      redis.call('DEL', KEYS[5])
      return refuse(bad)
    end
    redis.call('RENAME', KEYS[5], KEYS[1])
    """
    + _INDEX_ENTRY
)

EVICT = LuaScript(
    """
    -- KEYS[1] data key, KEYS[2] index shard listing it, KEYS[3] references hash
    -- ARGV[1] digest, ARGV[2] the chunk manifest prefix (see chunks.py)
    -- Removes entry, index member, references and any chunks together;
    -- returns how many data keys were deleted (0 when it was absent).
    """
    + GUARD
    + """
    local bad = wrong(KEYS[1], 'string') or wrong(KEYS[2], 'zset') or wrong(KEYS[3], 'hash')
    if bad then return refuse(bad) end
    -- The chunks' names come from the manifest: read them before the first
    -- write (a key of a moving slot that is not here stops the script there).
    local chunks = {}
    if redis.call('GETRANGE', KEYS[1], 0, #ARGV[2] - 1) == ARGV[2] then
      local count = tonumber(string.match(redis.call('GET', KEYS[1]), '^.-%s(%d+)', #ARGV[2]))
      for i = 0, count - 1 do
        chunks[#chunks + 1] = KEYS[1] .. ':' .. i
        redis.call('EXISTS', chunks[#chunks])
      end
    end
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('HDEL', KEYS[3], ARGV[1])
    for _, chunk in ipairs(chunks) do redis.call('DEL', chunk) end
    return redis.call('DEL', KEYS[1])
    """
)

RESIGN = LuaScript(
    """
    -- KEYS[1] the entry's data key (a value's string, a call record's hash)
    -- ARGV[1] the entry as it was read ('': any bytes, for a value), ARGV[2] the
    --   same entry signed with the first key, ARGV[3] the hash field of a call
    --   record ('' for a value)
    -- Puts ARGV[2] in place, keeping the ttl and a record's other fields (terms,
    -- result, fence), only where the entry is still there and, when ARGV[1] is
    -- given, still what was read: a record a writer replaced meanwhile is newer
    -- and stays.  A value is content-addressed, so any version of it is the same
    -- value.  Returns 1 if replaced, 0 if not (nothing written).
    local field = ARGV[3]
    if redis.call('TYPE', KEYS[1])['ok'] ~= (field == '' and 'string' or 'hash') then
      return 0
    end
    if field == '' then
      if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
      redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
    else
      if redis.call('HGET', KEYS[1], field) ~= ARGV[1] then return 0 end
      redis.call('HSET', KEYS[1], field, ARGV[2])
    end
    return 1
    """
)
