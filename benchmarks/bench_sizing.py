"""What a deployment of N memoized calls costs: Redis memory per call, index shard sizes, maintenance times.

For each store size the same memoized calls (``f(i, seed)``: two argument
values, one result of *--floats* floats, one call record) are written through
the storages' own scripts, pipelined, into a private redis-server; then:

- Redis memory per call: ``used_memory`` grown by the fill, split by key kind
  (``MEMORY USAGE`` of every data key of one shard, index structures of all);
- the largest index shard (members) and what it takes in memory;
- ``expand`` of a 10-character prefix, a query by function name, ``verify``
  and a streaming ``gc`` (nothing to evict: a full pass over the store).

The sizing page (``docs/sizing.md``) extrapolates from these figures.

    python benchmarks/bench_sizing.py                   # 1k, 100k, 1M calls (a few minutes)
    python benchmarks/bench_sizing.py --sizes 1000 20000
    python benchmarks/bench_sizing.py --smoke           # tiny, only checks that it runs

Writes a Markdown table to benchmarks/results/sizing.md (not with --smoke).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis
from fleche.call import DigestedCall, QueryCall
from fleche.digest import digest

from fleche_redis import CallRedis, ValueRedis
from fleche_redis.admin import maintenance
from fleche_redis.storage.keys import SHARDS
from fleche_redis.testing import RedisServer

FUNCTIONS = 100
PIPELINE = 1000
SAMPLED_SHARDS = 16


def _calls(n: int, floats: int):
    for i in range(n):
        result = [float(i + k) for k in range(floats)]
        arguments = {"i": i, "seed": i % 7}
        yield (
            arguments,
            result,
            DigestedCall(
                name=f"pkg.func{i % FUNCTIONS}",
                arguments={k: digest(v) for k, v in arguments.items()},
                result=digest(result),
                metadata={"Runtime": {"seconds": i * 1e-3}},
                module="pkg",
                version=1,
            ),
        )


def fill(values: ValueRedis, calls: CallRedis, n: int, floats: int) -> float:
    """Write *n* memoized calls through the storages' own scripts; returns the seconds it took."""
    client = calls.redis()
    values.save(0)  # loads the scripts on the server
    calls.save(DigestedCall(name="warmup", arguments={}))
    calls.evict(DigestedCall(name="warmup", arguments={}).to_lookup_key())
    values.evict(digest(0))
    start = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    queued = 0
    for arguments, result, record in _calls(n, floats):
        for value in (*arguments.values(), result):
            values._write(pipe, digest(value), values.codec.encode(value), value)
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
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.memory_usage(k, samples=0)
    return sum(size or 0 for size in pipe.execute())


def _timed(op, reps: int) -> float:
    op()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        op()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def measure(url: str, n: int, floats: int, reps: int) -> dict[str, float]:
    ns = f"size{n}"
    values, calls = ValueRedis(url=url, namespace=ns), CallRedis(url=url, namespace=ns)
    client = redis.Redis.from_url(url)
    client.execute_command("MEMORY", "PURGE")
    before = client.info("memory")["used_memory"]
    fill_seconds = fill(values, calls, n, floats)
    after = client.info("memory")["used_memory"]
    # Sampled shards of each keyspace, every key of them: data keys by kind.
    sampled = SHARDS[:: len(SHARDS) // SAMPLED_SHARDS]
    value_keys = [
        values.layout.data(m.decode())
        for s in sampled
        for m in client.zrange(values.layout.index(s), 0, -1)
    ]
    call_keys = [
        calls.layout.data(m.decode())
        for s in sampled
        for m in client.zrange(calls.layout.index(s), 0, -1)
    ]
    structures: list[str] = []
    for layout in (values.layout, calls.layout):
        structures += [layout.index(s) for s in SHARDS] + [layout.terms(s) for s in SHARDS]
        structures += [layout.references(s) for s in SHARDS]
    shard_members = max(client.zcard(calls.layout.index(s)) for s in SHARDS)
    largest = max(
        (values.layout.index(s) for s in SHARDS), key=lambda k: client.memory_usage(k) or 0
    )
    keys = list(calls.list())
    rng_keys = keys[:: max(1, len(keys) // 200)]
    it = iter(rng_keys * (reps + 2))
    row = {
        "n": n,
        "fill_s": fill_seconds,
        "per_call": (after - before) / n,
        # Scaled up from the sampled shards: digests spread evenly over them all.
        "value_data_per_call": _usage(client, value_keys) * len(SHARDS) / len(sampled) / n,
        "record_data_per_call": _usage(client, call_keys) * len(SHARDS) / len(sampled) / n,
        "index_per_call": _usage(client, structures) / n,
        "shard_members": shard_members,
        "shard_bytes": client.memory_usage(largest) or 0,
        "expand_s": _timed(lambda: calls.expand(next(it)[:10]), reps),
        "query_s": _timed(lambda: sum(1 for _ in calls.query(QueryCall(name="pkg.func7"))), 3),
    }
    start = time.perf_counter()
    report = calls.verify()
    row["verify_s"] = time.perf_counter() - start
    row["verify_ok"] = float(report.ok)
    start = time.perf_counter()
    evicted = maintenance.gc(_Pair(values, calls))
    row["gc_s"] = time.perf_counter() - start
    row["gc_evicted"] = evicted
    client.flushdb()
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


def table(rows: list[dict[str, float]], floats: int, version: str) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')}, loopback Redis {version}, Python "
        f"{platform.python_version()}; each call: 2 small argument values, a result of "
        f"{floats} floats, one record.  All figures measured.",
        "",
        "| calls | Redis memory per call | value data | record data | index structures | "
        "largest index shard (members) | its memory | expand (10 chars) | query by name "
        "(1% of records) | verify | gc (full pass) | fill |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['per_call']:,.0f} B | {r['value_data_per_call']:,.0f} B | "
            f"{r['record_data_per_call']:,.0f} B | {r['index_per_call']:,.0f} B | "
            f"{r['shard_members']:,} | {r['shard_bytes'] / 1024:,.0f} KiB | {_human(r['expand_s'])} | "
            f"{_human(r['query_s'])} | {_human(r['verify_s'])} | {_human(r['gc_s'])} | "
            f"{_human(r['fill_s'])} |"
        )
    return "\n".join(lines)


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
        version = server.client().info("server")["redis_version"]
        for n in args.sizes:
            rows.append(measure(server.url, n, args.floats, args.reps))
            print(f"measured {n:,} calls", file=sys.stderr, flush=True)
    md = table(rows, args.floats, version)
    print(md)
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Sizing: what N memoized calls cost\n\n" + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
