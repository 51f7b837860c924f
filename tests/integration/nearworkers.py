"""What the near-cache process tests run in a worker process (spawned workers import it)."""

import os
import time

import fleche

from fleche_redis import redis_cache


@fleche.fleche
def stamped(x: int) -> dict:
    """A result that tells one computation from another."""
    return {"x": x, "pid": os.getpid(), "t": time.time()}


def watch(url: str, namespace: str, x: int, conn) -> None:
    """Hit ``stamped(x)`` from the near cache until its result changes; report when (monotonic)."""
    try:
        cache = redis_cache(url, namespace)
        with fleche.cache(cache):
            first = stamped(x)
            key = next(iter(cache.calls.list()))
            deadline = time.monotonic() + 10
            while (
                cache.calls.near.get(key) is None or cache.values.near.get(first_key(cache)) is None
            ):
                assert time.monotonic() < deadline, "the record never reached the near cache"
                stamped(x)
            conn.send(("ready", first, key))
            before = cache.calls.metrics()
            deadline = time.monotonic() + 10
            while (result := stamped(x)) == first:
                if time.monotonic() > deadline:
                    conn.send(("unchanged", None, None, None))
                    return
            seen = time.monotonic()
            after = cache.calls.metrics()
            conn.send(
                (
                    "changed",
                    seen,
                    result,
                    after["near_hits"] - before["near_hits"],
                    after["near_invalidations"] - before["near_invalidations"],
                )
            )
    except BaseException as e:  # surfaced in the parent
        conn.send(("failed", repr(e)))


def first_key(cache) -> str:
    record = cache.calls.load(next(iter(cache.calls.list())))
    return str(record.result)
