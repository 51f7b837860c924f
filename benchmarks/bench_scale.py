"""Prefix lookups and queries as the store grows: fleche-redis vs listing the store vs fleche's Sql.

For each store size the same call records go into a CallRedis (private
redis-server, loopback) and into fleche's ``Sql`` (sqlite file); then:

- ``expand`` of a 10-character prefix, ``contains``, ``shrink`` of one key and of 100 keys,
- ``query(name=...)`` over records of 100 functions (records read, not just time),

each timed per operation with its Redis round trips counted.  "listing" is
fleche's default prefix handling (``KeyManagement``: sort ``list()``), run
on the same CallRedis, i.e. what a backend without an index pays.

    python benchmarks/bench_scale.py                   # 1k, 100k, 1M records (takes a while)
    python benchmarks/bench_scale.py --sizes 1000 20000
    python benchmarks/bench_scale.py --smoke           # tiny, only checks that it runs

Writes a Markdown table to benchmarks/results/scale.md (not with --smoke).
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fleche.call import DigestedCall, QueryCall
from fleche.digest import Digest, digest
from fleche.storage import Sql
from fleche.storage.base import KeyManagement

from fleche_redis import CallRedis
from fleche_redis.storage.calls import IndexedCallsMixin
from fleche_redis.testing import RedisServer
from fleche_redis.testing.roundtrips import RoundTrips

FUNCTIONS = 100


def records(n: int):
    for i in range(n):
        yield DigestedCall(
            name=f"pkg.func{i % FUNCTIONS}",
            arguments={"i": digest(i), "seed": digest(i % 7)},
            result=digest(("result", i)),
            metadata={"Runtime": {"seconds": i * 1e-3}},
            module="pkg",
            version=1,
        )


def fill_redis(storage: CallRedis, n: int) -> list[Digest]:
    """Write through the storage's own script, pipelined 1000 at a time."""
    client, keys, batch = storage.redis(), [], []

    def flush():
        pipe = client.pipeline(transaction=False)
        for key, record in batch:
            storage._write(pipe, key, storage.codec.encode(record), record)
        pipe.execute()
        batch.clear()

    storage.save(DigestedCall(name="warmup", arguments={}))  # loads the script on the server
    for record in records(n):
        key = record.to_lookup_key()
        keys.append(key)
        batch.append((key, record))
        if len(batch) == 1000:
            flush()
    if batch:
        flush()
    return keys


def fill_sql(store: Sql, n: int) -> None:
    """Bulk insert into Sql's own tables (its save() would take ~1 ms a record)."""
    import json

    from fleche.storage.sql import ArgumentModel, CallModel, MetaModel

    with store.engine.begin() as conn:
        calls, args, metas = [], [], []
        for record in records(n):
            key = str(record.to_lookup_key())
            calls.append(
                dict(
                    key=key,
                    name=record.name,
                    module=record.module,
                    version=json.dumps(record.version),
                    code_digest=None,
                    result=str(record.result),
                )
            )
            args += [
                dict(call_key=key, position=p, name=k, value=str(v))
                for p, (k, v) in enumerate(record.arguments.items())
            ]
            metas += [dict(call_key=key, name=m, data=d) for m, d in record.metadata.items()]
            if len(calls) == 5000:
                conn.execute(CallModel.__table__.insert(), calls)
                conn.execute(ArgumentModel.__table__.insert(), args)
                conn.execute(MetaModel.__table__.insert(), metas)
                calls, args, metas = [], [], []
        if calls:
            conn.execute(CallModel.__table__.insert(), calls)
            conn.execute(ArgumentModel.__table__.insert(), args)
            conn.execute(MetaModel.__table__.insert(), metas)


def timed(op, reps: int) -> tuple[float, float]:
    """(median microseconds, Redis round trips) per call of op()."""
    op()
    samples = []
    with RoundTrips() as trips:
        for _ in range(reps):
            t = time.perf_counter()
            op()
            samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6, trips.count / reps


def fmt_us(us: float) -> str:
    return f"{us / 1000:.1f} ms" if us >= 1000 else f"{us:.0f} us"


def run(sizes: list[int], reps: int, list_limit: int) -> list[dict]:
    rows: list[dict] = []
    with RedisServer.start() as server, tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            rows += bench_size(server.url, Path(tmp), n, reps, list_limit)
    return rows


def bench_size(url: str, tmp: Path, n: int, reps: int, list_limit: int) -> list[dict]:
    rows: list[dict] = []
    storage = CallRedis(url=url, namespace=f"bench{n}")
    keys = fill_redis(storage, n)
    sql = Sql(str(tmp / f"calls{n}.db"))
    fill_sql(sql, n)
    rng = random.Random(n)
    sample = [rng.choice(keys) for _ in range(reps)]
    it = itertools.cycle(sample)

    def row(op, redis_op, sql_op=None, listing_op=None, r=reps):
        us, trips = timed(redis_op, r)
        out = {"n": n, "op": op, "redis_us": us, "trips": trips}
        if sql_op:
            out["sql_us"] = timed(sql_op, max(3, r // 10))[0]
        if listing_op and n <= list_limit:
            out["listing_us"] = timed(listing_op, 3)[0]
        rows.append(out)
        print(
            f"n={n:>9,} {op:<24} redis {fmt_us(us):>9} ({trips:g} trips)"
            + (f"  sql {fmt_us(out['sql_us']):>9}" if "sql_us" in out else "")
            + (f"  listing {fmt_us(out['listing_us']):>9}" if "listing_us" in out else ""),
            flush=True,
        )

    row(
        "expand (10 chars)",
        lambda: storage.expand(next(it)[:10]),
        lambda: sql.expand(next(it)[:10]),
        lambda: _listing_expand(storage, next(it)[:10]),
    )
    row("contains", lambda: storage.contains(next(it)), lambda: sql.contains(next(it)))
    row(
        "shrink (1 key)",
        lambda: storage.shrink(next(it)),
        lambda: sql.shrink(next(it)),
        lambda: KeyManagement._shrink(storage, next(it)),
    )
    batch = sample[:100]
    row(
        "shrink (100 keys)",
        lambda: storage.shrink(*batch),
        None,
        lambda: KeyManagement._shrink(storage, *batch),
        r=max(3, reps // 10),
    )

    template = QueryCall(name="pkg.func7")
    row(
        "query by name",
        lambda: sum(1 for _ in storage.query(template)),
        lambda: sum(1 for _ in sql.query(template)),
        r=max(3, reps // 20),
    )
    fetched: list[Digest] = []
    original = IndexedCallsMixin._fetch_batch

    def counting(self, keys_, terms):
        fetched.extend(keys_)
        return original(self, keys_, terms)

    IndexedCallsMixin._fetch_batch = counting
    try:
        matched = sum(1 for _ in storage.query(template))
    finally:
        IndexedCallsMixin._fetch_batch = original
    rows[-1]["records_read"], rows[-1]["matched"] = len(fetched), matched
    print(f"           query by name read {len(fetched):,} records of {n:,} ({matched:,} matched)")
    storage.close()
    return rows


def _listing_expand(storage, prefix):
    """fleche's default expand: the two smallest keys of sorted(list()) with the prefix."""
    from fleche.storage.base import _resolve_prefix

    return _resolve_prefix(prefix, KeyManagement._prefix_candidates(storage, prefix))


def table(rows: list[dict]) -> str:
    lines = [
        "| records | operation | fleche-redis | round trips | fleche Sql (sqlite) | listing the store |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        extra = f" ({r['records_read']:,} records read)" if "records_read" in r else ""
        lines.append(
            f"| {r['n']:,} | {r['op']}{extra} | {fmt_us(r['redis_us'])} | {r['trips']:g} | "
            f"{fmt_us(r['sql_us']) if 'sql_us' in r else '–'} | "
            f"{fmt_us(r['listing_us']) if 'listing_us' in r else '–'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument(
        "--list-limit",
        type=int,
        default=100_000,
        help="largest store on which to time listing-the-store lookups",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; only checks that it runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale.md")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.reps = [300], 5
    rows = run(args.sizes, args.reps, args.list_limit)
    md = table(rows)
    print()
    print(md)
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            "# Prefix lookups and queries as the store grows\n\n"
            "2 cores, loopback Redis 7.0.15, one client connection; sqlite file for fleche's Sql. "
            "Median per operation.\n\n" + md + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
