"""Cache: RedisCache and its single flight, how a memoized call travels to Redis.

It may import errors, runtime, metrics, transport, storage and locks, never
admin, cli or testing.  See ``docs/cache.md``.
"""
