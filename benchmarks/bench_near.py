"""The near cache's targets, side by side in one run: repeated hits against fleche's memory hit and the first hit.

The same memoized function (``work(x) = 2 * x`` on a numpy array) hits
through fleche's memory ``Cache``, through a ``RedisCache`` whose near cache
holds the record and the result (a repeated hit), and through the same
``RedisCache`` with its near caches emptied before each call (a first hit:
what another process computed).  The three take turns call by call in a
fresh random order.  Targets (issue #14, item 2):

    100 floats:  repeated hit <= 1.5 x fleche memory hit
    1.6 MB:      repeated hit <= 0.5 x first hit

    python benchmarks/bench_near.py          # writes benchmarks/results/near.md
    python benchmarks/bench_near.py --smoke  # tiny sizes; only checks that it runs
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import fleche
import numpy as np
import redis
from fleche.caches import Cache
from fleche.storage import CallMemory, ValueMemory

from fleche_redis import RedisCache, redis_cache
from fleche_redis.testing import RedisServer

SIZES = {"100 floats": 100, "1.6 MB": 200_000}
RESULTS = Path(__file__).parent / "results" / "near.md"


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


def run(rounds: int, reps: int) -> str:
    """Every payload, *rounds* times (each round its own namespace); a Markdown table of medians."""
    rows = []
    with RedisServer.start() as server:
        version = server.client().info("server")["redis_version"]
        for round_ in range(rounds):
            for label, floats in SIZES.items():
                n = reps if floats < 10_000 else max(5, reps // 10)
                m = measure(server.url, floats, n, seed=round_ * 1000 + floats % 997)
                memory = m["fleche memory hit"]
                near = m["RedisCache repeated hit (near)"]
                first = m["RedisCache first hit"]
                rows.append(
                    f"| {round_} | {label} | {n} | {memory * 1e6:,.0f} us | {near * 1e6:,.0f} us "
                    f"| {first * 1e6:,.0f} us | {near / memory:.2f} | {near / first:.2f} |"
                )
    head = (
        "| round | result | calls | fleche memory hit | RedisCache repeated hit (near) "
        "| RedisCache first hit | near / memory | near / first |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    measured = (
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} core(s), loopback Redis "
        f"{version}, Python {platform.python_version()}, redis-py {redis.__version__}.\n\n"
    )
    return (
        measured
        + head
        + "\n".join(rows)
        + "\n\nMedians of calls taking turns in random order, in one run.  Targets (issue #14): "
        "near / memory <= 1.5 for 100 floats; near / first <= 0.5 for 1.6 MB.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; only checks that it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.reps = 1, 10
    table = run(args.rounds, args.reps)
    title = "# Near cache: repeated hits" + (" (SMOKE sizes)" if args.smoke else "")
    print(f"{title}\n\n{table}")
    if not args.smoke:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(f"{title}\n\n{table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
