"""Command line: ``python -m fleche_redis <command>`` (also the ``fleche-redis`` script).

::

    fleche-redis demo                      # the main job, on a private Redis if none is given
    fleche-redis info [--all]              # entries, memory, index health per namespace
    fleche-redis ls [NAME]                 # call records, short digests as fleche's table() shows
    fleche-redis show KEY                  # one call record or value, by (short) digest
    fleche-redis evict KEY... | --name NAME
    fleche-redis gc | verify | repair      # progress bars on a terminal; --json for scripts
    fleche-redis bench [--full]            # the benchmark suite (smoke sizes by default)

Where: ``--url`` (else ``$REDIS_URL``, else ``redis://localhost:6379/0``) and
``--namespace`` (else ``$FLECHE_REDIS_NAMESPACE``, else ``fleche``), before or
after the command.

Exit codes: 0 done; 1 looked and found a problem or nothing (``verify``
found problems, ``show`` or ``evict`` of an unknown key, ``ls`` listed
nothing, another ``gc`` is running); 2 the command could not run (usage, bad
URL, server down, wrong password, missing permission, ambiguous prefix);
130 interrupted.  Errors are one line on stderr starting ``fleche-redis:``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from fleche.digest import DIGEST_LENGTH, Digest
from fleche.storage.base import AmbiguousDigestError

from ..errors import FlecheRedisError, RedisStorageError
from ..storage.keys import InvalidDigestError, check_namespace, check_prefix

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FOUND", "EXIT_ERROR"]

EXIT_OK, EXIT_FOUND, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_NAMESPACE = "fleche"
SCHEMES = "redis://, rediss://, unix://, redis+cluster://, redis+sentinel://"


class CliError(Exception):
    """A message for the person at the terminal and the exit code that goes with it."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# -- where, and connecting -----------------------------------------------------------


def _url(args: argparse.Namespace) -> str:
    from ..storage.backend import DEFAULT_URL

    return getattr(args, "url", None) or os.environ.get("REDIS_URL") or DEFAULT_URL


def _namespace(args: argparse.Namespace) -> str:
    namespace = (
        getattr(args, "namespace", None)
        or os.environ.get("FLECHE_REDIS_NAMESPACE")
        or DEFAULT_NAMESPACE
    )
    try:
        return check_namespace(namespace)
    except ValueError as e:
        raise CliError(str(e)) from None


def _storages(url: str, namespace: str) -> tuple[Any, Any]:
    from ..storage.backend import CallRedis, ValueRedis
    from ..transport.connection import client_from_url, redact_url

    try:
        client_from_url(url).close()  # parses the URL; connects lazily, so nothing is sent
    except (ValueError, TypeError, IndexError) as e:
        raise CliError(f"invalid Redis URL {redact_url(url)!r}: {e} (use {SCHEMES})") from None
    except redis.RedisError as e:
        raise CliError(_explain(e, redact_url(url))) from None
    # A command line fails fast: no retry, and a breaker that never opens.
    options: dict[str, Any] = {"retries": 0, "breaker_threshold": 10**9}
    values = ValueRedis(url=url, namespace=namespace, **options)
    calls = CallRedis(url=url, namespace=namespace, **options)
    calls.channel.run("ping", lambda client: client.ping())
    return values, calls


def _open(args: argparse.Namespace) -> Any:
    from ..cache.caches import RedisCache

    values, calls = _storages(_url(args), _namespace(args))
    return RedisCache(values=values, calls=calls)


def _explain(error: BaseException, server: str) -> str:
    """One sentence a person can act on, for any failure to reach or use Redis."""
    cause = error.__cause__ if isinstance(error, RedisStorageError) else error
    server = getattr(error, "server", server)
    text = f"{type(cause).__name__}: {cause}"
    if isinstance(cause, redis.AuthenticationError) or "WRONGPASS" in str(cause):
        if "@" not in server:
            return (
                f"Redis at {server} requires a password ({text}); put it in the URL: "
                "redis://[user]:PASSWORD@host:port/db"
            )
        return f"authentication failed at {server}: wrong user name or password ({text})"
    if isinstance(cause, redis.exceptions.NoPermissionError):
        return (
            f"the Redis user lacks a permission at {server} ({text}); an ACL must allow "
            "the namespace's keys (~<namespace>:*) and the commands fleche-redis uses"
        )
    if isinstance(cause, redis.TimeoutError):
        return f"Redis at {server} did not answer in time ({text})"
    if isinstance(cause, (redis.ConnectionError, redis.exceptions.RedisClusterException)):
        return (
            f"cannot connect to Redis at {server} ({text}); is it running? "
            "Give its address with --url or REDIS_URL"
        )
    return str(error)


def _redacted(url: str) -> str:
    from ..transport.connection import redact_url

    return redact_url(url)


# -- output ---------------------------------------------------------------------------


def _emit(args: argparse.Namespace, data: Any, text: Callable[[], Iterator[str]]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        for line in text():
            print(line)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _progress(args: argparse.Namespace) -> Any:
    from ..admin.progress import ProgressBar

    return ProgressBar(enabled=False if getattr(args, "json", False) else None)


# -- commands -------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from ..transport.connection import redact_url
    from .demo import run_demo

    url = getattr(args, "url", None) or os.environ.get("REDIS_URL")
    namespace = getattr(args, "namespace", None)
    where: contextlib.AbstractContextManager[tuple[str, str]]
    if url:
        _storages(url, namespace or DEFAULT_NAMESPACE)  # a clear error before workers start
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


def _info(args: argparse.Namespace) -> int:
    from ..admin import inspection
    from ..storage.backend import CallRedis, ValueRedis

    cache = _open(args)
    url = _url(args)
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
        limit = _bytes(server["maxmemory"]) if server["maxmemory"] else "none"
        used = _bytes(server["used_memory"]) if server["used_memory"] is not None else "n/a"
        yield (
            f"server     {server['url']}  Redis {server['redis_version'] or 'n/a'}, used memory "
            f"{used}, maxmemory {limit}, policy {server['maxmemory_policy'] or 'n/a'}"
        )
        if not reports:
            yield "no fleche-redis namespaces on this server"
        for r in reports:
            yield f"namespace  {r['namespace']}"
            for label, key in (("call records", "calls"), ("values", "values")):
                s = r[key]
                memory = s["index_bytes"] + s["data_bytes_estimate"]
                yield (
                    f"  {label:<13}{s['entries']:>10,}   memory ~{_bytes(memory)} "
                    f"(index {_bytes(s['index_bytes'])}, data ~{_bytes(s['data_bytes_estimate'])})"
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

    _emit(args, data, text)
    return EXIT_OK


def _runtime(metadata: dict[str, Any]) -> tuple[str, str]:
    for data in metadata.values():
        if isinstance(data, dict) and "timestart" in data:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data["timestart"]))
            wall = data.get("walltime")
            return started, "" if wall is None else f"{wall:.3f}"
    return "", ""


def _ls(args: argparse.Namespace) -> int:
    from ..admin.inspection import list_records

    cache = _open(args)
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
    stores = (("call", cache.calls), ("value", cache.values))
    found, ambiguous = [], False
    for kind, store in stores:
        try:
            # fleche's expand returns a full digest unchecked; ask the store whether it has it.
            if len(key) == DIGEST_LENGTH:
                if store.contains(key):
                    found.append((kind, Digest(key)))
            else:
                found.append((kind, store.expand(key)))
        except AmbiguousDigestError:
            ambiguous = True
        except KeyError:
            pass
    if ambiguous or len(found) > 1:
        candidates = [(kind, d) for kind, store in stores for d in prefix_matches(store, key)]
        listing = "; ".join(f"{kind} {d}" for kind, d in candidates)
        raise CliError(f"ambiguous prefix {key}: matches {listing}; give more characters")
    if not found:
        raise CliError(
            f"no call record or value {key} in namespace {cache.calls.namespace!r}", EXIT_FOUND
        )
    return found[0]


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


def _show(args: argparse.Namespace) -> int:
    cache = _open(args)
    kind, digest = _resolve(cache, args.key)
    if kind == "value":
        data = {"kind": "value", **_shown(cache, digest, args.full)}
        _emit(args, data, lambda: iter([f"value {digest} ({data.get('type')})", data["repr"]]))
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

    _emit(args, data, text)
    return EXIT_OK


def _shrunk(calls: Any, digest: Any) -> str:
    try:
        return str(calls.shrink(digest))
    except (KeyError, AmbiguousDigestError):
        return str(digest)


def _evict(args: argparse.Namespace) -> int:
    from ..admin.inspection import list_records

    cache = _open(args)
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

    _emit(args, data, text)
    return EXIT_OK if doomed else EXIT_FOUND


def _gc(args: argparse.Namespace) -> int:
    from ..admin.maintenance import GcAlreadyRunning, gc

    cache = _open(args)
    started = time.monotonic()
    try:
        with _progress(args) as bar:
            evicted = gc(cache, progress=bar)
    except GcAlreadyRunning as e:
        raise CliError(str(e), EXIT_FOUND) from None
    seconds = time.monotonic() - started
    data = {"evicted": evicted, "seconds": round(seconds, 3), "namespace": cache.calls.namespace}
    _emit(
        args,
        data,
        lambda: iter([f"evicted {evicted:,} value(s) no call record uses ({seconds:.1f} s)"]),
    )
    return EXIT_OK


def _check(args: argparse.Namespace, fix: bool) -> int:
    from ..admin.maintenance import repair, verify

    cache = _open(args)
    run = repair if fix else verify
    with _progress(args) as bar:
        reports = [run(store, progress=bar) for store in (cache.calls, cache.values)]
    problems = [
        "dangling_index",
        "unindexed",
        "stale_terms",
        "missing_terms",
        "stale_references",
        "orphan_chunks",
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
                yield f"  {p}, e.g. " + ", ".join(r.examples.get(p, []))
            if r.undecodable:
                yield f"  {r.undecodable:,} undecodable entries left in place"
        if not ok and not fix:
            yield "run `fleche-redis repair` to fix these"

    _emit(args, data, text)
    return EXIT_OK if ok or fix else EXIT_FOUND


def _bench(args: argparse.Namespace) -> int:
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


# -- parsing --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help="Redis URL (default: $REDIS_URL, else redis://localhost:6379/0)",
    )
    where.add_argument(
        "--namespace",
        default=argparse.SUPPRESS,
        help=f"key namespace (default: $FLECHE_REDIS_NAMESPACE, else {DEFAULT_NAMESPACE!r})",
    )
    where.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output"
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON only, for scripts")

    parser = argparse.ArgumentParser(
        prog="fleche-redis",
        description="Shared fleche caches in Redis.",
        parents=[where],
        epilog="Exit codes: 0 done; 1 found a problem or nothing; 2 could not run.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Any, help: str, *parents: argparse.ArgumentParser) -> Any:
        p = sub.add_parser(name, help=help, description=help, parents=[where, *parents])
        p.set_defaults(func=func)
        return p

    demo = command(
        "demo", _demo, "memoize a workload across worker processes through one Redis cache"
    )
    demo.add_argument("--workers", type=int, default=4)
    demo.add_argument("--tasks", type=int, default=16)
    demo.add_argument(
        "--samples", type=int, default=1_000_000, help="random samples per task (its cost)"
    )
    demo.add_argument("--keep", action="store_true", help="keep the demo's entries in Redis")
    demo.epilog = (
        "Without --url/REDIS_URL it starts a private redis-server (or fakeredis); without "
        "--namespace it uses a fresh one and removes it afterwards."
    )

    info = command("info", _info, "entries, memory and index health of a namespace", as_json)
    info.add_argument("--all", action="store_true", help="every namespace on the server (SCAN)")

    ls = command("ls", _ls, "list call records with short digests", as_json)
    ls.add_argument("name", nargs="?", help="function name, or a glob pattern such as 'pkg.*'")
    ls.add_argument("--limit", type=int, help="at most this many records")

    show = command("show", _show, "print one call record or value", as_json)
    show.add_argument("key", help="digest or a prefix of at least 4 characters")
    show.add_argument("--full", action="store_true", help="do not shorten long values")

    evict = command("evict", _evict, "remove call records", as_json)
    evict.add_argument("keys", nargs="*", metavar="KEY", help="digest or prefix of a record")
    evict.add_argument("--name", help="every record of this function (or glob pattern)")
    evict.add_argument("--dry-run", action="store_true", help="only say what would go")

    command("gc", _gc, "evict values no call record uses", as_json)
    command("verify", lambda a: _check(a, fix=False), "check index and data agree", as_json)
    command("repair", lambda a: _check(a, fix=True), "fix what verify finds", as_json)

    bench = command("bench", _bench, "run the benchmark suite (smoke sizes unless --full)")
    bench.add_argument("--full", action="store_true", help="full sizes (takes minutes)")
    bench.add_argument("--dir", help="the benchmarks/ directory of a source checkout")
    bench.add_argument("--only", nargs="+", help="benchmark names, e.g. cache locks")
    bench.add_argument("--postgres-url", help="also measure fleche's Sql on PostgreSQL")
    return parser


@contextlib.contextmanager
def _logging(verbose: int) -> Iterator[None]:
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _logging(getattr(args, "verbose", 0) or 0):
        try:
            return args.func(args)
        except CliError as e:
            message, code = str(e), e.code
        except FlecheRedisError as e:
            message, code = _explain(e, getattr(e, "server", "?")), EXIT_ERROR
        except redis.exceptions.RedisClusterException as e:
            message, code = _explain(e, _redacted(_url(args))), EXIT_ERROR
        except KeyboardInterrupt:
            message, code = "interrupted", EXIT_INTERRUPTED
    print(f"fleche-redis: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
