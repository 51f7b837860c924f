"""The argument parser: shared options, then each command's name, help and arguments."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from .acl import acl_command
from .connect import DEFAULT_NAMESPACE
from .maintenance import gc_command, repair_command, resign_command, verify_command
from .run import bench_command, demo_command
from .serve import keygen_command, serve_command
from .served import POLICIES
from .store import evict_command, info_command, ls_command, show_command

__all__ = ["build_parser"]

Adder = Callable[..., argparse.ArgumentParser]


def _where() -> argparse.ArgumentParser:
    """--url, --namespace, --restricted and -v, accepted before or after the command."""
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
        "--restricted",
        action="store_true",
        default=argparse.SUPPRESS,
        help="unpickle entries with the restricted reader (see docs/security.md)",
    )
    where.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output"
    )
    return where


def _as_json() -> argparse.ArgumentParser:
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON only, for scripts")
    return as_json


def _verbose() -> argparse.ArgumentParser:
    """-v alone, for a command whose --namespace means something else (serve)."""
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output"
    )
    return verbose


def _adder(sub: Any, where: argparse.ArgumentParser) -> Adder:
    def command(
        name: str,
        func: Any,
        help: str,
        *parents: argparse.ArgumentParser,
        shared: argparse.ArgumentParser = where,
    ) -> Any:
        p = sub.add_parser(name, help=help, description=help, parents=[shared, *parents])
        p.set_defaults(func=func)
        return p

    return command


def _add_demo(command: Adder) -> None:
    demo = command(
        "demo", demo_command, "memoize a workload across worker processes through one Redis cache"
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


def _add_store_commands(command: Adder, as_json: argparse.ArgumentParser) -> None:
    info = command("info", info_command, "entries, memory and index health of a namespace", as_json)
    info.add_argument("--all", action="store_true", help="every namespace on the server (SCAN)")

    ls = command("ls", ls_command, "list call records with short digests", as_json)
    ls.add_argument("name", nargs="?", help="function name, or a glob pattern such as 'pkg.*'")
    ls.add_argument("--limit", type=int, help="at most this many records")

    show = command("show", show_command, "print one call record or value", as_json)
    show.add_argument("key", help="digest or a prefix of at least 4 characters")
    show.add_argument("--full", action="store_true", help="do not shorten long values")

    evict = command("evict", evict_command, "remove call records", as_json)
    evict.add_argument("keys", nargs="*", metavar="KEY", help="digest or prefix of a record")
    evict.add_argument("--name", help="every record of this function (or glob pattern)")
    evict.add_argument("--dry-run", action="store_true", help="only say what would go")


def _add_maintenance_commands(command: Adder, as_json: argparse.ArgumentParser) -> None:
    command("gc", gc_command, "evict values no call record uses", as_json)
    command("verify", verify_command, "check index and data agree", as_json)
    repair = command("repair", repair_command, "fix what verify finds", as_json)
    repair.add_argument(
        "--drop-unsigned",
        action="store_true",
        help="also delete entries with no signature (needs FLECHE_SECRET_KEY)",
    )
    resign = command(
        "resign",
        resign_command,
        "sign every entry an old key signed with the first key of FLECHE_SECRET_KEY (new:old)",
        as_json,
    )
    resign.add_argument(
        "--dry-run",
        action="store_true",
        help="only count them; exit 1 while there are any (the old key must stay)",
    )


def _add_bench(command: Adder) -> None:
    bench = command("bench", bench_command, "run the benchmark suite (smoke sizes unless --full)")
    bench.add_argument("--full", action="store_true", help="full sizes (takes minutes)")
    bench.add_argument("--dir", help="the benchmarks/ directory of a source checkout")
    bench.add_argument("--only", nargs="+", help="benchmark names, e.g. cache locks")
    bench.add_argument("--postgres-url", help="also measure fleche's Sql on PostgreSQL")


def _add_serve(command: Adder) -> None:
    serve = command(
        "serve",
        serve_command,
        "run a persistent, password-protected Redis for a team or a job (AOF in --dir)",
        shared=_verbose(),
    )
    serve.add_argument("--dir", required=True, help="its config, password, key, AOF and log")
    serve.add_argument("--bind", help="address to listen on (default: 127.0.0.1, or as before)")
    serve.add_argument("--port", type=int, help="(default: a free port, then the same as before)")
    serve.add_argument("--maxmemory", help="memory limit, e.g. 4gb (default: 1gb)")
    serve.add_argument(
        "--maxmemory-policy", choices=POLICIES, help="(default: noeviction; see docs/cli.md)"
    )
    serve.add_argument("--detach", action="store_true", help="start it in the background")
    serve.add_argument("--pidfile", help="(default: DIR/redis-server.pid)")
    serve.add_argument("--stop", action="store_true", help="stop the server of --dir")
    serve.add_argument(
        "--namespace",
        action="append",
        default=argparse.SUPPRESS,
        metavar="NAMESPACE",
        help="also a user confined to NAMESPACE:* with its own password and "
        "$REDIS_URL_<NAMESPACE> (repeatable; kept across starts)",
    )
    serve.epilog = (
        'Shell lines go to stdout: eval "$(fleche-redis serve --dir DIR --detach)" sets '
        "REDIS_URL and FLECHE_SECRET_KEY. Later starts on DIR reuse its password and port."
    )
    command("keygen", keygen_command, "print a new FLECHE_SECRET_KEY (32 random bytes, hex)")
    acl = command(
        "acl",
        acl_command,
        "a Redis user confined to --namespace, with a generated password: its ACL line and URL",
    )
    acl.add_argument("--user", help="the user's name (default: the namespace)")
    acl.add_argument(
        "--apply", action="store_true", help="create it now, on --url (an administrator's)"
    )


def build_parser() -> argparse.ArgumentParser:
    where, as_json = _where(), _as_json()
    parser = argparse.ArgumentParser(
        prog="fleche-redis",
        description="Shared fleche caches in Redis.",
        parents=[where],
        epilog="Exit codes: 0 done; 1 found a problem or nothing; 2 could not run.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = _adder(sub, where)
    _add_demo(command)
    _add_store_commands(command, as_json)
    _add_maintenance_commands(command, as_json)
    _add_bench(command)
    _add_serve(command)
    return parser
