"""Every use of redis-py beyond its public client API, in one module.

The transport writes requests on connections it holds itself (see
``docs/transport.md``), which reaches into redis-py's pools and connections.
Those reaches live here and nowhere else, each bridged across the redis-py
versions this package supports; ``tests/transport/test_redispy.py`` fails,
naming the member, when a redis-py release changes one of them.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.connection import parse_url as _parse_url
from redis.retry import Retry

__all__ = [
    "Client",
    "checkout",
    "connect_once",
    "release",
    "socket_of",
    "write",
    "read",
    "pack",
    "can_read",
    "is_pipeline",
    "is_blocking_pool",
    "pool_of",
    "retry_of",
    "connection_kwargs",
    "parse_url",
    "CHECKOUT_NEEDS_COMMAND",
]


class Client(Protocol):
    """What the package uses of a client: redis-py's ``Redis``, ``RedisCluster``, a
    pipeline, or fakeredis (commands, and the cursors maintenance walks).  Its pool,
    when it has one, is reached by :func:`pool_of`."""

    def execute_command(self, *args: Any, **options: Any) -> Any: ...

    def pipeline(self, transaction: Any = ..., shard_hint: Any = ...) -> Any: ...

    def script_load(self, script: Any) -> Any: ...

    def scan_iter(self, match: Any = ..., count: Any = ..., _type: Any = ...) -> Any: ...

    def hscan_iter(self, name: Any, match: Any = ..., count: Any = ...) -> Any: ...

    def info(self, section: Any = ..., *args: Any, **kwargs: Any) -> Any: ...


def _needs_command(pool_class: Any) -> bool:
    """Whether ``get_connection`` requires a command name (redis-py 5.0 to 5.2)."""
    try:
        get_connection = pool_class.get_connection
        parameter = inspect.signature(get_connection).parameters.get("command_name")
    except (TypeError, ValueError):  # pragma: no cover - not introspectable
        return False
    return parameter is not None and parameter.default is inspect.Parameter.empty


CHECKOUT_NEEDS_COMMAND = _needs_command(redis.ConnectionPool)
"""redis-py before 5.3 takes a command name in ``get_connection`` (and ignores it); later
releases take none and warn when given one."""


def checkout(pool: Any) -> Any:
    """A connection from *pool*, as ``pool.get_connection()`` gives it."""
    if CHECKOUT_NEEDS_COMMAND:
        return pool.get_connection("_")
    return pool.get_connection()


_ONE_ATTEMPT = Retry(NoBackoff(), 0)


def connect_once(conn: Any) -> None:
    """Connect *conn* (and its handshake) with one attempt, whatever its retry policy.

    ``Connection.connect()`` retries by the connection's policy (``conn.retry``;
    redis-py 6+ the handshake too), and :func:`.wire.request` retries the
    whole request by the same policy: nested, a server that accepts and never
    answers cost ``(retries + 1)²`` timeouts per request.
    """
    retry = conn.retry
    conn.retry = _ONE_ATTEMPT
    try:
        conn.connect()
    finally:
        conn.retry = retry


def release(pool: Any, conn: Any) -> None:
    """Give *conn* back to *pool*."""
    pool.release(conn)


def socket_of(conn: Any) -> Any:
    """The connection's socket (``conn._sock``), ``None`` while it is not connected."""
    return getattr(conn, "_sock", None)


def write(conn: Any, packed: Any) -> None:
    """Write packed commands, without redis-py's per-command health check (we poll ourselves)."""
    conn.send_packed_command(packed, check_health=False)


def read(conn: Any) -> Any:
    """The next reply on *conn*; an error reply is raised as redis-py's exception."""
    return conn.read_response()


def pack(conn: Any, commands: list[tuple[Any, ...]]) -> Any:
    """*commands* packed by the connection's own packer (redis-py's ``pack_commands``).

    ``bytearray`` and ``memoryview`` arguments go as ``bytes``: the hiredis
    packer of redis-py 5 and 6.0 refuses them (later ones make this copy).
    """
    commands = [
        tuple(bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in command)
        for command in commands
    ]
    return conn.pack_commands(commands)


def can_read(conn: Any) -> bool:
    """Whether bytes wait on *conn* (redis-py's ``can_read``, which also sees TLS buffers)."""
    return bool(conn.can_read())


_PIPELINES: dict[type, bool] = {}


def is_pipeline(kind: type) -> bool:
    """Whether clients of class *kind* are redis-py pipelines (memoized: ``issubclass`` is slow)."""
    pipeline = _PIPELINES.get(kind)
    if pipeline is None:
        pipeline = _PIPELINES[kind] = issubclass(kind, Pipeline)
    return pipeline


def is_blocking_pool(pool: Any) -> bool:
    return isinstance(pool, redis.BlockingConnectionPool)


def pool_of(client: Client) -> Any:
    """The client's single pool; ``None`` for pipelines and clients without one (cluster)."""
    if is_pipeline(type(client)):
        return None
    return getattr(client, "connection_pool", None)


def connection_kwargs(pool: Any) -> dict[str, Any]:
    """The options *pool* makes connections with (host, port, retry, ...)."""
    kwargs: dict[str, Any] = pool.connection_kwargs
    return kwargs


def retry_of(pool: Any) -> Any:
    """The pool's connection retry policy (a ``redis.retry.Retry``), or ``None``."""
    return pool.connection_kwargs.get("retry")


def parse_url(url: str) -> dict[str, Any]:
    """Client options from a ``redis://`` URL, as redis-py's ``from_url`` reads them."""
    options: dict[str, Any] = _parse_url(url)
    return options
