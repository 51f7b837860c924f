"""Distributed locks side by side: fleche-redis ``Redlock`` and the Redis lock peers.

Every lock runs against the same private redis-server(s) started here, in one
run, so the figures compare as ratios on whatever machine runs it:

* uncontended: one process, acquire + release in a loop (p50 per pair);
* handoff: a waiter process blocks in ``acquire`` while the holder holds;
  time from the holder calling ``release`` to the waiter holding (p50, p90);
* throughput: 4 processes acquire and release with zero hold time for a
  few seconds; total acquisitions per second and fairness (fewest / most
  acquisitions of one process).

    python benchmarks/bench_locks.py            # full run, writes benchmarks/results/locks.md
    python benchmarks/bench_locks.py --smoke    # tiny sizes: checks that it runs (CI)

Peers (``pip install -e '.[bench]'``): redis-py ``Lock``, python-redis-lock,
pottery ``Redlock``; a peer that is not installed is listed as such.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from fleche_redis import CallRedis, PerKeyLockMixin, Redlock, lock_key
from fleche_redis.testing import RedisServer

CTX = multiprocessing.get_context("fork")
RESULTS = Path(__file__).parent / "results" / "locks.md"

TARGETS = """\
Targets (issue #3): handoff p50 <= 1 ms; uncontended <= redis-py's;
4-process throughput >= 1.2 x redis-py's; fairness >= 0.5.
Issue #14: the same throughput and fairness through PerKeyLockMixin's
``_operation_context`` on a storage (the path fleche's operations take)."""


@dataclass(frozen=True)
class Contender:
    label: str
    masters: int  # how many servers it uses
    factory: Callable[[str, list[str]], object]  # (lock name, urls) -> lock with acquire/release
    needs: str | None = None  # module that must be importable


def _ours(name: str, urls: list[str]) -> object:
    return Redlock(lock_key(name, "bench"), urls, ttl=10)


@dataclass(frozen=True)
class _LockedCallRedis(PerKeyLockMixin, CallRedis): ...


class _MixinLock:
    """``PerKeyLockMixin._operation_context`` on a call storage: the path fleche's operations take."""

    def __init__(self, name: str, urls: list[str]) -> None:
        self._storage = _LockedCallRedis(url=urls[0], namespace="bench")
        self._key = hashlib.sha256(name.encode()).hexdigest()
        self._context: Any = None

    def acquire(self) -> None:
        self._context = self._storage._operation_context(self._key)
        self._context.__enter__()

    def release(self) -> None:
        context, self._context = self._context, None
        context.__exit__(None, None, None)


def _redis_py(name: str, urls: list[str]) -> object:
    return redis.Redis.from_url(urls[0]).lock(f"bench:{name}", timeout=10)


def _python_redis_lock(name: str, urls: list[str]) -> object:
    import redis_lock

    return redis_lock.Lock(redis.Redis.from_url(urls[0]), f"bench:{name}", expire=10)


class _Pottery:
    def __init__(self, name: str, urls: list[str]) -> None:
        import pottery

        self._lock = pottery.Redlock(
            key=f"bench:{name}",
            masters={redis.Redis.from_url(u) for u in urls},
            auto_release_time=10,
        )

    def acquire(self) -> None:
        self._lock.acquire()

    def release(self) -> None:
        self._lock.release()


CONTENDERS = [
    Contender("fleche-redis Redlock, 1 master", 1, _ours),
    Contender("fleche-redis Redlock, 3 masters", 3, _ours),
    Contender("fleche-redis PerKeyLockMixin, 1 master", 1, _MixinLock),
    Contender("redis-py Lock", 1, _redis_py),
    Contender("python-redis-lock", 1, _python_redis_lock, needs="redis_lock"),
    Contender("pottery Redlock, 1 master", 1, _Pottery, needs="pottery"),
    Contender("pottery Redlock, 3 masters", 3, _Pottery, needs="pottery"),
]


def _available(c: Contender) -> bool:
    if c.needs is None:
        return True
    try:
        __import__(c.needs)
    except ImportError:
        return False
    return True


# -- measurements -----------------------------------------------------------------------


def uncontended(contenders: list[Contender], urls: list[str], n: int) -> dict[str, list[float]]:
    """Seconds of *n* acquire + release pairs per lock, one sample each.

    The locks take turns pair by pair, in a fresh random order each round
    (a fixed order would give every lock the same predecessor, and some
    peers leave threads busy after their turn), so a change in the
    machine's load hits them all alike.
    """
    rng = random.Random(0)
    locks = [(c.label, c.factory("uncontended", urls[: c.masters])) for c in contenders]
    for _, lock in locks:
        for _ in range(max(5, n // 20)):
            lock.acquire()
            lock.release()
    samples: dict[str, list[float]] = {label: [] for label, _ in locks}
    for _ in range(n):
        for label, lock in rng.sample(locks, len(locks)):
            t0 = time.perf_counter()
            lock.acquire()
            lock.release()
            samples[label].append(time.perf_counter() - t0)
    return samples


def _handoff_waiter(c: Contender, urls: list[str], conn) -> None:
    lock = c.factory("handoff", urls)
    while conn.recv() is not None:
        lock.acquire()
        held = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
        lock.release()
        conn.send(held)


def handoff(c: Contender, urls: list[str], rounds: int) -> list[float]:
    """Seconds from the holder's ``release`` call to the blocked waiter holding."""
    holder = c.factory("handoff", urls)
    ours, theirs = CTX.Pipe()
    waiter = CTX.Process(target=_handoff_waiter, args=(c, urls, theirs))
    waiter.start()
    samples = []
    try:
        for _ in range(rounds):
            holder.acquire()
            ours.send("go")
            time.sleep(0.03)  # the waiter is blocked in acquire by now
            released = time.perf_counter()
            holder.release()
            samples.append(ours.recv() - released)
    finally:
        ours.send(None)
        waiter.join(30)
    return samples


def _contend(c: Contender, urls: list[str], seconds: float, barrier, results) -> None:
    lock = c.factory("throughput", urls)
    barrier.wait()
    count = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        lock.acquire()
        lock.release()
        count += 1
    results.put(count)


def throughput(
    c: Contender, urls: list[str], seconds: float, procs: int = 4
) -> tuple[float, float]:
    """(acquisitions per second, fewest / most acquisitions of one process)."""
    barrier, results = CTX.Barrier(procs), CTX.Queue()
    workers = [
        CTX.Process(target=_contend, args=(c, urls, seconds, barrier, results))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    counts = [results.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join(30)
    return sum(counts) / seconds, min(counts) / max(counts) if max(counts) else 0.0


# -- report ------------------------------------------------------------------------------


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} us"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms"


def run(smoke: bool, passes: int = 3) -> str:
    n, rounds, seconds = (20, 3, 0.3) if smoke else (2000, 60, 3.0)
    passes = 1 if smoke else passes
    servers = [RedisServer.start() for _ in range(3)]
    try:
        urls = [s.url for s in servers]
        version = servers[0].client().info("server")["redis_version"]
        present = [c for c in CONTENDERS if _available(c)]
        lat = {c.label: [] for c in present}
        hand = {c.label: [] for c in present}
        tput = {c.label: [] for c in present}
        # Each measurement runs in passes that alternate between the locks, so
        # a change in the machine's load during the run hits every row alike.
        for label, samples in uncontended(present, urls, n).items():
            lat[label] += samples
        for _ in range(passes):
            for c in present:
                hand[c.label] += handoff(c, urls[: c.masters], rounds // passes)
        for _ in range(passes):
            for c in present:
                tput[c.label].append(throughput(c, urls[: c.masters], seconds / passes))
    finally:
        for s in servers:
            s.close()
    rows, figures = [], {}
    for c in CONTENDERS:
        if c not in present:
            rows.append(f"| {c.label} | not installed | | | | |")
            continue
        h = hand[c.label]
        f = (
            statistics.median(lat[c.label]),
            statistics.median(h),
            statistics.quantiles(h, n=10)[-1] if len(h) > 1 else h[0],
            statistics.mean(t for t, _ in tput[c.label]),
            statistics.median(f for _, f in tput[c.label]),
        )
        figures[c.label] = f
        rows.append(
            f"| {c.label} | {_us(f[0])} | {_ms(f[1])} | {_ms(f[2])} | {f[3]:,.0f} acq/s | {f[4]:.2f} |"
        )
    table = "\n".join(
        [
            "| lock | uncontended acquire+release (p50) | handoff p50 | handoff p90 "
            "| 4 procs, zero hold | fairness (min/max) |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    sizes = (
        "SMOKE sizes, not figures"
        if smoke
        else (
            f"{n} uncontended pairs (locks interleaved in random order), {rounds} handoffs, {seconds:.0f} s of contention per lock, "
            f"in {passes} alternating passes"
        )
    )
    note = (
        f"Measured {time.strftime('%Y-%m-%d')} on {_cpus()} core(s), loopback Redis {version}, "
        f"Python {platform.python_version()}; {sizes}."
    )
    raw = "\n".join(
        f"- {c.label}: "
        + ", ".join(f"{t:,.0f} acq/s ({f:.2f})" for t, f in tput[c.label])
        + (f"; ratio to redis-py per pass: {_ratios(tput[c.label], tput['redis-py Lock'])}"
           if c.masters == 1 and "redis-py Lock" in tput else "")
        for c in present
    )  # fmt: skip
    return (
        f"{note}\n\n{table}\n\n{TARGETS}\n\n{_verdicts(figures)}\n\n"
        f"Raw 4-process throughput per pass (fairness), passes in run order:\n\n{raw}\n"
    )


def _ratios(ours: list[tuple[float, float]], peer: list[tuple[float, float]]) -> str:
    return ", ".join(f"{a / b:.2f}" for (a, _), (b, _) in zip(ours, peer, strict=True))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _verdicts(f: dict[str, tuple[float, float, float, float, float]]) -> str:
    ours, peer = f.get("fleche-redis Redlock, 1 master"), f.get("redis-py Lock")
    if ours is None or peer is None:
        return ""
    lines = [
        ("handoff p50 <= 1 ms", ours[1] <= 1e-3, _ms(ours[1])),
        ("uncontended <= redis-py", ours[0] <= peer[0], f"{_us(ours[0])} vs {_us(peer[0])}"),
        ("throughput >= 1.2 x redis-py", ours[3] >= 1.2 * peer[3], f"{ours[3] / peer[3]:.2f} x"),
        ("fairness >= 0.5", ours[4] >= 0.5, f"{ours[4]:.2f}"),
    ]
    mixin = f.get("fleche-redis PerKeyLockMixin, 1 master")
    if mixin is not None:
        lines += [
            (
                "PerKeyLockMixin throughput >= 1.2 x redis-py",
                mixin[3] >= 1.2 * peer[3],
                f"{mixin[3] / peer[3]:.2f} x",
            ),
            ("PerKeyLockMixin fairness >= 0.5", mixin[4] >= 0.5, f"{mixin[4]:.2f}"),
        ]
    return "\n".join(
        f"- {name}: {'met' if ok else 'NOT met'} ({value})" for name, ok, value in lines
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; only checks that it runs")
    parser.add_argument(
        "--passes",
        type=int,
        default=3,
        help="alternating passes (3 s of contention per lock in all)",
    )
    args = parser.parse_args(argv)
    report = run(args.smoke, args.passes)
    print(report)
    if not args.smoke:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("# Distributed locks benchmark\n\n" + report)
        print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
