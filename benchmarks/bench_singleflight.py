"""Eight processes ask for the same missing result at once: who computes, and how soon do the others have it?

Per round a fresh key; every process calls the memoized function at the same
moment (a barrier).  Reported per approach, over all rounds:

- executions of the function per round (ideal: 1);
- time from the computing process having saved the result to the *last*
  other process returning it (p50, p90);
- wall time of a round.

Approaches, on the same private redis-server:

- fleche-redis ``RedisCache`` (single flight: lease, push wakeup);
- plain fleche ``Cache`` over the same ``ValueRedis``/``CallRedis`` (no coordination);
- dogpile.cache's Redis backend with ``distributed_lock=True`` (``pip install dogpile.cache``);
- the floor: no cache, the first process sleeps as long as the function and
  then one script pushes to the others' ``BLPOP`` lists.

    python benchmarks/bench_singleflight.py            # writes benchmarks/results/singleflight.md
    python benchmarks/bench_singleflight.py --smoke
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import fleche
from fleche.caches import Cache

from fleche_redis import CallRedis, RedisCache, ValueRedis
from fleche_redis.testing import RedisServer

CTX = multiprocessing.get_context("fork")
RESULTS = Path(__file__).parent / "results" / "singleflight.md"
WORKERS = 8
WORK_SECONDS = 0.2


_saved: list[float] = []


@dataclass(frozen=True)
class TimedRedisCache(RedisCache):
    """Notes when the computing worker's commit request has completed: the "save" moment."""

    def _save_leased(self, call, lease):
        key = super()._save_leased(call, lease)
        _saved.append(time.monotonic())
        return key


@fleche.fleche
def expensive(x: int) -> dict:
    time.sleep(WORK_SECONDS)
    return {"x": x, "by": os.getpid()}


def _fleche_worker(cache, inbox, barrier, out) -> None:
    with fleche.cache(cache), fleche.meta():
        for x in iter(inbox.recv, None):
            _saved.clear()
            barrier.wait()
            value = expensive(x)
            returned = time.monotonic()
            out.put((os.getpid(), value["by"], _saved[-1] if _saved else returned))


def _dogpile_worker(url: str, inbox, barrier, out) -> None:
    from dogpile.cache import make_region

    host, port = url.split("//")[1].split("/")[0].split(":")
    region = make_region().configure(
        "dogpile.cache.redis",
        arguments={
            "host": host,
            "port": int(port),
            "db": 0,
            "distributed_lock": True,
            "thread_local_lock": False,  # as dogpile asks for with distributed_lock
            "lock_timeout": 30,
        },
    )

    def create() -> dict:
        time.sleep(WORK_SECONDS)
        return {"by": os.getpid()}

    for x in iter(inbox.recv, None):
        barrier.wait()
        value = region.get_or_create(f"bench-singleflight:{x}", create)
        out.put((os.getpid(), value["by"], time.monotonic()))


_PUSH_ALL = "for i = 1, #KEYS do redis.call('RPUSH', KEYS[i], 'done') end return #KEYS"


def _raw_wake_worker(url: str, inbox, barrier, out) -> None:
    """The floor: no cache at all; the first process "computes" and one script wakes the rest."""
    import redis

    client = redis.Redis.from_url(url)
    for x in iter(inbox.recv, None):
        ticket = client.incr(f"bench-raw:{x}:ticket")
        barrier.wait()
        if ticket == 1:
            time.sleep(WORK_SECONDS)
            wake = [f"bench-raw:{x}:wake:{i}" for i in range(2, WORKERS + 1)]
            client.eval(_PUSH_ALL, len(wake), *wake)
            out.put((os.getpid(), os.getpid(), time.monotonic()))
        else:
            client.blpop([f"bench-raw:{x}:wake:{ticket}"], timeout=30)
            out.put((os.getpid(), -1, time.monotonic()))


def measure(target, setup: tuple, rounds: int) -> list[tuple[int, float, float]]:
    """Per round: (executions, save -> last waiter seconds, round wall seconds).

    The worker processes live for all rounds, as workers do: a process forked
    for every round would pay copy-on-write page faults on its first decode
    and measure the fork, not the hand-over.
    """
    barrier, out = CTX.Barrier(WORKERS), CTX.Queue()
    pipes = [CTX.Pipe(duplex=False) for _ in range(WORKERS)]
    procs = [CTX.Process(target=target, args=(*setup, recv, barrier, out)) for recv, _ in pipes]
    for p in procs:
        p.start()
    results = []
    try:
        for i in range(rounds + 1):  # round 0 warms the workers up
            start = time.monotonic()
            for _, send in pipes:
                send.send(1000 + i)
            reports = [out.get(timeout=120) for _ in procs]
            if i:
                results.append(_summary(reports, start))
    finally:
        for _, send in pipes:
            send.send(None)
        for p in procs:
            p.join(30)
    return results


def _summary(reports: list[tuple[int, int, float]], start: float) -> tuple[int, float, float]:
    executors = {by for _, by, _ in reports if by != -1}
    # The computing process reports when its save completed (fleche-redis) or
    # when it returned (dogpile: a little after its save); the others when
    # they returned.
    saved = min(t for pid, by, t in reports if pid == by)
    waiters = [t for pid, by, t in reports if pid != by]
    last = max(waiters) if waiters else saved
    return len(executors), last - saved, max(t for *_, t in reports) - start


def run(rounds: int) -> str:
    rows = []
    with RedisServer.start() as server:
        url = server.url
        sf = TimedRedisCache(
            ValueRedis(url=url, namespace="sf"), CallRedis(url=url, namespace="sf")
        )
        plain = Cache(ValueRedis(url=url, namespace="plain"), CallRedis(url=url, namespace="plain"))
        approaches: dict[str, tuple] = {
            "fleche-redis RedisCache (single flight)": (_fleche_worker, (sf,)),
            "plain fleche Cache on the same Redis storages": (_fleche_worker, (plain,)),
            "raw redis-py: one script wakes 7 BLPOPs (the floor)": (_raw_wake_worker, (url,)),
        }
        try:
            import dogpile.cache  # noqa: F401

            approaches["dogpile.cache Redis, distributed_lock=True"] = (_dogpile_worker, (url,))
        except ImportError:
            rows.append("| dogpile.cache Redis, distributed_lock=True | not installed | | | |")
        for label, (target, setup) in approaches.items():
            results = measure(target, setup, rounds)
            executions = [r[0] for r in results]
            handoff = sorted(r[1] for r in results)
            wall = statistics.median(r[2] for r in results)
            p90 = handoff[min(len(handoff) - 1, int(0.9 * len(handoff)))]
            rows.append(
                f"| {label} | {statistics.mean(executions):.1f} | {statistics.median(handoff) * 1000:.2f} ms "
                f"| {p90 * 1000:.2f} ms | {wall * 1000:.0f} ms |"
            )
            print(rows[-1], flush=True)
    header = (
        f"{WORKERS} long-lived worker processes, function takes {WORK_SECONDS * 1000:.0f} ms, "
        f"{rounds} rounds (a fresh key each), loopback Redis 7.0.15, 2 cores; for plain fleche every "
        "process computes, so the hand-over column is 0; the floor's computing process reports after "
        "its push returns, so its figure can dip below zero.\n\n"
        "| approach | executions per round | save -> last waiter (p50) | p90 | round wall time (p50) |\n"
        "|---|---|---|---|---|\n"
    )
    return header + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="two rounds; only checks that it runs")
    args = parser.parse_args(argv)
    table = run(2 if args.smoke else args.rounds)
    print()
    print(table)
    if not args.smoke:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("# Single flight: eight processes, one missing key\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
