"""The near cache's targets, side by side in one run: repeated hits against fleche's memory hit and the first hit.

The same memoized function (``work(x) = 2 * x`` on a numpy array) hits
through fleche's memory ``Cache``, through a ``RedisCache`` whose near cache
holds the record and the result (a repeated hit), and through the same
``RedisCache`` with its near caches emptied before each call (a first hit:
what another process computed).  The three take turns call by call in a
fresh random order.  Targets (issue #14, item 2):

    100 floats:  repeated hit <= 1.5 x fleche memory hit
    1.6 MB:      repeated hit <= 0.5 x first hit

    python benchmarks/bench_near.py              # prints a table per payload
    python benchmarks/bench_near.py --reps 300 --rounds 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

import fleche
import numpy as np
from fleche.caches import Cache
from fleche.storage import CallMemory, ValueMemory

from fleche_redis import RedisCache, redis_cache
from fleche_redis.testing import RedisServer

SIZES = {"100 floats": 100, "1.6 MB": 200_000}


@fleche.fleche
def work(x: np.ndarray) -> np.ndarray:
    return x * 2.0


def _hit(cache: Any, x: np.ndarray, *, cold: bool = False) -> float:
    if cold:  # as if another process had computed it: nothing held here
        cache.values.near.clear()
        cache.calls.near.clear()
    with fleche.cache(cache):
        start = time.perf_counter()
        work(x)
        return time.perf_counter() - start


def measure(url: str, floats: int, reps: int, seed: int) -> dict[str, float]:
    memory = Cache(ValueMemory({}), CallMemory({}))
    near: RedisCache = redis_cache(url, namespace=f"near-{seed}-{floats}")
    x = np.random.default_rng(seed).random(floats)
    for cache in (memory, near):
        _hit(cache, x)  # the miss: stored
    time.sleep(0.05)  # the listener has reported our own write
    contenders = {
        "fleche memory hit": lambda: _hit(memory, x),
        "RedisCache repeated hit (near)": lambda: _hit(near, x),
        "RedisCache first hit": lambda: _hit(near, x, cold=True),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    rng = random.Random(seed)
    for name in contenders:  # warm up
        for _ in range(10):
            contenders[name]()
    for _ in range(reps):
        for name in rng.sample(list(contenders), len(contenders)):
            times[name].append(contenders[name]())
    stats = near.calls.metrics()
    assert stats["near_records"] == "tracked", stats["near_records"]
    near.values.close()
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with RedisServer.start() as server:
        for round_ in range(args.rounds):
            for label, floats in SIZES.items():
                reps = args.reps if floats < 10_000 else max(20, args.reps // 10)
                m = measure(server.url, floats, reps, seed=round_ * 1000 + floats % 997)
                memory, near, first = (
                    m["fleche memory hit"],
                    m["RedisCache repeated hit (near)"],
                    m["RedisCache first hit"],
                )
                print(
                    f"round {round_} {label:>10}: memory {memory * 1e6:8.0f} us | "
                    f"near {near * 1e6:8.0f} us ({near / memory:.2f} x memory) | "
                    f"first {first * 1e6:8.0f} us (near = {near / first:.2f} x first)"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
