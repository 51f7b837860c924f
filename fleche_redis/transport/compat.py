"""The oldest Redis the package works with, and a clear error from an older one.

Nothing is checked up front: a request costs no extra round trip.  Only
when a server refuses a command the way an older one does ("unknown
command", "wrong number of arguments", ...) does :func:`explained` ask the
server for its version (one ``INFO server``, or ``HELLO`` where an ACL
forbids ``INFO``), and turn the refusal into
:class:`~fleche_redis.errors.ServerTooOld` when the version is below
:data:`FLOOR`.  On a server at or above it the refusal stays as it was (a
command disabled with ``rename-command`` is no question of version).  The
commands and the versions they need are listed in ``docs/errors.md``.
"""

from __future__ import annotations

import re
from typing import Any

import redis

from ..errors import ServerTooOld
from . import redispy
from .redispy import Client

__all__ = ["FLOOR", "NEEDS", "explained", "check", "server_version", "parse_version", "below_floor"]

FLOOR = (6, 2)
"""The oldest Redis that runs everything the package sends (``SMISMEMBER``, ``ZMSCORE``)."""

NEEDS: dict[str, tuple[tuple[int, int], str]] = {
    "SMISMEMBER": ((6, 2), "gc's sweep"),
    "ZMSCORE": ((6, 2), "queries by argument, verify and repair of the query index"),
    "ACL": ((6, 2), "fleche-redis acl (channel rules, &<namespace>:*)"),
    "HELLO": ((6, 0), "the near cache's invalidations (RESP3)"),
    "CLIENT TRACKING": ((6, 0), "the near cache's invalidations"),
    "TRACKING": ((6, 0), "the near cache's invalidations (CLIENT TRACKING)"),  # as 5.0 says
    "BLPOP": ((6, 0), "lock and single-flight waits (a fractional BLPOP timeout)"),
}
"""The commands newer than Redis 5, what needs each, and since which version it works so."""

_REFUSALS = (
    "unknown command",
    "unknown subcommand",
    "wrong number of arguments",
    "syntax error",
    "timeout is not",  # BLPOP's fractional timeout before 6.0
)
"""How a server refuses a command or an option it does not know (lower case)."""

_NAMED = re.compile(r"(?:command|for|subcommand) ['`]([^'`]+)['`]", re.IGNORECASE)


def explained(client: Client, exc: Exception, command: str | None = None) -> Exception:
    """*exc*, or :class:`ServerTooOld` (caused by it) when an older server refused a command.

    *command* names the command sent, for a reply that does not say which.
    Costs one request, and only for a reply that reads like such a refusal.
    """
    if not isinstance(exc, redis.ResponseError):
        return exc
    text = str(exc)
    if not any(sign in text.lower() for sign in _REFUSALS):
        return exc
    version = server_version(client)
    parsed = parse_version(version)
    if version is None or parsed is None or parsed >= FLOOR:
        return exc
    named = _NAMED.search(text)
    name = (named.group(1) if named else command or "?").upper().replace("|", " ")
    listed = NEEDS.get(name) or NEEDS.get(name.split(" ")[0])
    where, floor = _where(client), _dotted(FLOOR)
    said = f"Redis {version} at {where} is too old for fleche-redis, which needs Redis >= {floor}"
    if listed is None:
        said += f"; it refused {name}"
    else:
        said += f": {name}, used by {listed[1]}, needs Redis >= {_dotted(listed[0])}"
    error = ServerTooOld(
        f"{said} [{type(exc).__name__}: {text}]",
        version=version,
        needed=_dotted(listed[0]) if listed else floor,
        command=name,
        server=where,
    )
    error.__cause__ = exc
    return error


def check(client: Client, exc: Exception, command: str | None = None) -> None:
    """Raise :class:`ServerTooOld` from *exc* when :func:`explained` finds it one; else nothing."""
    error = explained(client, exc, command)
    if error is not exc:
        raise error from exc


def server_version(client: Client) -> str | None:
    """The server's version (the oldest node's on Cluster), or ``None`` when it will not say.

    ``INFO server`` first; ``HELLO`` where it is refused (``INFO`` is in
    ``@dangerous``, which confined users lack): an unknown ``HELLO`` means
    a server older than 6.0.
    """
    if redispy.is_pipeline(type(client)):
        return None  # a command on it would be queued, not answered
    try:
        if isinstance(client, redis.RedisCluster):
            nodes = client.info("server", target_nodes=redis.RedisCluster.PRIMARIES).values()
            versions = [str(n.get("redis_version")) for n in nodes if n.get("redis_version")]
            return min(versions, key=lambda v: parse_version(v) or (0,), default=None)
        found = client.info("server").get("redis_version")
        return None if found is None else str(found)
    except redis.ResponseError:
        return _hello_version(client)
    except redis.RedisError:
        return None


def _hello_version(client: Client) -> str | None:
    protocol = _options(client).get("protocol") or 2
    try:
        reply = client.execute_command("HELLO", protocol)  # the connection's own: no switch
    except redis.ResponseError as e:
        return "older than 6.0" if "unknown command" in str(e).lower() else None
    except redis.RedisError:
        return None
    if isinstance(reply, list):
        reply = dict(zip(reply[::2], reply[1::2], strict=False))
    fields = {_text(k): _text(v) for k, v in reply.items()} if isinstance(reply, dict) else {}
    # fakeredis answers HELLO with its own name and release: no server version.
    return fields.get("version") if fields.get("server") in ("redis", "valkey") else None


def parse_version(version: str | None) -> tuple[int, ...] | None:
    """``"6.0.9"`` as ``(6, 0, 9)``; ``"older than 6.0"`` as ``(5,)``; ``None`` if unreadable."""
    if version is None:
        return None
    if version.startswith("older than 6"):
        return (5,)
    try:
        return tuple(int(part) for part in version.split(".")[:3])
    except ValueError:
        return None


def below_floor(version: str | None) -> bool | None:
    """Whether *version* is older than :data:`FLOOR`; ``None`` when it is not known."""
    parsed = parse_version(version)
    return None if parsed is None else parsed < FLOOR


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _options(client: Client) -> dict[str, Any]:
    """The options of *client*'s connections; none for a cluster (no one pool)."""
    pool = redispy.pool_of(client)
    return {} if pool is None else redispy.connection_kwargs(pool)


def _where(client: Client) -> str:
    """*client*'s server as ``host:port`` (or its socket's path), for the message."""
    options = _options(client)
    if "host" not in options and "path" not in options:
        return "the cluster" if isinstance(client, redis.RedisCluster) else "its address"
    return str(options.get("path") or f"{options.get('host')}:{options.get('port')}")
