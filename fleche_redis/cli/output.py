"""How commands print: text or ``--json``, sizes, progress bars, and log lines on stderr."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["emit", "human_bytes", "progress_bar", "log_to_stderr"]


def emit(args: argparse.Namespace, data: Any, text: Callable[[], Iterator[str]]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        for line in text():
            print(line)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def progress_bar(args: argparse.Namespace) -> Any:
    from ..admin.progress import ProgressBar

    return ProgressBar(enabled=False if getattr(args, "json", False) else None)


@contextlib.contextmanager
def log_to_stderr(verbose: int) -> Iterator[None]:
    """Warnings of the library on stderr; the breaker's only with -v (the error says it all)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("fleche-redis: %(levelname)s: %(message)s"))
    root, health = logging.getLogger("fleche_redis"), logging.getLogger("fleche_redis.health")
    saved = (root.level, health.level, root.propagate)
    root.addHandler(handler)
    root.propagate = False
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    health.setLevel(logging.NOTSET if verbose else logging.ERROR)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        health.setLevel(saved[1])
        root.propagate = saved[2]
