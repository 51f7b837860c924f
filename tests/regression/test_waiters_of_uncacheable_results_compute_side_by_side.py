"""When the function returned ``None`` (or raised) and 4 workers waited, it ran 4 times, one after another.

The computing worker told its waiters to look again, and the first to look
took the lease while the others waited for it, again and again.  Such a
result is never stored, so the waiters are now told so and all compute at
once: the wall time is about two executions (the first, then the others side
by side), not one per worker.
"""

from __future__ import annotations

from fleche_redis import redis_cache

from ..cache.test_singleflight import race

SECONDS = 0.8


def test_four_workers_on_an_uncacheable_result_take_two_executions(
    redis_server, namespace, counter
):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    out, _ = race(cache, (7, "always-none", SECONDS), workers=4)
    assert [value for _, value, _ in out] == [None] * 4
    assert counter() == 4
    # From the first finish (the worker that computed first) to the last:
    # about one execution side by side, three one after another.  Measured
    # between finishes, so starting 4 processes on a loaded machine does not count.
    finishes = sorted(t for *_, t in out)
    assert finishes[-1] - finishes[0] < 2 * SECONDS, finishes
