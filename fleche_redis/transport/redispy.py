"""Every use of redis-py beyond its public client API, in one module.

The transport writes requests on connections it holds itself (see
``docs/transport.md``), which reaches into redis-py's pools and connections.
Those reaches live here and nowhere else, each bridged across the redis-py
versions this package supports; ``tests/transport/test_redispy.py`` fails,
naming the member, when a redis-py release changes one of them.
"""

from __future__ import annotations

import inspect
import socket
from typing import Any, Protocol

import redis
from redis._parsers import _HiredisParser
from redis._parsers.resp3 import _RESP3Parser
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.connection import parse_url as _parse_url
from redis.retry import Retry

from .gather import Gather

__all__ = [
    "Client",
    "checkout",
    "connect_once",
    "release",
    "socket_of",
    "write",
    "read",
    "BIG_REPLY",
    "pack",
    "can_read",
    "is_pipeline",
    "is_blocking_pool",
    "pool_of",
    "retry_of",
    "connection_kwargs",
    "parse_url",
    "CHECKOUT_NEEDS_COMMAND",
    "tracking_connection",
    "connect",
    "send_command",
    "read_push",
    "wait_readable",
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


BIG_REPLY = 64 * 1024
"""Bulk replies at least this big are received straight into a ``bytearray`` (see :func:`read`)."""


def read(conn: Any) -> Any:
    """The next reply on *conn*; an error reply is raised as redis-py's exception.

    A bulk string of :data:`BIG_REPLY` bytes or more (an entry's bytes) comes
    back as a ``bytearray`` the socket received it into: hiredis would copy
    it into its buffer and then into a ``bytes``, and an array unpickled from
    immutable bytes needs one more copy to be writable.  Anything else, and
    any connection but a plain socket with redis-py's hiredis parser and
    nothing buffered, takes ``read_response``.
    """
    parser = getattr(conn, "_parser", None)
    sock = getattr(conn, "_sock", None)
    if (
        type(parser) is not _HiredisParser
        or type(sock) is not socket.socket
        or conn.encoder.decode_responses
    ):
        return conn.read_response()
    reader: Any = getattr(parser, "_reader", None)
    buffer = getattr(parser, "_buffer", None)
    has_data = getattr(reader, "has_data", None)  # hiredis 1.x has none
    if type(buffer) is not bytearray or has_data is None or has_data():
        return conn.read_response()
    try:
        got = sock.recv_into(buffer)
        if not got:
            raise redis.ConnectionError("Connection closed by server.")
        if buffer[0] == 0x24:  # "$": a bulk string
            end = buffer.find(b"\r\n", 1, min(got, 24))
            if end > 0:
                size = int(buffer[1:end])
                if size >= BIG_REPLY:
                    return _bulk(sock, reader, buffer, got, end + 2, size)
    except TimeoutError:
        raise redis.TimeoutError("Timeout reading from socket") from None
    except OSError as e:
        raise redis.ConnectionError(f"Error while reading from socket: {e.args}") from None
    reader.feed(buffer, 0, got)
    return conn.read_response()


def _bulk(sock: Any, reader: Any, buffer: bytearray, got: int, start: int, size: int) -> bytearray:
    """The rest of a bulk string whose first *got* bytes are in *buffer*, received in place."""
    out = bytearray(size)
    view = memoryview(out)
    have = min(got - start, size)
    view[:have] = memoryview(buffer)[start : start + have]
    while have < size:
        n = sock.recv_into(view[have:])
        if not n:
            raise redis.ConnectionError("Connection closed by server.")
        have += n
    beyond = got - start - size  # bytes read past the string: its CRLF, then other replies
    if beyond > 2:
        reader.feed(buffer, start + size + 2, beyond - 2)
    crlf = bytearray(2)
    owed = 2 - max(beyond, 0)
    while owed > 0:  # never more than the CRLF: what follows is the next reply's
        n = sock.recv_into(crlf, owed)
        if not n:
            raise redis.ConnectionError("Connection closed by server.")
        owed -= n
    return out


def pack(conn: Any, commands: list[tuple[Any, ...]]) -> Any:
    """*commands* packed by the connection's own packer (redis-py's ``pack_commands``).

    ``bytearray``, ``memoryview`` and :class:`~.gather.Gather` arguments go as
    ``bytes``: the hiredis packer of redis-py 5 and 6.0 refuses them (later
    ones make this copy).
    """
    commands = [
        tuple(bytes(a) if isinstance(a, (bytearray, memoryview, Gather)) else a for a in command)
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


def tracking_connection(client: Client, name: str | None = None) -> Any | None:
    """A new connection to *client*'s server, outside its pool, that reads RESP3 push messages.

    For the tracking listener: made by the pool's own connection class and
    options (TLS, unix socket, credentials, a Sentinel's current primary),
    never handed out by the pool; *name* is its ``CLIENT SETNAME``.  It
    speaks RESP3 with redis-py's pure-Python parser, whose push handler is
    set to hand invalidation messages to :func:`read_push` as they are
    (redis-py 5.0 has one push handler; later releases one per kind).
    ``None`` where there is no single server to connect to: Redis Cluster,
    pipelines, and in-process fakeredis.  Not connected yet (see :func:`connect`).
    """
    pool = pool_of(client)
    if pool is None or not hasattr(pool, "connection_class"):
        return None
    kwargs = connection_kwargs(pool)
    if "server" in kwargs:  # fakeredis: an in-process server, no sockets
        return None
    options = {**kwargs, "protocol": 3, "parser_class": _RESP3Parser}
    if name is not None:
        options["client_name"] = name
    conn = pool.connection_class(**options)
    parser = conn._parser
    if hasattr(parser, "set_invalidation_push_handler"):  # redis-py >= 5.1
        parser.set_invalidation_push_handler(_as_is)
    else:
        parser.set_push_handler(_as_is)
    return conn


def connect(conn: Any) -> None:
    """Connect *conn* before its first command.

    Explicitly: a ``SentinelManagedConnection`` that its first command
    connects (redis-py 8) goes to its default address, ``localhost:6379``,
    not to the primary the sentinels name.
    """
    conn.connect()


def _as_is(message: Any) -> Any:
    return message


def send_command(conn: Any, *args: Any) -> None:
    """Write one command on a connection :func:`connect` connected."""
    conn.send_command(*args)


def read_push(conn: Any) -> Any:
    """The next reply or push message on a :func:`tracking_connection`.

    Read from its parser: redis-py 5.0's ``Connection.read_response`` drops
    ``push_request`` when hiredis is installed (so a push message would be
    swallowed and the read would wait for a reply).  An error reply is
    raised; a broken connection is closed and raised as ``ConnectionError``.
    """
    try:
        reply = conn._parser.read_response(disable_decoding=False, push_request=True)
    except OSError as e:  # socket.timeout included
        conn.disconnect()
        raise redis.ConnectionError(f"tracking connection lost: {e}") from e
    except BaseException:
        conn.disconnect()
        raise
    if isinstance(reply, redis.ResponseError):
        raise reply
    return reply


def wait_readable(conn: Any, timeout: float) -> bool:
    """Whether a reply arrives on *conn* within *timeout* seconds."""
    return bool(conn.can_read(timeout=timeout))


def primary_client(cluster: Any, command: tuple[Any, ...]) -> Client:
    """The plain client of the primary that serves *command*'s keys, by *cluster*'s slot map.

    For a request that must reach one primary on one connection
    (a write and its ``WAIT``); routing by redis-py's own key rules.
    """
    slot = cluster.determine_slot(*command)
    node = cluster.nodes_manager.get_node_from_slot(slot)
    client: Client = cluster.get_redis_connection(node)
    return client
