"""The fault tests' worker: memoized calls until told to stop, checking every result.

Spawned worker processes import this module; the test injects a fault
(slots moving, a primary killed or failed over) while they run.
"""

from __future__ import annotations

import os
import random
import time

import fleche

from fleche_redis import redis_cache


def expected(x: int) -> dict:
    return {"x": x, "tripled": 3 * x, "payload": "p" * (x % 300)}


@fleche.fleche
def tripled(x: int) -> dict:
    return expected(x)


def memoize(url: str, namespace: str, stop_file: str, seed: int, options: dict) -> dict:
    """Memoized calls over 400 inputs until *stop_file* exists (at most a minute).

    Returns the calls made, the wrong results and the exceptions met, and the
    retries the storages counted: the test wants calls, no wrong result, no
    exception.
    """
    cache = redis_cache(url, namespace, **options)
    rng = random.Random(seed)
    made, wrong, errors = 0, [], []
    give_up = time.monotonic() + 60
    with fleche.cache(cache):
        while not os.path.exists(stop_file) and time.monotonic() < give_up:
            x = rng.randrange(400)
            try:
                got = tripled(x)
            except Exception as e:  # reported to the test, which wants none
                errors.append(f"{type(e).__name__}: {e}")
                time.sleep(0.05)
                continue
            made += 1
            if got != expected(x):
                wrong.append(f"tripled({x}) = {got!r}")
        try:
            cache.flush()  # a write-behind commit that failed is reported here
        except Exception as e:
            errors.append(f"flush: {type(e).__name__}: {e}")
    retries = cache.values.channel.metrics.retries + cache.calls.channel.metrics.retries
    return {"calls": made, "wrong": wrong, "errors": errors[:20], "retries": retries}


computed = 0
"""Bodies of :func:`stored` run in this process."""


@fleche.fleche
def stored(x: int) -> dict:
    global computed
    computed += 1
    return expected(x)


def memoize_each(url: str, namespace: str, xs: list[int], pause: float, options: dict) -> dict:
    """:func:`stored` of each of *xs* once, *pause* seconds apart, while the test breaks things.

    Returns how many results were computed, the wrong ones, the exceptions
    met, and the inputs whose commit the storages refused (counted in their
    ``errors``: with ``wait_replicas``, a commit too few replicas
    acknowledged; the call returned its result uncached).
    """
    cache = redis_cache(url, namespace, **options)
    wrong, errors, refused = [], [], []

    def failures() -> int:
        return cache.values.channel.metrics.errors + cache.calls.channel.metrics.errors

    with fleche.cache(cache):
        for x in xs:
            before = failures()
            try:
                if stored(x) != expected(x):
                    wrong.append(x)
            except Exception as e:  # reported to the test, which wants none
                errors.append(f"{type(e).__name__}: {e}")
            if failures() > before:
                refused.append(x)
            time.sleep(pause)
    return {"computed": computed, "wrong": wrong, "errors": errors[:20], "refused": refused}


def recompute(url: str, namespace: str, xs: list[int]) -> list[int]:
    """Those of *xs* a fresh process computes again: the results it did not find."""
    again = []
    with fleche.cache(redis_cache(url, namespace)):
        for x in xs:
            before = computed
            assert stored(x) == expected(x)
            if computed > before:
                again.append(x)
    return again
