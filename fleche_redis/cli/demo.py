"""The main job, end to end: memoize a workload across worker processes, twice.

Round one computes every task in a pool of worker processes, each saving to
the one shared Redis cache; round two asks again and every worker gets the
saved results instead of recomputing.  The task is a seeded Monte Carlo
simulation, so its result is deterministic and its cost is real.
"""

from __future__ import annotations

import os
import random
import secrets
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import fleche

from ..cache.caches import redis_cache
from ..errors import FlecheRedisError

__all__ = ["simulate", "run_demo"]


@fleche.fleche
def simulate(seed: int, samples: int, round_: fleche.Ignored[int] = 0) -> dict:
    """Estimate pi from *samples* random points (``round_`` is not part of the key)."""
    rng = random.Random(seed)
    inside = sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    return {"seed": seed, "pi": 4 * inside / samples, "round": round_, "pid": os.getpid()}


@dataclass(frozen=True)
class RoundReport:
    computed: int
    reused: int
    seconds: float
    results: tuple


def _run_round(pool, task, tasks: int, samples: int, round_: int) -> RoundReport:
    start = time.perf_counter()
    results = list(pool.map(task, range(tasks), [samples] * tasks, [round_] * tasks))
    seconds = time.perf_counter() - start
    computed = sum(1 for r in results if r["round"] == round_)
    return RoundReport(
        computed, tasks - computed, seconds, tuple((r["seed"], r["pi"]) for r in results)
    )


def run_demo(
    url: str,
    *,
    workers: int = 4,
    tasks: int = 16,
    samples: int = 1_000_000,
    namespace: str | None = None,
    keep: bool = False,
    say=print,
) -> tuple[RoundReport, RoundReport]:
    namespace = namespace or f"fleche-redis-demo-{secrets.token_hex(3)}"
    cache = redis_cache(url=url, namespace=namespace)
    say(f"namespace: {namespace}")
    say(
        f"workload: {tasks} Monte Carlo simulations of {samples:,} samples on {workers} worker processes"
    )
    with fleche.cache(cache), fleche.meta():
        task = fleche.BoundWrapper.bind(simulate)
    try:
        with ProcessPoolExecutor(workers) as pool:
            first = _run_round(pool, task, tasks, samples, 1)
            say(
                f"round 1: {first.computed:3d} computed, {first.reused:3d} reused  {first.seconds:7.2f} s"
            )
            second = _run_round(pool, task, tasks, samples, 2)
            say(
                f"round 2: {second.computed:3d} computed, {second.reused:3d} reused  {second.seconds:7.2f} s"
            )
        same = "yes" if first.results == second.results else "NO"
        saved = first.seconds - second.seconds
        say(
            f"time saved in round 2: {saved:.2f} s ({first.seconds / max(second.seconds, 1e-9):.0f}x faster); "
            f"identical results: {same}"
        )
        say(f"stored in Redis: {cache.calls.count()} call records, {cache.values.count()} values")
        return first, second
    finally:
        try:
            if not keep:
                for storage in (cache.calls, cache.values):
                    for key in list(storage.list()):
                        storage.evict(key)
        except FlecheRedisError:
            pass  # the error that stopped the demo is the one to report
        cache.values.close()
        cache.calls.close()
