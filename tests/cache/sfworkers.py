"""Memoized functions and worker entry points of the single-flight tests (importable by spawned workers)."""

from __future__ import annotations

import os
import signal
import time

import fleche
import redis


def _executions() -> int:
    url, key = os.environ["FLECHE_REDIS_TEST_COUNTER"].split(" ")
    with redis.Redis.from_url(url) as r:
        return r.incr(key)


@fleche.fleche
def compute(
    x: int, behaviour: fleche.Ignored[str] = "ok", seconds: fleche.Ignored[float] = 0.3
) -> dict:
    """Counts its executions in Redis; the first execution misbehaves as told."""
    n = _executions()
    time.sleep(seconds)
    if n == 1 and behaviour == "raise":
        raise RuntimeError("first execution fails")
    if n == 1 and behaviour == "none":
        return None
    if behaviour == "always-none":  # never cacheable
        return None
    if n == 1 and behaviour == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if behaviour == "nested":  # destructured by the value storage: travels as parts
        return {"x": x, "parts": [x, [x, x * x]], "execution": n}
    if behaviour == "big":  # too big to be pushed to the waiters with the record
        return {"x": x, "blob": b"b" * 100_000, "execution": n}
    return {"x": x, "square": x * x, "execution": n}


def run(bound, args: tuple, barrier, results) -> None:
    barrier.wait()
    try:
        value = bound(*args)
        results.put(("ok", value, time.monotonic()))
    except BaseException as e:  # reported to the parent
        results.put(("error", repr(e), time.monotonic()))
