"""A memoized call through fleche-redis against the caches a fleche user would pick instead.

One run, one machine, one private redis-server.  The same memoized function
(``work(x) = 2 * x`` on a numpy array of floats) runs through fleche's
``Cache`` over each storage pair:

* fleche memory (not shared; the lower bound of fleche's own work),
* fleche cloudpickle files,
* cloudpickle files + fleche ``Sql`` calls on sqlite (and on PostgreSQL with
  ``--postgres-url``),
* fleche-redis through fleche's plain ``Cache`` and through ``RedisCache``,

and the floor, raw redis-py ``SET``/``GET`` of the very bytes fleche-redis
stores (argument, result, call record).  The caches take turns call by call in
a fresh random order, so a change in the machine's load hits them alike.
Reported: median miss and hit latency, Redis round trips per miss and hit,
memory per memoized call in Redis (``MEMORY USAGE``), and the issue's targets:

    hit  <= 1.15 x (fleche memory hit  + 2 raw GETs of the same bytes)
    miss <= 1.15 x (fleche memory miss + 1 raw SET per stored item)

    python benchmarks/bench_cache.py                   # writes benchmarks/results/cache.md (+ .png)
    python benchmarks/bench_cache.py --postgres-url postgresql+psycopg://localhost/test
    python benchmarks/bench_cache.py --smoke           # tiny sizes; only checks that it runs
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fleche
import numpy as np
import redis
from fleche.caches import Cache
from fleche.storage import CallMemory, CallPickleFile, Sql, ValueMemory, ValuePickleFile

from fleche_redis import CallRedis, RedisCache, ValueRedis
from fleche_redis.storage.keys import SHARDS
from fleche_redis.testing import RedisServer
from fleche_redis.testing.roundtrips import RoundTrips
from fleche_redis.transport import wire

RESULTS = Path(__file__).parent / "results"
FLOATS = 100  # the table's payload: 100 floats (anchors measured the same)
TRIP_CALLS = 5  # memoized calls whose Redis round trips are counted


@fleche.fleche
def work(x: np.ndarray) -> np.ndarray:
    return x * 2.0


@dataclass
class Contender:
    label: str
    cache: Any
    redis: bool = False
    miss: list[float] = field(default_factory=list)
    hit: list[float] = field(default_factory=list)
    miss_trips: float = 0.0
    hit_trips: float = 0.0

    def time(self, phase: str, x: np.ndarray) -> float:
        return _timed(self.cache, x)


@dataclass
class RawFloor(Contender):
    """The floor, taking its turn among the caches: plain redis-py on the bytes fleche-redis stores.

    A miss is one ``SET`` per stored item (argument, result, call record), a
    hit two ``GET`` (record, result), all of bytes encoded ahead of the clock
    by the storages' own codec.  It runs in the same random rotation as the
    caches, so it meets the same machine: a floor timed in a loop of its own
    runs with warm CPU caches that no memoized call in the rotation enjoys.
    """

    client: Any = None
    source: Any = None  # the RedisCache contender's cache: its codec and one of its records
    record: bytes = b""
    names: dict[int, list[str]] = field(default_factory=dict)

    def time(self, phase: str, x: np.ndarray) -> float:
        values = self.source.values
        if not self.record:
            calls = self.source.calls
            self.record = bytes(calls.codec.encode(calls.load(next(iter(calls.list())))))
        names = self.names.setdefault(id(x), [f"raw:{secrets.token_hex(6)}:{i}" for i in range(3)])
        if phase == "miss":
            # bytes(): a framed entry (big arrays) is encoded as buffers, joined here.
            items = [
                bytes(values.codec.encode(x)),
                bytes(values.codec.encode(x * 2.0)),
                self.record,
            ]
            start = time.perf_counter()
            for name, data in zip(names, items, strict=True):
                self.client.set(name, data)
            return time.perf_counter() - start
        start = time.perf_counter()
        for name in names[1:]:
            self.client.get(name)
        return time.perf_counter() - start


def contenders(url: str, tmp: Path, postgres_url: str | None, run: str) -> list[Contender]:
    ns = f"bench-{run}"
    found = [
        Contender("fleche memory", Cache(ValueMemory({}), CallMemory({}))),
        Contender(
            "fleche cloudpickle files",
            Cache(
                ValuePickleFile.with_cloudpickle(root=tmp / "v"),
                CallPickleFile.with_cloudpickle(root=tmp / "c"),
            ),
        ),
        Contender(
            "cloudpickle files + Sql (sqlite) calls",
            Cache(
                ValuePickleFile.with_cloudpickle(root=tmp / "sv"),
                Sql(f"sqlite:///{tmp / 'calls.db'}"),
            ),
        ),
    ]
    if postgres_url:
        found.append(
            Contender(
                "cloudpickle files + Sql (PostgreSQL) calls",
                Cache(ValuePickleFile.with_cloudpickle(root=tmp / "pv"), Sql(postgres_url)),
            )
        )
    found += [
        Contender(
            "fleche-redis, fleche Cache",
            Cache(ValueRedis(url=url, namespace=ns + "a"), CallRedis(url=url, namespace=ns + "a")),
            redis=True,
        ),
        Contender(
            "fleche-redis, RedisCache",
            RedisCache(
                values=ValueRedis(url=url, namespace=ns + "b"),
                calls=CallRedis(url=url, namespace=ns + "b"),
            ),
            redis=True,
        ),
        Contender(
            "fleche-redis, RedisCache(write_behind=True)",
            RedisCache(
                values=ValueRedis(url=url, namespace=ns + "c"),
                calls=CallRedis(url=url, namespace=ns + "c"),
                write_behind=True,
            ),
            redis=True,
        ),
    ]
    found.append(
        RawFloor(
            "raw redis-py, same bytes: 3 SET / 2 GET, in the rotation",
            None,
            client=redis.Redis.from_url(url),
            source=next(e.cache for e in found if isinstance(e.cache, RedisCache)),
        )
    )
    return found


def _timed(cache: Any, x: np.ndarray) -> float:
    with fleche.cache(cache):
        start = time.perf_counter()
        work(x)
        elapsed = time.perf_counter() - start
    # A write-behind commit may still be running on the server: wait for it
    # off the clock, so its work never lands on the next cache's turn.
    wire.settle()
    return elapsed


def measure(entries: list[Contender], floats: int, reps: int, seed: int) -> None:
    """Misses then hits of *reps* fresh arrays, the caches taking turns in random order."""
    rng = random.Random(seed)
    arrays = [np.random.default_rng(seed + i).random(floats) for i in range(reps + 20)]
    for e in entries:  # warm up: imports, connections, scripts loaded on the server
        for x in arrays[reps:]:
            e.time("miss", x)
            e.time("hit", x)
    for phase in ("miss", "hit"):
        for x in arrays[:reps]:
            for e in rng.sample(entries, len(entries)):
                getattr(e, phase).append(e.time(phase, x))
    # Round trips apart from the timing: counting patches redis-py's send path.
    extra = [np.random.default_rng(seed - 1 - i).random(floats) for i in range(TRIP_CALLS)]
    for e in entries:
        if e.redis:
            for phase in ("miss", "hit"):
                with RoundTrips() as trips:
                    for x in extra:
                        _timed(e.cache, x)
                setattr(e, f"{phase}_trips", trips.count / TRIP_CALLS)


def floor(url: str, cache: Any, floats: int, reps: int, seed: int) -> dict[str, float]:
    """Raw redis-py on the bytes fleche-redis stored for one memoized call."""
    x = np.random.default_rng(seed).random(floats)
    with fleche.cache(cache):
        work(x)
    values, calls = cache.values, cache.calls
    key = next(
        iter(calls.query(fleche.call.QueryCall(name="work", arguments={"x": x})))
    ).to_lookup_key()
    record = calls.load(key)
    items = [
        bytes(values.codec.encode(x)),
        bytes(values.codec.encode(values.load(record.result))),
        bytes(calls.codec.encode(record)),
    ]
    client = redis.Redis.from_url(url)
    names = [f"raw:{secrets.token_hex(4)}:{i}" for i in range(len(items))]
    sets, gets, gets_loaded = [], [], []
    for _ in range(reps):
        start = time.perf_counter()
        for name, data in zip(names, items, strict=True):
            client.set(name, data)
        sets.append(time.perf_counter() - start)
        start = time.perf_counter()
        for name in names[1:]:  # a hit reads the record, then the result
            client.get(name)
        gets.append(time.perf_counter() - start)
        start = time.perf_counter()
        for name in names[1:]:
            values.codec.decode(client.get(name))  # unpickle; a framed entry from its buffers
        gets_loaded.append(time.perf_counter() - start)
    client.delete(*names)
    client.close()
    return {
        "set_items": len(items),
        "sets": statistics.median(sets),
        "gets": statistics.median(gets),
        "gets_loaded": statistics.median(gets_loaded),
        "bytes": sum(len(d) for d in items),
    }


def memory_per_call(url: str, calls_n: int, floats: int, run: str) -> dict[str, float]:
    """Bytes in Redis per memoized call: data alone, index structures, and raw strings of the same bytes."""
    ns = f"mem-{run}"
    cache = RedisCache(
        values=ValueRedis(url=url, namespace=ns), calls=CallRedis(url=url, namespace=ns)
    )
    rng = np.random.default_rng(7)
    with fleche.cache(cache):
        for _ in range(calls_n):
            work(rng.random(floats))
    client = redis.Redis.from_url(url)

    def usage(keys: list[str]) -> int:
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.memory_usage(k, samples=0)
        return sum(size or 0 for size in pipe.execute())

    data = usage([cache.values.layout.data(k) for k in cache.values.list()])
    data += usage([cache.calls.layout.data(k) for k in cache.calls.list()])
    structures = []
    for layout in (cache.values.layout, cache.calls.layout):
        structures += [layout.index(s) for s in SHARDS] + [layout.terms(s) for s in SHARDS]
        structures += [layout.references(s) for s in SHARDS]
    index = usage(structures)
    # The same bytes as plain strings, as a raw SET would store them.
    raw_names = []
    pipe = client.pipeline(transaction=False)
    for storage in (cache.values, cache.calls):
        for k in storage.list():
            name = f"rawmem:{run}:{k}:{storage.keyspace}"
            pipe.set(name, bytes(storage.codec.encode(storage.load(k))))
            raw_names.append(name)
    pipe.execute()
    raw = usage(raw_names)
    client.delete(*raw_names)
    for storage in (cache.calls, cache.values):
        for k in list(storage.list()):
            storage.evict(k)
    client.close()
    return {
        "calls": calls_n,
        "data": data / calls_n,
        "index": index / calls_n,
        "raw": raw / calls_n,
    }


def run(args: argparse.Namespace) -> str:
    run_id = secrets.token_hex(3)
    salt = int(run_id, 16)  # fresh arrays every run: a kept database must still miss
    sizes = sorted({FLOATS, *args.sweep})
    with (
        RedisServer.start() as server,
        tempfile.TemporaryDirectory() as tmp,
        _postgres_schema(args.postgres_url, run_id) as postgres_url,
    ):
        version = server.client().info("server")["redis_version"]
        by_size: dict[int, list[Contender]] = {}
        floors: dict[int, dict[str, float]] = {}
        for floats in sizes:
            entries = contenders(
                server.url, Path(tmp) / str(floats), postgres_url, f"{run_id}-{floats}"
            )
            reps = args.reps if floats == FLOATS else max(5, args.reps // 5)
            measure(entries, floats, reps, seed=salt + floats)
            redis_cache = next(e.cache for e in entries if isinstance(e.cache, RedisCache))
            floors[floats] = floor(
                server.url, redis_cache, floats, reps, seed=salt + 10**6 + floats
            )
            by_size[floats] = entries
            print(
                f"measured {floats:,} floats ({reps} calls per cache)", file=sys.stderr, flush=True
            )
        memory = memory_per_call(server.url, args.memory_calls, FLOATS, run_id)
    report = _report(by_size[FLOATS], floors[FLOATS], memory, version, args)
    if len(sizes) > 1:
        plotted = _plot(by_size, floors, args.plot)
        if plotted:
            report += f"\n![latency by payload size]({args.plot.name})\n"
    return report


@contextlib.contextmanager
def _postgres_schema(url: str | None, run: str) -> Iterator[str | None]:
    """A schema of this run's own in the given database, dropped afterwards."""
    if not url:
        yield None
        return
    import sqlalchemy

    schema = f"bench_{run}"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} us"


def _report(
    entries: list[Contender],
    raw: dict[str, float],
    memory: dict[str, float],
    version: str,
    args: argparse.Namespace,
) -> str:
    reps = len(entries[0].miss)
    rows = []
    for e in entries:
        if isinstance(e, RawFloor):
            trips = "3 | 2"
        else:
            trips = f"{e.miss_trips:g} | {e.hit_trips:g}" if e.redis else "– | –"
        rows.append(
            f"| {e.label} | {_us(statistics.median(e.miss))} | {_us(statistics.median(e.hit))} | {trips} |"
        )
    n = int(raw["set_items"])
    rows.append(
        f"| raw redis-py, same bytes: {n} SET / 2 GET, in a loop of its own | "
        f"{_us(raw['sets'])} | {_us(raw['gets'])} | {n} | 2 |"
    )
    rows.append(
        f"| raw redis-py, 2 GET + unpickle, in a loop of its own | – | {_us(raw['gets_loaded'])} | – | 2 |"
    )
    table = "\n".join(
        [
            "| cache | miss (p50) | hit (p50) | round trips per miss | per hit |",
            "|---|---:|---:|---:|---:|",
            *rows,
        ]
    )
    memory_ms = statistics.median(entries[0].miss)
    memory_hs = statistics.median(entries[0].hit)
    rotation = next(e for e in entries if isinstance(e, RawFloor))
    floors = {
        "in the rotation": (statistics.median(rotation.miss), statistics.median(rotation.hit)),
        "in a loop of its own": (raw["sets"], raw["gets"]),
    }
    verdicts = [
        "| cache | raw redis-py floor | hit | target | x floor | | miss | target | x floor | |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for e in entries:
        if not e.redis:
            continue
        miss, hit = statistics.median(e.miss), statistics.median(e.hit)
        for where, (sets, gets) in floors.items():
            hit_floor, miss_floor = memory_hs + gets, memory_ms + sets
            verdicts.append(
                f"| {e.label} | {where} | {_us(hit)} | {_us(1.15 * hit_floor)} | "
                f"{hit / hit_floor:.2f} | {'met' if hit <= 1.15 * hit_floor else 'NOT met'} | "
                f"{_us(miss)} | {_us(1.15 * miss_floor)} | {miss / miss_floor:.2f} | "
                f"{'met' if miss <= 1.15 * miss_floor else 'NOT met'} |"
            )
    overhead = (memory["data"] + memory["index"]) / memory["raw"] - 1
    mem_table = "\n".join(
        [
            "| per memoized call | bytes |",
            "|---|---:|",
            f"| data keys (argument, result, call record) | {memory['data']:,.0f} |",
            f"| index structures (prefix index, query terms, gc references) | {memory['index']:,.0f} |",
            f"| total | {memory['data'] + memory['index']:,.0f} |",
            f"| the same bytes as raw strings (SET) | {memory['raw']:,.0f} |",
        ]
    )
    sizes = (
        "SMOKE sizes, not figures"
        if args.smoke
        else (
            f"{reps} memoized calls per cache, {FLOATS}-float numpy arrays ({raw['bytes']:,.0f} bytes stored per call)"
        )
    )
    return (
        f"Measured {time.strftime('%Y-%m-%d')} on {_cpus()} core(s), loopback Redis {version}, "
        f"Python {platform.python_version()}, redis-py {redis.__version__}; {sizes}.\n\n"
        f"{table}\n\n"
        "Targets (issue #7): hit <= 1.15 x (fleche memory hit + 2 raw GETs of the same bytes); "
        "miss <= 1.15 x (fleche memory miss + one raw SET per stored item).  The floor that "
        "counts is raw redis-py *in the rotation*, timed call by call among the caches as "
        "they are; the same commands in a loop of their own (warm CPU caches, nothing in "
        "between) are shown for reference.\n\n"
        + "\n".join(verdicts)
        + f"\n\nMemory in Redis per memoized call ({memory['calls']:,.0f} calls, MEMORY USAGE):\n\n{mem_table}\n\n"
        f"Index and data together take {overhead:+.0%} over the same bytes stored as plain strings.\n"
    )


def _plot(
    by_size: dict[int, list[Contender]], floors: dict[int, dict[str, float]], path: Path
) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[bench]')", file=sys.stderr)
        return False
    sizes = sorted(by_size)
    payload = [floors[s]["bytes"] for s in sizes]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, phase in zip(axes, ("miss", "hit"), strict=True):
        for i, label in enumerate(e.label for e in by_size[sizes[0]]):
            ys = [statistics.median(getattr(by_size[s][i], phase)) * 1e6 for s in sizes]
            ax.plot(payload, ys, marker="o", label=label)
        key = "sets" if phase == "miss" else "gets"
        ax.plot(payload, [floors[s][key] * 1e6 for s in sizes], "k--", label="raw redis-py (floor)")
        ax.set(xscale="log", yscale="log", xlabel="bytes stored per call", title=f"{phase} (p50)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("microseconds")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot written to {path}", file=sys.stderr)
    return True


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1000, help="memoized calls per cache")
    parser.add_argument(
        "--sweep",
        type=int,
        nargs="*",
        default=[10, 1_000, 10_000, 100_000],
        help="array sizes for the plot",
    )
    parser.add_argument("--memory-calls", type=int, default=2000)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BENCH_POSTGRES_URL"),
        help="SQLAlchemy URL of a PostgreSQL database for the Sql row (default: $BENCH_POSTGRES_URL)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; only checks that it runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "cache.md")
    parser.add_argument("--plot", type=Path, default=RESULTS / "cache.png")
    args = parser.parse_args(argv)
    if args.smoke:
        args.reps, args.memory_calls = 5, 20
        args.sweep = [10]  # one extra size, so the plot code runs too
        args.plot = Path(tempfile.mkdtemp(prefix="bench-cache-")) / "cache.png"
    report = run(args)
    print(report)
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Memoized calls: fleche-redis and the alternatives\n\n" + report)
        print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
