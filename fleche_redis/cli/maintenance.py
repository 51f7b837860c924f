"""The maintenance commands: gc, and verify/repair of index and data."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

from .connect import open_cache
from .errors import EXIT_FOUND, EXIT_OK, CliError
from .output import emit, progress_bar

__all__ = ["gc_command", "verify_command", "repair_command"]


def gc_command(args: argparse.Namespace) -> int:
    from ..admin.maintenance import GcAlreadyRunning, gc

    cache = open_cache(args)
    started = time.monotonic()
    try:
        with progress_bar(args) as bar:
            evicted = gc(cache, progress=bar)
    except GcAlreadyRunning as e:
        raise CliError(str(e), EXIT_FOUND) from None
    seconds = time.monotonic() - started
    data = {"evicted": evicted, "seconds": round(seconds, 3), "namespace": cache.calls.namespace}
    emit(
        args,
        data,
        lambda: iter([f"evicted {evicted:,} value(s) no call record uses ({seconds:.1f} s)"]),
    )
    return EXIT_OK


def _check(args: argparse.Namespace, fix: bool) -> int:
    from ..admin.maintenance import repair, verify

    cache = open_cache(args)
    run = repair if fix else verify
    with progress_bar(args) as bar:
        reports = [run(store, progress=bar) for store in (cache.calls, cache.values)]
    problems = [
        "dangling_index",
        "unindexed",
        "stale_terms",
        "missing_terms",
        "stale_references",
        "orphan_chunks",
        "wrong_type",
    ]
    ok = all(r.ok for r in reports)
    data = {"ok": ok, "repaired": fix, "reports": [r.to_dict() for r in reports]}

    def text() -> Iterator[str]:
        for r in reports:
            found = [(p, getattr(r, p)) for p in problems if getattr(r, p)]
            if not found:
                yield f"{r.storage}: ok, {r.entries:,} entries"
                continue
            verb = "fixed" if fix else "found"
            yield f"{r.storage}: {verb} " + ", ".join(f"{n:,} {p}" for p, n in found)
            for p, _ in found:
                if p == "wrong_type":  # each by name: repair removes them
                    yield from (f"  {p}: {name}" for name in r.examples.get(p, []))
                else:
                    yield f"  {p}, e.g. " + ", ".join(r.examples.get(p, []))
            if r.undecodable:
                yield f"  {r.undecodable:,} undecodable entries left in place"
        if not ok and not fix:
            yield "run `fleche-redis repair` to fix these"

    emit(args, data, text)
    return EXIT_OK if ok or fix else EXIT_FOUND


def verify_command(args: argparse.Namespace) -> int:
    return _check(args, fix=False)


def repair_command(args: argparse.Namespace) -> int:
    return _check(args, fix=True)
