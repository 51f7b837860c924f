"""The maintenance commands: gc, verify/repair of index and data, and resign after a key rotation."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from typing import Any

from .connect import open_cache
from .errors import EXIT_FOUND, EXIT_OK, CliError
from .output import emit, progress_bar

__all__ = ["gc_command", "verify_command", "repair_command", "resign_command"]


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


PROBLEMS = (
    "dangling_index",
    "unindexed",
    "stale_terms",
    "missing_terms",
    "stale_references",
    "orphan_chunks",
    "wrong_type",
)
"""What ``repair`` fixes; unsigned entries only go with ``--drop-unsigned``."""


def _check(args: argparse.Namespace, fix: bool) -> int:
    from ..admin.maintenance import repair, verify

    cache = open_cache(args)
    drop = fix and getattr(args, "drop_unsigned", False)
    if drop and not cache.calls.codec.secret_key:
        raise CliError(
            "--drop-unsigned needs the secret key (FLECHE_SECRET_KEY): without one every entry "
            "is unsigned"
        )
    with progress_bar(args) as bar:
        if fix:
            reports = [repair(s, progress=bar, drop_unsigned=drop) for s in _stores(cache)]
        else:
            reports = [verify(s, progress=bar) for s in _stores(cache)]
    ok = all(r.ok for r in reports)
    data = {"ok": ok, "repaired": fix, "reports": [r.to_dict() for r in reports]}
    emit(args, data, lambda: _lines(reports, fix=fix, drop=drop))
    return EXIT_OK if ok or fix else EXIT_FOUND


def _stores(cache: Any) -> tuple[Any, Any]:
    return (cache.calls, cache.values)


def _lines(reports: list[Any], *, fix: bool, drop: bool) -> Iterator[str]:
    verb = "fixed" if fix else "found"
    for r in reports:
        found = [(p, getattr(r, p)) for p in PROBLEMS if getattr(r, p)]
        if drop and r.unsigned:
            found.append(("unsigned", r.unsigned))
        if not found and not r.unsigned:
            yield f"{r.storage}: ok, {r.entries:,} entries"
            continue
        if found:
            yield f"{r.storage}: {verb} " + ", ".join(f"{n:,} {p}" for p, n in found)
        else:
            yield f"{r.storage}: {r.entries:,} entries"
        for p, _ in found:
            if p == "wrong_type":  # each by name: repair removes them
                yield from (f"  {p}: {name}" for name in r.examples.get(p, []))
            else:
                yield f"  {p}, e.g. " + ", ".join(r.examples.get(p, []))
        if r.unsigned and not drop:
            yield (
                f"  {r.unsigned:,} unsigned entries (misses to every reader with a key), e.g. "
                + ", ".join(r.examples.get("unsigned", []))
            )
        if r.undecodable:
            yield f"  {r.undecodable:,} undecodable entries left in place"
    if old := sum(r.old_key for r in reports):
        yield f"{old:,} call record(s) signed by an old key: `fleche-redis resign` re-signs them"
    if any(r.unsigned for r in reports) and not drop:
        yield "run `fleche-redis repair --drop-unsigned` to delete the unsigned entries"
    if any(getattr(r, p) for r in reports for p in PROBLEMS) and not fix:
        yield "run `fleche-redis repair` to fix these"


def verify_command(args: argparse.Namespace) -> int:
    return _check(args, fix=False)


def repair_command(args: argparse.Namespace) -> int:
    return _check(args, fix=True)


def resign_command(args: argparse.Namespace) -> int:
    """Exit 1 after ``--dry-run`` while an old key still signs something: the old key must stay."""
    from ..admin.maintenance import resign

    cache = open_cache(args)
    started = time.monotonic()
    try:
        with progress_bar(args) as bar:
            reports = [
                resign(store, dry_run=args.dry_run, progress=bar)
                for store in (cache.values, cache.calls)
            ]
    except ValueError as e:
        raise CliError(str(e)) from None
    seconds = time.monotonic() - started
    old = sum(r.old_key for r in reports)
    data = {"dry_run": args.dry_run, "old_key": old, "reports": [r.to_dict() for r in reports]}

    def text() -> Iterator[str]:
        for r in reports:
            line = f"{r.storage}: {r.entries:,} entries, {r.old_key:,} signed by an old key"
            if not args.dry_run:
                line += f", {r.resigned:,} re-signed"
            yield line
            if r.changed:
                yield f"  {r.changed:,} changed meanwhile and left as they are: run resign again"
            if r.undecodable:
                yield f"  {r.undecodable:,} entries no key verifies, left in place"
        yield f"({seconds:.1f} s)"
        if args.dry_run:
            yield (
                "the old key(s) can be dropped"
                if not old
                else "keep the old key(s): run `fleche-redis resign` first"
            )

    emit(args, data, text)
    return EXIT_FOUND if args.dry_run and old else EXIT_OK
