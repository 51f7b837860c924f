"""Running the fault tests' workers: two processes memoizing while the test breaks things."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from fleche_redis import CallRedis, ValueRedis

from . import faultworkers


@contextmanager
def workload(
    url: str, namespace: str, tmp_path: Path, *, workers: int = 2, **options
) -> Iterator[list[Future]]:
    """Workers memoizing against *url* for the duration of the block (and a second after it)."""
    stop = tmp_path / "stop"
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        runs = [
            pool.submit(faultworkers.memoize, url, namespace, str(stop), seed, options)
            for seed in range(workers)
        ]
        _started(url, namespace)
        try:
            yield runs
        finally:
            time.sleep(1.0)  # calls after the fault, on the new topology
            stop.touch()
        for run in runs:
            run.result(timeout=120)


def _started(url: str, namespace: str, timeout: float = 60.0) -> None:
    """Wait until the workers have stored some results (spawning takes a while)."""
    calls = CallRedis(url=url, namespace=namespace)
    deadline = time.monotonic() + timeout
    while calls.count() < 20:
        assert time.monotonic() < deadline, "the workers stored nothing"
        time.sleep(0.1)
    calls.close()


def check(runs: list[Future], url: str, namespace: str) -> dict:
    """Every worker made calls, met no exception and no wrong result; both stores verify clean."""
    results = [run.result() for run in runs]
    for result in results:
        assert result["errors"] == [], result["errors"]
        assert result["wrong"] == [], result["wrong"]
        assert result["calls"] > 0
    for storage in (
        ValueRedis(url=url, namespace=namespace),
        CallRedis(url=url, namespace=namespace),
    ):
        report = storage.verify()
        assert report.ok, report.to_dict()
    return {
        "calls": sum(r["calls"] for r in results),
        "retries": sum(r["retries"] for r in results),
    }
