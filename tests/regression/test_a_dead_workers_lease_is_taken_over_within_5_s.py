"""When a worker holding a compute lease was killed, its waiters waited the whole ``lease_ttl`` (30 s).

The lease now defaults to 4.5 s, renewed by the process's watchdog every
1.5 s while the function runs (nothing for a computation shorter than the
first renewal), so a dead worker is replaced within 5 s, at no extra request
per call.
"""

from __future__ import annotations

import time

from fleche_redis import RedisCache, redis_cache

from ..cache.test_singleflight import race

WORK = 1.5  # past the claim's first renewal (claim_ttl / 2): the worker dies holding a lease


def test_the_default_lease_is_short():
    assert RedisCache.__dataclass_fields__["lease_ttl"].default <= 5.0


def test_a_killed_worker_is_replaced_within_5_seconds(redis_server, namespace, counter):
    cache = redis_cache(url=redis_server.url, namespace=namespace)  # the defaults
    started = time.monotonic()
    out, procs = race(cache, (5, "die", WORK), workers=4)
    assert sorted(p.exitcode for p in procs) == [-9, 0, 0, 0]
    assert len(out) == 3 and all(value["execution"] == 2 for _, value, _ in out)
    died = started + WORK
    taken_over = max(t for *_, t in out) - WORK  # the second execution takes WORK too
    assert taken_over - died < 5.0, taken_over - died
