"""The commands that read and edit a namespace's entries: info, ls, show and evict."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from fleche.digest import DIGEST_LENGTH, Digest
from fleche.storage.base import AmbiguousDigestError

from ..storage.keys import InvalidDigestError, check_prefix
from ..transport.compat import FLOOR
from .connect import open_cache, url_of
from .errors import EXIT_FOUND, EXIT_OK, CliError
from .output import emit, human_bytes

__all__ = ["info_command", "ls_command", "show_command", "evict_command"]

FLOOR_TEXT = ".".join(map(str, FLOOR))


def info_command(args: argparse.Namespace) -> int:
    from ..admin import inspection
    from ..storage.backend import CallRedis, ValueRedis

    cache = open_cache(args, need_entries=not args.all)
    url = url_of(args)
    spaces = inspection.namespaces(cache.calls) if args.all else [cache.calls.namespace]
    reports = []
    for ns in spaces:
        values, calls = (
            (cache.values, cache.calls)
            if ns == cache.calls.namespace
            else (ValueRedis(url=url, namespace=ns), CallRedis(url=url, namespace=ns))
        )
        reports.append(inspection.namespace_info(values, calls))
    server = {"url": cache.calls.server, **inspection.server_info(cache.calls)}
    data = {"server": server, "namespaces": reports}

    def text() -> Iterator[str]:
        limit = human_bytes(server["maxmemory"]) if server["maxmemory"] else "none"
        used = human_bytes(server["used_memory"]) if server["used_memory"] is not None else "n/a"
        yield (
            f"server     {server['url']}  Redis {server['redis_version'] or 'n/a'}, used memory "
            f"{used}, maxmemory {limit}, policy {server['maxmemory_policy'] or 'n/a'}"
        )
        if server["below_floor"]:
            yield (
                f"WARNING    Redis {server['redis_version']} is older than {FLOOR_TEXT}, the "
                "oldest fleche-redis supports: what needs a newer command fails with ServerTooOld "
                "(docs/errors.md)"
            )
        if not reports:
            yield "no fleche-redis namespaces on this server"
        for r in reports:
            yield f"namespace  {r['namespace']}"
            for label, key in (("call records", "calls"), ("values", "values")):
                s = r[key]
                memory = s["index_bytes"] + s["data_bytes_estimate"]
                yield (
                    f"  {label:<13}{s['entries']:>10,}   memory ~{human_bytes(memory)} "
                    f"(index {human_bytes(s['index_bytes'])}, data ~{human_bytes(s['data_bytes_estimate'])})"
                )
            sampled = r["calls"]["sampled"] + r["values"]["sampled"]
            gone = r["calls"]["dangling_in_sample"] + r["values"]["dangling_in_sample"]
            yield (
                f"  index health ok ({sampled} sampled entries all present)"
                if not gone
                else f"  index health {gone} of {sampled} sampled entries are gone: run "
                "`fleche-redis verify`"
            )
            yield f"  gc           {'running now' if r['gc_running'] else 'not running'}"

    emit(args, data, text)
    return EXIT_OK


def _runtime(metadata: dict[str, Any]) -> tuple[str, str]:
    for data in metadata.values():
        if isinstance(data, dict) and "timestart" in data:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data["timestart"]))
            wall = data.get("walltime")
            return started, "" if wall is None else f"{wall:.3f}"
    return "", ""


def ls_command(args: argparse.Namespace) -> int:
    from ..admin.inspection import list_records

    cache = open_cache(args)
    rows = list_records(cache.calls, args.name)
    if args.limit is not None:
        rows = (r for _, r in zip(range(args.limit), rows, strict=False))
    if args.json:
        listed = list(rows)
        print(json.dumps(listed, indent=2, default=str))
        return EXIT_OK if listed else EXIT_FOUND
    count = 0
    for row in rows:
        if count == 0:
            print(f"{'KEY':<10} {'NAME':<28} {'MODULE':<24} {'STARTED':<19} {'SECONDS':>9}")
        started, seconds = _runtime(row["metadata"])
        print(
            f"{row['key']:<10} {row['name']:<28} {row['module'] or '':<24} {started:<19} "
            f"{seconds:>9}"
        )
        count += 1
    what = f" of {args.name}" if args.name else ""
    print(f"{count:,} call record{'s' if count != 1 else ''}{what}", file=sys.stderr)
    return EXIT_OK if count else EXIT_FOUND


def _resolve(cache: Any, key: str) -> tuple[str, Any]:
    """(``"call"`` or ``"value"``, full digest) of a (short) key, or a :class:`CliError`."""
    from ..admin.inspection import prefix_matches

    try:
        check_prefix(key)
    except InvalidDigestError:
        raise CliError(f"{key!r} is not a digest: use lowercase hex characters") from None
    if len(key) < 4:
        raise CliError(f"prefix {key!r} is too short: give at least 4 characters")
    # A call record first: every key `ls` prints names exactly one record,
    # even where a value's digest starts the same way.
    for kind, store in (("call", cache.calls), ("value", cache.values)):
        try:
            # fleche's expand returns a full digest unchecked; ask the store whether it has it.
            if len(key) == DIGEST_LENGTH:
                if store.contains(key):
                    return kind, Digest(key)
            else:
                return kind, store.expand(key)
        except AmbiguousDigestError:
            candidates = [(kind, d) for d in prefix_matches(store, key)]
            listing = "; ".join(f"{kind} {d}" for kind, d in candidates)
            raise CliError(
                f"ambiguous prefix {key}: matches {listing}; give more characters"
            ) from None
        except KeyError:
            pass
    raise CliError(
        f"no call record or value {key} in namespace {cache.calls.namespace!r}", EXIT_FOUND
    )


def _shown(cache: Any, digest: Any, full: bool) -> dict[str, Any]:
    text_limit = None if full else 200
    try:
        value = cache.values.load(digest)
    except KeyError:
        return {"digest": str(digest), "repr": "<missing>"}
    text = repr(value)
    if text_limit is not None and len(text) > text_limit:
        text = text[: text_limit - 3] + "..."
    return {"digest": str(digest), "type": type(value).__name__, "repr": text}


def show_command(args: argparse.Namespace) -> int:
    cache = open_cache(args)
    kind, digest = _resolve(cache, args.key)
    if kind == "value":
        data = {"kind": "value", **_shown(cache, digest, args.full)}
        emit(args, data, lambda: iter([f"value {digest} ({data.get('type')})", data["repr"]]))
        return EXIT_OK
    record = cache.calls.load(digest)
    data = {
        "kind": "call",
        "digest": str(digest),
        "short": _shrunk(cache.calls, digest),
        "name": record.name,
        "module": record.module,
        "version": record.version,
        "arguments": {k: _shown(cache, v, args.full) for k, v in record.arguments.items()},
        "result": None if record.result is None else _shown(cache, record.result, args.full),
        "metadata": record.metadata or {},
    }

    def text() -> Iterator[str]:
        yield f"call record {digest} (short {data['short']})"
        yield f"function    {record.name} (module {record.module}, version {record.version})"
        yield "arguments"
        width = max((len(k) for k in data["arguments"]), default=0)
        for name, shown in data["arguments"].items():
            yield f"  {name:<{width}}  {shown['digest'][:12]}  = {shown['repr']}"
        if data["result"] is not None:
            yield f"result      {data['result']['digest'][:12]}  = {data['result']['repr']}"
        if data["metadata"]:
            yield "metadata"
            for name, values in data["metadata"].items():
                yield f"  {name}: {values}"

    emit(args, data, text)
    return EXIT_OK


def _shrunk(calls: Any, digest: Any) -> str:
    try:
        return str(calls.shrink(digest))
    except (KeyError, AmbiguousDigestError):
        return str(digest)


def evict_command(args: argparse.Namespace) -> int:
    from ..admin.inspection import list_records

    cache = open_cache(args)
    if not args.keys and args.name is None:
        raise CliError("name the records to evict: KEY... or --name NAME")
    doomed: dict[str, str] = {}
    for key in args.keys:
        kind, digest = _resolve(cache, key)
        if kind != "call":
            raise CliError(
                f"{key} is a value, not a call record; values go with `fleche-redis gc` "
                "once no call record uses them"
            )
        doomed[str(digest)] = cache.calls.load(digest).name
    if args.name is not None:
        doomed.update((row["digest"], row["name"]) for row in list_records(cache.calls, args.name))
    if not args.dry_run:
        for digest in doomed:
            cache.calls.evict(digest)
    data = {"evicted": [] if args.dry_run else list(doomed), "matched": list(doomed)}

    def text() -> Iterator[str]:
        for digest, name in doomed.items():
            yield f"{'would evict' if args.dry_run else 'evicted'} {digest}  {name}"
        yield (
            f"{len(doomed)} call record(s); the values they used stay until `fleche-redis gc`"
            if doomed
            else "no call records matched"
        )

    emit(args, data, text)
    return EXIT_OK if doomed else EXIT_FOUND
