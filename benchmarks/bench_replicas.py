"""What ``wait_replicas=1`` costs a RedisCache miss: side by side with the default, in one run.

A primary and one replica of it (``--replicaof``), both started here; two
``RedisCache`` objects on that primary, one with ``wait_replicas=0`` (the
default: the commit returns once the primary has it) and one with
``wait_replicas=1`` (once the replica acknowledged it, ``WAIT`` in the
commit's own request).  They take turns miss by miss in a fresh random
order; each round reports both medians, their ratio, and the requests a
miss sent (the same: the ``WAIT`` costs no request).

    python benchmarks/bench_replicas.py          # writes benchmarks/results/replicas.md
    python benchmarks/bench_replicas.py --smoke  # tiny sizes; only checks that it runs
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import random
import statistics
import time
from pathlib import Path

import fleche
import redis

from fleche_redis import RedisCache, redis_cache
from fleche_redis.testing import RedisServer
from fleche_redis.testing.groups import in_sync, wait_until
from fleche_redis.testing.roundtrips import RoundTrips

RESULTS = Path(__file__).parent / "results" / "replicas.md"
WANTED = (0, 1)

_inputs = itertools.count()


@fleche.fleche
def summed(x: int) -> dict:
    return {"x": x, "sum": sum(range(x % 1000))}


def _miss(cache: RedisCache) -> tuple[float, int]:
    """One miss through *cache*: (seconds, requests sent)."""
    x = next(_inputs)
    with fleche.cache(cache), RoundTrips() as trips:
        start = time.perf_counter()
        summed(x)
        took = time.perf_counter() - start
    return took, trips.count


def _acknowledging(primary: RedisServer) -> bool:
    with primary.client() as p:
        p.set("warm", 1)
        return bool(p.wait(1, 2000) >= 1)


def measure(url: str, misses: int, seed: int) -> dict[int, tuple[float, float]]:
    """``wanted -> (median seconds, mean requests)`` of *misses* misses each, taking turns."""
    caches = {
        n: redis_cache(url, namespace=f"replicas-{seed}-{n}", wait_replicas=n) for n in WANTED
    }
    for cache in caches.values():
        for _ in range(10):
            _miss(cache)  # connects, loads the scripts
    times: dict[int, list[float]] = {n: [] for n in WANTED}
    trips: dict[int, list[int]] = {n: [] for n in WANTED}
    rng = random.Random(seed)
    for _ in range(misses):
        for n in rng.sample(WANTED, len(WANTED)):
            took, sent = _miss(caches[n])
            times[n].append(took)
            trips[n].append(sent)
    for cache in caches.values():
        cache.values.close()
    return {n: (statistics.median(times[n]), statistics.mean(trips[n])) for n in WANTED}


def run(rounds: int, misses: int) -> str:
    """*rounds* rounds of *misses* misses per setting; a Markdown table, a row per round."""
    rows = []
    with RedisServer.start(["--repl-diskless-sync-delay", "0"]) as primary:
        with RedisServer.start(["--replicaof", primary.host, str(primary.port)]) as replica:
            wait_until(lambda: in_sync(replica), 20, "the replica did not sync")
            wait_until(lambda: _acknowledging(primary), 20, "the replica did not acknowledge")
            version = primary.client().info("server")["redis_version"]
            for round_ in range(rounds):
                m = measure(primary.url, misses, seed=round_)
                (t0, r0), (t1, r1) = m[0], m[1]
                rows.append(
                    f"| {round_} | {misses} | {t0 * 1e6:,.0f} us | {t1 * 1e6:,.0f} us "
                    f"| {t1 / t0:.2f} | {(t1 - t0) * 1e6:+,.0f} us | {r0:g} | {r1:g} |"
                )
    head = (
        "| round | misses each | miss, wait_replicas=0 | miss, wait_replicas=1 | 1 / 0 "
        "| difference | requests per miss, 0 | requests per miss, 1 |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    measured = (
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} core(s), loopback Redis "
        f"{version} (a primary and one replica on this machine), Python "
        f"{platform.python_version()}, redis-py {redis.__version__}.\n\n"
    )
    return (
        measured
        + head
        + "\n".join(rows)
        + "\n\nMedians of misses taking turns in random order, in one run.  The difference is "
        "the replica's acknowledgement: a loopback round trip from primary to replica here, "
        "the network's between hosts.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; only checks that it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.misses = 1, 10
    table = run(args.rounds, args.misses)
    title = "# Replica-acknowledged commits: a miss's cost" + (
        " (SMOKE sizes)" if args.smoke else ""
    )
    print(f"{title}\n\n{table}")
    if not args.smoke:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(f"{title}\n\n{table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
