"""Memoized work for the Dask and Celery tests: counts executions per input in Redis."""

from __future__ import annotations

import os
import time

import fleche
import redis


@fleche.fleche
def slow_square(x: int) -> dict:
    url, prefix = os.environ["FLECHE_REDIS_TEST_COUNTER"].split(" ")
    with redis.Redis.from_url(url) as r:
        r.incr(f"{prefix}:{x}")
    # Long enough that both clients' maps overlap on a loaded machine (the control races).
    time.sleep(0.2)
    return {"x": x, "square": x * x}
