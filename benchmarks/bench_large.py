"""Big values: fleche-redis against raw redis-py moving the same bytes, and RedisCache against Cache.

One run, one machine, one private redis-server.  Two questions:

* **16 MB values** (a numpy array of 2 Mi float64): ``ValueRedis.put`` (encode,
  then one request that writes and indexes the entry) and ``ValueRedis.get``
  (one ``GET``, then verify and decode) against the floor, raw redis-py
  ``SET``/``GET`` of the very bytes the storage stores, already encoded: the
  floor pickles nothing and unpickles nothing.  A second floor row adds
  ``pickle.dumps``/``pickle.loads`` (protocol 5, in-band) for reference, one
  adds the copy a writable array needs (the reply's ``bytes`` into a
  ``bytearray``: what ``get`` pays beyond the raw ``GET``), and a storage
  with a secret key shows what signing (HMAC-SHA256 of every byte) adds.
  Each is timed in a loop of its own, the loops alternating round by round.
  Throughput is bytes stored / median seconds.
* **1.6 MB results** (200 000 float64): a miss of a memoized call through
  fleche's plain ``Cache(ValueRedis, CallRedis)`` and through ``RedisCache``,
  taking turns call by call in random order on fresh arrays.

Targets (issue #14, item 4): save and load >= 0.8 x the raw floor's
throughput; the RedisCache miss no slower than the plain Cache miss.

    python benchmarks/bench_large.py            # writes benchmarks/results/large.md
    python benchmarks/bench_large.py --smoke    # tiny sizes; only checks that it runs
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import random
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fleche
import numpy as np
import redis
from fleche.caches import Cache

from fleche_redis import CallRedis, RedisCache, ValueRedis
from fleche_redis.testing import RedisServer
from fleche_redis.transport import wire

RESULTS = Path(__file__).parent / "results"


@fleche.fleche
def scaled(x: np.ndarray) -> np.ndarray:
    return x * 2.0


def _median_ms(timings: list[float]) -> float:
    return statistics.median(timings) * 1e3


def _loop(step: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        out.append(time.perf_counter() - start)
    return out


def big_values(url: str, floats: int, rounds: int, reps: int) -> dict[str, list[float]]:
    """Medians (seconds) per round of each loop; rounds alternate the loops' order."""
    array = np.random.default_rng(1).random(floats)
    storage = ValueRedis(url=url, namespace=f"large-{secrets.token_hex(3)}")
    signed = ValueRedis(url=url, namespace=f"large-{secrets.token_hex(3)}", secret_key=b"bench")
    key = fleche.digest.digest(array)
    stored = bytes(storage.codec.encode(array))  # what the storage writes, as one bytes object
    client = redis.Redis.from_url(url)
    name = f"raw:{secrets.token_hex(4)}"
    client.set(name, stored)
    inband = f"{name}:in-band"
    client.set(inband, pickle.dumps(array, protocol=5))
    storage.put(array, key)
    signed.put(array, key)
    loops: dict[str, Callable[[], object]] = {
        "raw SET": lambda: client.set(name, stored),
        "raw GET": lambda: client.get(name),
        "raw pickle.dumps + SET": lambda: client.set(inband, pickle.dumps(array, protocol=5)),
        "raw GET + pickle.loads": lambda: pickle.loads(client.get(inband)),
        "raw GET + one copy (bytearray)": lambda: bytearray(client.get(name)),
        "ValueRedis.put": lambda: storage.put(array, key),
        "ValueRedis.get": lambda: storage.get(key),
        "ValueRedis.put, signed": lambda: signed.put(array, key),
        "ValueRedis.get, signed": lambda: signed.get(key),
    }
    assert np.array_equal(storage.get(key), array)
    found: dict[str, list[float]] = {label: [] for label in loops}
    found["bytes"] = [float(len(stored))]
    order = list(loops)
    for i in range(rounds):
        for label in order if i % 2 == 0 else reversed(order):
            found[label].append(statistics.median(_loop(loops[label], reps)))
    client.delete(name, inband)
    storage.evict(key)
    signed.evict(key)
    client.close()
    return found


def _miss(cache: object, x: np.ndarray) -> float:
    with fleche.cache(cache):
        start = time.perf_counter()
        scaled(x)
        elapsed = time.perf_counter() - start
    wire.settle()
    return elapsed


def misses(url: str, floats: int, calls: int, seed: int) -> dict[str, list[float]]:
    """Miss latencies of fresh arrays, the two caches taking turns in random order."""
    run = secrets.token_hex(3)
    caches = {
        "fleche Cache(ValueRedis, CallRedis)": Cache(
            ValueRedis(url=url, namespace=f"big-a-{run}"),
            CallRedis(url=url, namespace=f"big-a-{run}"),
        ),
        "RedisCache": RedisCache(
            values=ValueRedis(url=url, namespace=f"big-b-{run}"),
            calls=CallRedis(url=url, namespace=f"big-b-{run}"),
        ),
    }
    rng = random.Random(seed)
    found: dict[str, list[float]] = {label: [] for label in caches}
    for i in range(calls + 3):
        x = np.random.default_rng(seed + i).random(floats)
        for label in rng.sample(list(caches), len(caches)):
            elapsed = _miss(caches[label], x)
            if i >= 3:  # warm-up: imports, connections, scripts
                found[label].append(elapsed)
    return found


def report(
    big: dict[str, list[float]],
    miss: dict[str, list[float]],
    args: argparse.Namespace,
    version: str,
) -> str:
    size = big.pop("bytes")[0]
    rounds = len(big["raw SET"])
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {_cpus()} core(s), loopback Redis {version}, "
        f"Python {platform.python_version()}, redis-py {redis.__version__}, numpy {np.__version__}; "
        + (
            "SMOKE sizes, not figures."
            if args.smoke
            else f"{args.floats:,} float64 ({size / 2**20:.1f} MiB stored), {rounds} rounds of {args.reps} reps."
        ),
        "",
        "Each loop timed on its own, the loops alternating round by round; a cell is the median "
        "of a round's reps, in ms, then MB/s of the stored bytes.",
        "",
        "| loop | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " | median | MB/s |",
        "|---|" + "---:|" * (rounds + 2),
    ]
    for label, values in big.items():
        med = statistics.median(values)
        cells = " | ".join(f"{v * 1e3:.2f}" for v in values)
        lines.append(f"| {label} | {cells} | {med * 1e3:.2f} | {size / med / 1e6:,.0f} |")
    lines += [
        "",
        "| target (throughput vs raw redis-py SET/GET of the same bytes) | per round | median | |",
        "|---|---|---:|---|",
    ]
    for ours, raw in (("ValueRedis.put", "raw SET"), ("ValueRedis.get", "raw GET")):
        ratios = [r / o for o, r in zip(big[ours], big[raw], strict=True)]
        med = statistics.median(big[raw]) / statistics.median(big[ours])
        verdict = "met" if med >= 0.8 else "NOT met"
        lines.append(
            f"| {ours} >= 0.8 x {raw} | {', '.join(f'{r:.2f}' for r in ratios)} | {med:.2f} | {verdict} |"
        )
    plain, cached = miss["fleche Cache(ValueRedis, CallRedis)"], miss["RedisCache"]
    ratio = statistics.median(cached) / statistics.median(plain)
    lines += [
        "",
        f"Misses of a memoized call returning {args.miss_floats:,} float64 "
        f"({args.miss_floats * 8 / 2**20:.1f} MiB), {len(plain)} calls per cache, taking turns:",
        "",
        "| cache | miss p50 | p25 | p75 |",
        "|---|---:|---:|---:|",
    ]
    for label, values in miss.items():
        q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
        lines.append(
            f"| {label} | {_median_ms(values):.2f} ms | {q[0] * 1e3:.2f} ms | {q[2] * 1e3:.2f} ms |"
        )
    lines += [
        "",
        f"RedisCache miss / Cache miss: {ratio:.2f} ({'met' if ratio <= 1.0 else 'NOT met'}: no slower).",
        "",
    ]
    return "\n".join(lines)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floats", type=int, default=2 * 2**20, help="float64 in the big value")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--reps", type=int, default=6, help="timed operations per loop and round")
    parser.add_argument("--miss-floats", type=int, default=200_000)
    parser.add_argument("--calls", type=int, default=200, help="misses per cache")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; only checks that it runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "large.md")
    args = parser.parse_args(argv)
    if args.smoke:
        args.floats, args.rounds, args.reps = 100_000, 2, 2
        args.miss_floats, args.calls = 20_000, 3
    with RedisServer.start() as server:
        version = server.client().info("server")["redis_version"]
        big = big_values(server.url, args.floats, args.rounds, args.reps)
        print("measured the big values", file=sys.stderr, flush=True)
        miss = misses(server.url, args.miss_floats, args.calls, seed=int(secrets.token_hex(3), 16))
    text = report(big, miss, args, version)
    print(text)
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Big values: copies, throughput, and the RedisCache miss\n\n" + text)
        print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
