"""Command line: ``python -m fleche_redis <command>`` (also the ``fleche-redis`` script)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from .errors import FlecheRedisError

__all__ = ["main"]


def _url_or_embedded(url: str | None):
    """The Redis to use: ``--url``, else ``$REDIS_URL``, else an embedded one."""
    url = url or os.environ.get("REDIS_URL")
    if url:
        return contextlib.nullcontext((url, f"{_redacted(url)} (from --url/REDIS_URL)"))

    @contextlib.contextmanager
    def started():
        from .embedded import embedded_redis

        with embedded_redis() as redis:
            yield redis.url, redis.describe()

    return started()


def _redacted(url: str) -> str:
    from .connection import redact_url

    return redact_url(url)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    with _url_or_embedded(args.url) as (url, description):
        print(f"Redis: {description}")
        first, second = run_demo(
            url,
            workers=args.workers,
            tasks=args.tasks,
            samples=args.samples,
            namespace=args.namespace,
            keep=args.keep,
        )
    return 0 if first.results == second.results and second.computed == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleche-redis", description="Shared fleche caches in Redis."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="memoize a workload across worker processes through one Redis cache"
    )
    demo.add_argument(
        "--url", help="Redis URL (default: $REDIS_URL, else a private embedded server)"
    )
    demo.add_argument("--workers", type=int, default=4)
    demo.add_argument("--tasks", type=int, default=16)
    demo.add_argument(
        "--samples", type=int, default=1_000_000, help="random samples per task (its cost)"
    )
    demo.add_argument(
        "--namespace", help="key namespace (default: a fresh one, removed afterwards)"
    )
    demo.add_argument("--keep", action="store_true", help="keep the demo's entries in Redis")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FlecheRedisError as e:
        print(f"fleche-redis: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
