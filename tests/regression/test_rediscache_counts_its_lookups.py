"""Under ``RedisCache``, ``CallRedis.metrics()`` never counted hits, misses or bytes read.

The cache's lookup script reads the record itself, past the storage's ``get``;
it now counts what it finds in the call storage's counters.
"""

from __future__ import annotations

import fleche

from fleche_redis import redis_cache


@fleche.fleche
def double(x: int) -> int:
    return 2 * x


def test_hits_misses_and_bytes_of_the_cache_are_counted(redis_server, namespace):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    with fleche.cache(cache):
        for i in range(5):
            double(i)  # misses
        before = cache.calls.metrics()
        for i in range(5):
            double(i)  # hits
    after = cache.calls.metrics()
    assert before["misses"] == 5 and before["hits"] == 0
    assert after["hits"] == 5 and after["misses"] == 5
    assert after["bytes_in"] > before["bytes_in"] > 0 or after["bytes_in"] > 0
