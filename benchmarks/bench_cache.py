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
stores (argument, result, call record), timed in a loop of its own.  The
caches take turns call by call in a fresh random order, so a change in the
machine's load hits them alike.  Each cache is timed three ways: a miss, a
first hit (this process's near caches emptied off the clock: the result was
computed elsewhere) and a repeated hit.  Reported: median latencies, Redis
round trips per miss and per first hit, memory per memoized call in Redis
(``MEMORY USAGE``), and issue #14's targets:

    first hit    <= 1.15 x (fleche memory hit + 1 raw GET + unpickle of the result's bytes)
    repeated hit <= 1.5  x fleche memory hit
    plain Cache miss <= 1.15 x (fleche memory miss + 1 raw SET per stored item)
    1.6 MB results: repeated hit <= 0.5 x first hit

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
LARGE = 200_000  # 1.6 MB results: the near cache's large-payload target
TRIP_CALLS = 5  # memoized calls whose Redis round trips are counted
OWN_WRITE_SETTLE = 0.01  # seconds after a miss, off the clock (see Contender.time)


@fleche.fleche
def work(x: np.ndarray) -> np.ndarray:
    return x * 2.0


PHASES = ("miss", "hit", "again")
"""A miss, a first hit (near caches emptied off the clock), a repeated hit."""


@dataclass
class Contender:
    label: str
    cache: Any
    redis: bool = False
    times: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    trips: dict[str, float] = field(default_factory=dict)

    def time(self, phase: str, x: np.ndarray) -> float:
        if phase == "hit":
            forget_near(self.cache)  # as if another process had computed it
        elapsed = _timed(self.cache, x)
        if phase == "miss":
            # Off the clock: the near cache's listener thread takes the
            # invalidation of the record this process just wrote (a read
            # racing it is not kept).  A result computed by another process,
            # which is what the first hit stands for, has no such race.
            time.sleep(OWN_WRITE_SETTLE)
        return elapsed

    def p50(self, phase: str) -> float:
        return statistics.median(self.times[phase])


def forget_near(cache: Any) -> None:
    """Empty the process-local near caches of *cache*'s storages (none: nothing to do)."""
    for storage in (cache.values, cache.calls):
        near = getattr(storage, "near", None)
        if near is not None:
            near.clear()


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
            "fleche-redis, RedisCache(near_cache_bytes=0)",
            RedisCache(
                values=ValueRedis(url=url, namespace=ns + "d", near_cache_bytes=0),
                calls=CallRedis(url=url, namespace=ns + "d", near_cache_bytes=0),
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
    """A miss, a first hit and a repeated hit of each of *reps* fresh arrays, the caches taking turns in random order.

    The three calls of one array follow each other (a first hit empties the
    near caches, so a repeated hit must come before the next array's).
    """
    rng = random.Random(seed)
    arrays = [np.random.default_rng(seed + i).random(floats) for i in range(reps + 20)]
    for e in entries:  # warm up: imports, connections, scripts loaded on the server
        for x in arrays[reps:]:
            for phase in PHASES:
                e.time(phase, x)
    for x in arrays[:reps]:
        for phase in PHASES:
            for e in rng.sample(entries, len(entries)):
                e.times[phase].append(e.time(phase, x))
    # Round trips apart from the timing: counting patches redis-py's send path.
    extra = [np.random.default_rng(seed - 1 - i).random(floats) for i in range(TRIP_CALLS)]
    for e in entries:
        if e.redis:
            counted = {phase: 0 for phase in PHASES}
            for x in extra:
                for phase in PHASES:
                    if phase == "hit":
                        forget_near(e.cache)  # no request: local only
                    with RoundTrips() as trips:
                        _timed(e.cache, x)
                    counted[phase] += trips.count
                    if phase == "miss":
                        time.sleep(OWN_WRITE_SETTLE)
            e.trips = {phase: n / TRIP_CALLS for phase, n in counted.items()}


def floor(url: str, cache: Any, floats: int, reps: int, seed: int) -> dict[str, float]:
    """Raw redis-py on the bytes fleche-redis stored for one memoized call, in a loop of its own."""
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
    sets, gets, get_loaded = [], [], []
    for _ in range(reps):
        start = time.perf_counter()
        for name, data in zip(names, items, strict=True):
            client.set(name, data)
        sets.append(time.perf_counter() - start)
        start = time.perf_counter()
        for name in names[1:]:  # a two-request hit: the record, then the result
            client.get(name)
        gets.append(time.perf_counter() - start)
        start = time.perf_counter()
        # The result's bytes, as one GET brings them, decoded by the codec
        # (pickle.loads cannot read a framed entry's out-of-band buffers).
        values.codec.decode(client.get(names[1]))
        get_loaded.append(time.perf_counter() - start)
    client.delete(*names)
    client.close()
    return {
        "set_items": len(items),
        "sets": statistics.median(sets),
        "gets": statistics.median(gets),
        "get_loaded": statistics.median(get_loaded),
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
    report = _report(by_size, floors, memory, version, args)
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
    by_size: dict[int, list[Contender]],
    floors: dict[int, dict[str, float]],
    memory: dict[str, float],
    version: str,
    args: argparse.Namespace,
) -> str:
    entries, raw = by_size[FLOATS], floors[FLOATS]
    reps = len(entries[0].times["miss"])
    rows = []
    for e in entries:
        trips = " | ".join(f"{e.trips[p]:g}" for p in PHASES) if e.redis else "– | – | –"
        rows.append(
            f"| {e.label} | {_us(e.p50('miss'))} | {_us(e.p50('hit'))} | {_us(e.p50('again'))} | {trips} |"
        )
    n = int(raw["set_items"])
    rows.append(
        f"| raw redis-py, same bytes: {n} SET / 2 GET | {_us(raw['sets'])} | {_us(raw['gets'])} | – | {n} | 2 | – |"
    )
    rows.append(
        f"| raw redis-py, 1 GET + unpickle of the result | – | {_us(raw['get_loaded'])} | – | – | 1 | – |"
    )
    table = "\n".join(
        [
            "| cache | miss (p50) | first hit (p50) | repeated hit (p50) | round trips per miss | per first hit | per repeated hit |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    memory = {**memory}
    fleche_memory = entries[0]
    targets = {
        "first hit": ("hit", 1.15 * (fleche_memory.p50("hit") + raw["get_loaded"])),
        "repeated hit": ("again", 1.5 * fleche_memory.p50("again")),
        "miss": ("miss", 1.15 * (fleche_memory.p50("miss") + raw["sets"])),
    }
    verdicts = [
        "| cache | first hit | target | | repeated hit | target | | miss | target | |",
        "|---|---:|---:|---|---:|---:|---|---:|---:|---|",
    ]
    for e in entries:
        if not e.redis:
            continue
        cells = []
        for phase, target in targets.values():
            got = e.p50(phase)
            cells.append(f"{_us(got)} | {_us(target)} | {'met' if got <= target else 'NOT met'}")
        verdicts.append(f"| {e.label} | " + " | ".join(cells) + " |")
    large = ""
    if LARGE in by_size:
        lines = [
            "| cache | first hit | repeated hit | repeated / first | target <= 0.5 |",
            "|---|---:|---:|---:|---|",
        ]
        for e in by_size[LARGE]:
            if e.redis:
                ratio = e.p50("again") / e.p50("hit")
                lines.append(
                    f"| {e.label} | {_us(e.p50('hit'))} | {_us(e.p50('again'))} | {ratio:.2f} | "
                    f"{'met' if ratio <= 0.5 else 'NOT met'} |"
                )
        large = (
            f"\n\nResults of {LARGE:,} floats ({floors[LARGE]['bytes'] / 2**20:.1f} MiB stored per call), "
            "first against repeated hit:\n\n" + "\n".join(lines)
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
        "A first hit empties this process's near caches off the clock before the call, as "
        "for a result another process computed; a repeated hit does not.  The raw redis-py "
        "floor is timed in a loop of its own (warm CPU caches, nothing in between).\n\n"
        "Targets (issue #14): first hit <= 1.15 x (fleche memory hit + 1 raw GET + unpickle "
        "of the result); repeated hit <= 1.5 x fleche memory hit; miss <= 1.15 x (fleche "
        "memory miss + one raw SET per stored item), the target of the plain Cache.\n\n"
        + "\n".join(verdicts)
        + large
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
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    titles = {"miss": "miss", "hit": "first hit", "again": "repeated hit (near cache)"}
    floor_of = {"miss": "sets", "hit": "get_loaded", "again": "get_loaded"}
    for ax, phase in zip(axes, PHASES, strict=True):
        for i, label in enumerate(e.label for e in by_size[sizes[0]]):
            ys = [by_size[s][i].p50(phase) * 1e6 for s in sizes]
            ax.plot(payload, ys, marker="o", label=label)
        ax.plot(
            payload,
            [floors[s][floor_of[phase]] * 1e6 for s in sizes],
            "k--",
            label="raw redis-py (floor)",
        )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="bytes stored per call",
            title=f"{titles[phase]} (p50)",
        )
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
        default=[10, 1_000, 10_000, LARGE],
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
