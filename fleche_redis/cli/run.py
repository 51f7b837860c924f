"""The commands that run something: the demo workload and the benchmark suite."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from .connect import DEFAULT_NAMESPACE, storages
from .errors import EXIT_FOUND, EXIT_OK, CliError

__all__ = ["demo_command", "bench_command"]


def demo_command(args: argparse.Namespace) -> int:
    from ..transport.connection import redact_url
    from .demo import run_demo

    url = getattr(args, "url", None) or os.environ.get("REDIS_URL")
    namespace = getattr(args, "namespace", None)
    where: contextlib.AbstractContextManager[tuple[str, str]]
    if url:
        storages(url, namespace or DEFAULT_NAMESPACE)  # a clear error before workers start
        where = contextlib.nullcontext((url, f"{redact_url(url)} (from --url/REDIS_URL)"))
    else:
        where = _embedded()
    with where as (url, description):
        print(f"Redis: {description}")
        first, second = run_demo(
            url,
            workers=args.workers,
            tasks=args.tasks,
            samples=args.samples,
            namespace=namespace,
            keep=args.keep,
        )
    ok = first.results == second.results and second.computed == 0
    return EXIT_OK if ok else EXIT_FOUND


@contextlib.contextmanager
def _embedded() -> Iterator[tuple[str, str]]:
    from ..testing.embedded import embedded_redis

    with embedded_redis() as server:
        yield server.url, server.describe()


def bench_command(args: argparse.Namespace) -> int:
    candidates = (
        [Path(args.dir)]
        if args.dir
        else [
            Path(__file__).resolve().parents[1] / "benchmarks",
            Path.cwd() / "benchmarks",
        ]
    )
    runner = next((d / "run.py" for d in candidates if (d / "run.py").is_file()), None)
    if runner is None:
        raise CliError(
            "the benchmark suite ships with the source (benchmarks/run.py), not the wheel; "
            "run this from a clone of fleche-redis or pass --dir"
        )
    command = [sys.executable, str(runner), *([] if args.full else ["--smoke"])]
    if args.postgres_url:
        command += ["--postgres-url", args.postgres_url]
    if args.only:
        command += ["--only", *args.only]
    return EXIT_OK if subprocess.call(command) == 0 else EXIT_FOUND
