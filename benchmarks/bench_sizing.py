"""What a deployment of N memoized calls costs: Redis memory per call, index shard sizes, maintenance times.

For each store size the same memoized calls (``f(i, seed)``: two argument
values, one result of *--floats* floats, one call record) are written through
the storages' own scripts, pipelined, into a private redis-server; then:

- Redis memory per call: ``used_memory`` grown by the fill, split by key kind
  (``MEMORY USAGE`` of every data key of sampled shards, index structures of all);
- the largest shard of each index (members, memory), and what a ``BGSAVE``
  costs (RDB file size, fork time);
- ``expand`` of a 10-character prefix, a query by function name, ``verify``
  of both storages and a streaming ``gc`` (nothing to evict: a full pass),
  each with its round trips, the Redis main-thread CPU it took and the memory
  it added to Redis at its peak.  A store that fails ``verify`` stops the run.

The sizing page (``docs/sizing.md``) extrapolates from these figures.

    python benchmarks/bench_sizing.py                   # 1k, 100k, 1M calls (about 20 minutes, 5 GiB of RAM)
    python benchmarks/bench_sizing.py --sizes 1000 20000
    python benchmarks/bench_sizing.py --smoke           # tiny, only checks that it runs

Writes a Markdown table to benchmarks/results/sizing.md (not with --smoke).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from fleche.call import DigestedCall, QueryCall
from fleche.digest import Digest, digest

from fleche_redis import CallRedis, ValueRedis
from fleche_redis.admin import maintenance
from fleche_redis.storage.keys import SHARDS
from fleche_redis.testing import RedisServer
from fleche_redis.testing.roundtrips import RoundTrips

FUNCTIONS = 100
PIPELINE = 1000
SAMPLED_SHARDS = 16
USAGE_BATCH = 64
"""Keys per ``MEMORY USAGE`` request: a whole 1M store's index in one outlasts a socket timeout."""
TIMEOUT = 600.0
"""Socket timeout of the benchmark's own clients: one command on a big store may take seconds."""
CPU_RESOLUTION = 0.005
"""Seconds of Redis CPU below which a figure is noise (the sampler's ``INFO`` requests)."""


def _calls(n: int, floats: int) -> Iterator[tuple[list[tuple[Digest, Any]], DigestedCall]]:
    """Each call's stored values with their digests (computed once), and its record."""
    for i in range(n):
        result = [float(i + k) for k in range(floats)]
        arguments = {"i": i, "seed": i % 7}
        digests = {name: digest(v) for name, v in arguments.items()}
        result_digest = digest(result)
        stored = [(digests[name], v) for name, v in arguments.items()]
        yield (
            [*stored, (result_digest, result)],
            DigestedCall(
                name=f"pkg.func{i % FUNCTIONS}",
                arguments=digests,
                result=result_digest,
                metadata={"Runtime": {"seconds": i * 1e-3}},
                module="pkg",
                version=1,
            ),
        )


def fill(values: ValueRedis, calls: CallRedis, n: int, floats: int) -> float:
    """Write *n* memoized calls through the storages' own scripts; returns the seconds it took.

    Each value is digested once (the record names the same digests), and
    ``PIPELINE`` calls go out per request: the client's hashing and packing,
    not Redis, bound how fast a store is filled.
    """
    client = calls.redis()
    values.save(0)  # loads the scripts on the server
    calls.save(DigestedCall(name="warmup", arguments={}))
    calls.evict(DigestedCall(name="warmup", arguments={}).to_lookup_key())
    values.evict(digest(0))
    start = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    queued = 0
    for stored, record in _calls(n, floats):
        for key, value in stored:
            values._write(pipe, key, values.codec.encode(value), value)
        key = record.to_lookup_key()
        calls._write(pipe, key, calls.codec.encode(record), record)
        queued += 1
        if queued == PIPELINE:
            pipe.execute()
            pipe = client.pipeline(transaction=False)
            queued = 0
    pipe.execute()
    return time.perf_counter() - start


def _usage(client: Any, keys: list[str]) -> int:
    """Bytes of *keys*, every element counted (``SAMPLES 0``), a group of keys per request."""
    total = 0
    for start in range(0, len(keys), USAGE_BATCH):
        pipe = client.pipeline(transaction=False)
        for k in keys[start : start + USAGE_BATCH]:
            pipe.memory_usage(k, samples=0)
        total += sum(size or 0 for size in pipe.execute())
    return total


def _timed(op, reps: int) -> float:
    op()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        op()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


@dataclass(frozen=True)
class Observed:
    """One operation as Redis saw it: wall time, requests, main-thread CPU, memory it added at its peak."""

    seconds: float
    round_trips: int
    redis_cpu: float
    peak_bytes: int


def _redis_cpu(client: Any) -> float:
    cpu = client.info("cpu")
    return cpu["used_cpu_user_main_thread"] + cpu["used_cpu_sys_main_thread"]


def observe(url: str, op: Callable[[], Any]) -> tuple[Any, Observed]:
    """Run *op* once; a thread samples ``used_memory`` meanwhile (its ``INFO`` requests not counted).

    Redis runs commands on one thread, so its main-thread CPU time is how
    much of a server an operation takes from everyone else.
    """
    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT)
    base, peak, done = client.info("memory")["used_memory"], [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], client.info("memory")["used_memory"] - base)

    sampler = threading.Thread(target=sample, daemon=True)
    cpu = _redis_cpu(client)
    with RoundTrips() as trips:
        sampler.start()
        start = time.perf_counter()
        result = op()
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    used = _redis_cpu(client) - cpu
    client.close()
    requests = sum(1 for word in trips.commands if word.upper() not in (b"INFO",))
    return result, Observed(seconds, requests, used, peak[0])


def persist(server: RedisServer) -> tuple[int, float, float]:
    """``BGSAVE`` once: (RDB file bytes, fork milliseconds, seconds until the file was written)."""
    client = server.client(socket_timeout=TIMEOUT)
    start = time.perf_counter()
    client.bgsave()
    while client.info("persistence")["rdb_bgsave_in_progress"]:
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    if client.info("persistence")["rdb_last_bgsave_status"] != "ok":
        raise SystemExit("BGSAVE failed; see the server log")
    fork_ms = client.info("stats")["latest_fork_usec"] / 1e3
    rdb = server.directory / "dump.rdb"
    size = rdb.stat().st_size
    rdb.unlink()
    client.close()
    return size, fork_ms, seconds


def _largest(client: Any, keys: list[str]) -> tuple[int, int]:
    """(members, bytes) of the biggest of *keys*, a sorted set per index shard."""
    sizes = [(client.memory_usage(k, samples=0) or 0, k) for k in keys]
    size, key = max(sizes)
    return client.zcard(key), size


def memory(client: Any, values: ValueRedis, calls: CallRedis, n: int) -> dict[str, Any]:
    """Bytes per call by kind of key, and the largest shard of each index."""
    # Sampled shards of each keyspace, every key of them: data keys by kind.
    sampled = SHARDS[:: len(SHARDS) // SAMPLED_SHARDS]
    scale = len(SHARDS) / len(sampled) / n  # digests spread evenly over the shards
    members = {
        layout.keyspace: [
            m.decode() for s in sampled for m in client.zrange(layout.index(s), 0, -1)
        ]
        for layout in (values.layout, calls.layout)
    }
    structures: list[str] = []
    for layout in (values.layout, calls.layout):
        structures += [layout.index(s) for s in SHARDS] + [layout.terms(s) for s in SHARDS]
        structures += [layout.references(s) for s in SHARDS]
    return {
        "value_data_per_call": _usage(client, [values.layout.data(m) for m in members["v"]])
        * scale,
        "record_data_per_call": _usage(client, [calls.layout.data(m) for m in members["c"]])
        * scale,
        "index_per_call": _usage(client, structures) / n,
        "value_shard": _largest(client, [values.layout.index(s) for s in SHARDS]),
        "call_shard": _largest(client, [calls.layout.index(s) for s in SHARDS]),
        "terms_shard": _largest(client, [calls.layout.terms(s) for s in SHARDS]),
        "sample_keys": members["c"][:: max(1, len(members["c"]) // 200)],
    }


def measure(server: RedisServer, n: int, floats: int, reps: int) -> dict[str, Any]:
    url, ns = server.url, f"size{n}"
    values, calls = ValueRedis(url=url, namespace=ns), CallRedis(url=url, namespace=ns)
    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT)
    while client.info("memory")["lazyfree_pending_objects"]:  # the last size, freed
        time.sleep(0.1)
    client.execute_command("MEMORY", "PURGE")
    before = client.info("memory")["used_memory"]
    row: dict[str, Any] = {"n": n}
    _, row["fill"] = observe(url, lambda: fill(values, calls, n, floats))
    row["per_call"] = (client.info("memory")["used_memory"] - before) / n
    row.update(memory(client, values, calls, n))
    row["rdb_bytes"], row["fork_ms"], row["bgsave_s"] = persist(server)
    it = iter(row.pop("sample_keys") * (reps + 2))
    row["expand_s"] = _timed(lambda: calls.expand(next(it)[:10]), reps)
    by_name = QueryCall(name="pkg.func7")
    row["query_s"] = _timed(lambda: sum(1 for _ in calls.query(by_name)), 3)
    _, row["expand"] = observe(url, lambda: calls.expand(next(it)[:10]))
    found, row["query"] = observe(url, lambda: sum(1 for _ in calls.query(by_name)))
    reports = []
    for name, storage in (("verify_records", calls), ("verify_values", values)):
        report, row[name] = observe(url, storage.verify)
        reports.append(report)
    evicted, row["gc"] = observe(url, lambda: maintenance.gc(_Pair(values, calls)))
    if not all(r.ok for r in reports) or evicted or found != len(range(7, n, FUNCTIONS)):
        # Figures of a broken store would size nothing.
        raise SystemExit(f"store of {n:,} calls is not sound: {reports}, gc evicted {evicted}")
    # In Redis's background thread: freeing gigabytes in one command outlasts a socket timeout.
    client.flushdb(asynchronous=True)
    client.close()
    values.close()
    calls.close()
    return row


class _Pair:
    """What ``maintenance.gc`` walks: a cache's two storages."""

    def __init__(self, values: ValueRedis, calls: CallRedis) -> None:
        self.values, self.calls = values, calls


def _human(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.1f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def _shard(members_bytes: tuple[int, int]) -> str:
    members, size = members_bytes
    return f"{members:,} / {size / 1024:,.0f} KiB"


OPERATIONS = {
    "expand": "expand (10 chars)",
    "query": "query by name (1% of records)",
    "verify_records": "verify records",
    "verify_values": "verify values",
    "gc": "gc (full pass)",
    "fill": "fill (whole store)",
}


def _memory_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| calls | Redis memory per call | value data | record data | index structures | "
        "largest value index shard (members / memory) | largest call index shard | largest "
        "query-term shard | RDB file per call | fork for BGSAVE | BGSAVE |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['per_call']:,.0f} B | {r['value_data_per_call']:,.0f} B | "
            f"{r['record_data_per_call']:,.0f} B | {r['index_per_call']:,.0f} B | "
            f"{_shard(r['value_shard'])} | {_shard(r['call_shard'])} | "
            f"{_shard(r['terms_shard'])} | {r['rdb_bytes'] / r['n']:,.0f} B | "
            f"{r['fork_ms']:,.1f} ms | {_human(r['bgsave_s'])} |"
        )
    return lines


def _operations_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| calls | operation | wall time | round trips | Redis main-thread CPU | "
        "Redis memory it added (peak) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        for name, title in OPERATIONS.items():
            o: Observed = r[name]
            # expand and query: the median of many; their single observed run gives the rest.
            wall = r.get(f"{name}_s", o.seconds)
            lines.append(
                f"| {r['n']:,} | {title} | {_human(wall)} | {o.round_trips:,} | "
                f"{_human(o.redis_cpu) if o.redis_cpu >= CPU_RESOLUTION else '-'} | "
                f"{o.peak_bytes / 2**20:,.1f} MiB |"
            )
    return lines


def table(rows: list[dict[str, Any]], floats: int, machine: str) -> str:
    return "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} on {machine}; each call: 2 small argument "
            f"values, a result of {floats} floats, one record.  All figures measured.",
            "",
            *_memory_table(rows),
            "",
            "Whole-store operations on the same stores (expand and query: median wall time of "
            "many; round trips, Redis CPU and memory: one run; fill: pipelined, "
            f"{PIPELINE:,} calls per request).  Redis CPU under {CPU_RESOLUTION * 1e3:.0f} ms is "
            "left out (-): the memory sampler's own requests cost about that much.",
            "",
            *_operations_table(rows),
        ]
    )


def machine(server: RedisServer) -> str:
    """The line that says where the figures come from."""
    client = server.client(socket_timeout=TIMEOUT)
    version = client.info("server")["redis_version"]
    allocator = client.info("memory")["mem_allocator"]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        model = names[0].split(":", 1)[1].strip() if names else model
    return (
        f"{cpus} core(s) ({model}), loopback Redis {version} ({allocator}), "
        f"Python {platform.python_version()}, redis-py {redis.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--floats", type=int, default=10, help="floats per result")
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; only checks that it runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sizing.md")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.reps = [300], 5
    rows = []
    with RedisServer.start() as server:
        where = machine(server)
        for n in args.sizes:
            rows.append(measure(server, n, args.floats, args.reps))
            # A later size may not finish: what is measured is on the terminal already.
            print(table(rows, args.floats, where), file=sys.stderr, flush=True)
    md = table(rows, args.floats, where)
    print(md)
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Sizing: what N memoized calls cost\n\n" + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
