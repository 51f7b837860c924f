"""Storage: how values and call records live in Redis (RedisBackend, ValueRedis, CallRedis).

Key layout, codec (and which entries it trusts), chunks, the prefix and
query indexes, and the whole-store work (verify, repair, transform, gc,
redigest).  It may import
errors, runtime, metrics and transport, never locks, cache, admin, cli or
testing.  See ``docs/storage.md``.
"""
