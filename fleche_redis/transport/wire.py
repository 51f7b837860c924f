"""Requests on a connection each thread keeps, instead of a pool checkout per command.

redis-py's per-command pool checkout costs about as much as a memoized
call's request; here a thread keeps one connection per pool, checks it with
one ``poll()``, writes a request in one go and reads its replies in order
(error replies as exception objects).  Details in ``docs/transport.md``.
"""

from __future__ import annotations

import collections
import select
import socket
import weakref
from collections.abc import Callable
from typing import Any

import redis

from .. import runtime
from ..runtime import fork_generation
from . import redispy
from .gather import Gather
from .redispy import Client

_POLL = getattr(select, "poll", None)  # not on Windows
# POLLRDHUP reports a peer's FIN on Linux; elsewhere POLLIN alone sees the EOF.
_POLL_MASK = select.POLLIN | getattr(select, "POLLRDHUP", 0) if _POLL is not None else 0

_pack_command: Any
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - hiredis is a dependency on CPython
    _pack_command = None

__all__ = [
    "call",
    "request",
    "send",
    "receive",
    "post",
    "settle",
    "owing",
    "single_server",
    "Pending",
    "tidy",
]


class _Kept:
    """This thread's connection to one pool, returned to it when the thread ends."""

    __slots__ = ("conn", "pool", "generation", "busy", "poller", "polled", "owed", "__weakref__")

    def __init__(self, pool: Any, conn: Any) -> None:
        self.conn = conn
        self.pool = weakref.ref(pool)
        self.generation = fork_generation()
        self.busy = False
        self.poller: Any = None  # select.poll() on the socket below; False: use can_read()
        self.polled: Any = None
        self.owed: list[tuple[int, Settle]] = []  # posted requests: (reply count, settle)

    def __del__(self) -> None:
        # This runs wherever the last reference goes: at a thread's end, or
        # inside the collector in any thread, at any allocation, even one
        # inside this pool's own get_connection() under redis-py 5's
        # non-reentrant pool lock (a thread waited for itself forever, holding
        # a cache entry's lock).  So it only queues the connection;
        # tidy() hands it back, outside every lock.
        try:
            _ended.append((self.pool, self.conn, bool(self.owed), self.generation))
        except Exception:  # interpreter shutdown: the module's globals are gone
            pass


_ended: collections.deque[tuple[weakref.ref[Any], Any, bool, int]] = collections.deque()
"""Kept connections of ended threads, waiting to go back to their pools (deque: no lock)."""


def tidy() -> None:
    """Hand the kept connections of ended threads back to their pools.

    Runs before a thread checks a connection out (so a pool never grows for
    want of them), never under a pool's lock; tests call it directly.
    """
    while _ended:
        try:
            pool_ref, conn, owed, generation = _ended.popleft()
        except IndexError:  # another thread took the last one
            return
        pool = pool_ref()
        if pool is None or generation != fork_generation():
            continue
        try:
            if owed:
                # A thread that ended with replies unread: the server has
                # applied (or refused) what was posted; only the report is
                # lost.  Never hand a connection with stray bytes back.
                conn.disconnect()
            pool.release(conn)
        except Exception:  # a pool already closed
            pass


def _kept(pool: Any) -> _Kept | None:
    """This thread's kept connection to *pool*, or ``None`` when it must check one out."""
    local, generation = runtime.thread, fork_generation()
    if local.pool is pool and local.generation == generation:
        kept = local.kept  # the pool this thread used last: no lookup
    else:
        if redispy.is_blocking_pool(pool):
            return None
        held = local.held
        if held is None:
            held = local.held = weakref.WeakKeyDictionary()
        kept = held.get(pool)
        if kept is None or kept.generation != generation:  # a client used across fork()
            if _ended:
                tidy()
            kept = held[pool] = _Kept(pool, redispy.checkout(pool))
        local.pool, local.kept, local.generation = pool, kept, generation
    return None if kept.busy else kept


Settle = Callable[[Any], None]
"""Called with a posted request's replies (a list, error replies as exceptions), or with
the exception that made them unreadable (the connection dropped: the request may or
may not have run)."""

Pending = tuple[Client, Any, "_Kept | None", list[tuple[Any, ...]]]
"""``(client, connection or None, the kept connection it is or None, commands sent)``."""


_pool = redispy.pool_of


def single_server(client: Client) -> bool:
    """Whether *client* talks to one server over one pool (not a cluster, not a pipeline)."""
    return _pool(client) is not None


def send(client: Client, commands: list[tuple[Any, ...]]) -> Pending:
    """Write *commands* in one go on this thread's connection; :func:`receive` reads the replies."""
    pool = _pool(client)
    if pool is None:
        return (client, None, None, commands)
    kept = _kept(pool)
    if kept is not None:
        if kept.owed:
            _settle_kept(kept)  # a posted request's replies come first on this connection
        conn = kept.conn
        _drop_if_stale(kept)
    else:
        if _ended:
            tidy()
        conn = redispy.checkout(pool)
    try:
        redispy.write(conn, _packed(conn, commands))
    except BaseException:
        conn.disconnect()
        if kept is None:
            redispy.release(pool, conn)
        raise
    if kept is not None:
        kept.busy = True
    return (client, conn, kept, commands)


def receive(pending: Pending) -> list[Any]:
    """Replies to :func:`send`'s commands; an error reply is returned as its exception.

    A client without a pool runs the commands here, one by one, through
    redis-py (a cluster client routes each by its key).
    """
    client, conn, kept, commands = pending
    replies: list[Any] = []
    if conn is None:
        for command in commands:
            try:
                replies.append(client.execute_command(*command))
            except redis.ResponseError as e:
                replies.append(e)
        return replies
    try:
        for _ in commands:
            try:
                replies.append(redispy.read(conn))
            except redis.ResponseError as e:
                replies.append(e)
    except BaseException:
        # Replies may be left unread on the socket: never reuse it as it is.
        conn.disconnect()
        raise
    finally:
        if kept is not None:
            kept.busy = False
        else:
            redispy.release(redispy.pool_of(client), conn)
    return replies


def request(client: Client, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send *commands* in one write and read every reply, retrying by the client's policy."""
    pool = _pool(client)
    retry = None if pool is None else redispy.retry_of(pool)
    if retry is None:
        return receive(send(client, commands))
    return retry.call_with_retry(lambda: receive(send(client, commands)), _dropped)


def call(client: Client, *command: Any) -> Any:
    """One command's reply; an error reply is raised."""
    if _pool(client) is None:
        return client.execute_command(*command)
    (reply,) = request(client, [command])
    if isinstance(reply, Exception):
        raise reply
    return reply


def post(client: Client, commands: list[tuple[Any, ...]], settle: Settle) -> bool:
    """Write *commands* on this thread's kept connection and return without waiting for the replies.

    *settle* gets the replies when this thread next sends a request on that
    connection, or calls :func:`settle`.  Returns ``False`` (nothing sent)
    where there is no kept connection to post on: clusters, pipelines, a
    ``BlockingConnectionPool``, or a kept connection in the middle of a
    request; the caller then sends the request the usual way.
    """
    pool = _pool(client)
    kept = None if pool is None else _kept(pool)
    if kept is None:
        return False
    if kept.owed:
        _settle_kept(kept)
    conn = kept.conn
    _drop_if_stale(kept)
    try:
        redispy.write(conn, _packed(conn, commands))
    except BaseException:
        conn.disconnect()
        raise
    kept.owed.append((len(commands), settle))
    local = runtime.thread
    owed = local.owing
    if local.owing_generation != kept.generation:
        owed = local.owing = []
        local.owing_generation = kept.generation
    if kept not in owed:
        owed.append(kept)
    return True


def owing() -> bool:
    """Whether this thread has posted requests whose replies it has not read yet."""
    return bool(runtime.thread.owing)


def settle() -> None:
    """Read the replies of every request this thread posted and hand them to their *settle*."""
    local = runtime.thread
    owed = local.owing
    if not owed:
        return
    local.owing = []
    if local.owing_generation != fork_generation():
        return  # the parent's connections: never read them in a child
    for kept in owed:
        if kept.owed:
            _settle_kept(kept)


def _settle_kept(kept: _Kept) -> None:
    owed, kept.owed = kept.owed, []
    outcomes: list[tuple[Settle, Any]] = []
    conn = kept.conn
    for i, (count, done) in enumerate(owed):
        replies: list[Any] = []
        try:
            for _ in range(count):
                try:
                    replies.append(redispy.read(conn))
                except redis.ResponseError as e:
                    replies.append(e)
        except Exception as e:
            # Unreadable: this and every later reply is lost with the connection.
            conn.disconnect()
            outcomes += [(later, e) for _, later in owed[i:]]
            break
        outcomes.append((done, replies))
    # Settling may send requests (a request sent again): the connection is free now.
    for done, outcome in outcomes:
        done(outcome)


BIG_ARGUMENT = 64 * 1024
"""Arguments at least this big are written as they are, never copied into a packed request."""


def _packed(conn: Any, commands: list[tuple[Any, ...]]) -> Any:
    """The request's buffers: hiredis's packer straight away, else the connection's.

    redis-py's hiredis packer first copies every argument through a Python
    generator (to turn memoryviews into bytes); ours are str, bytes and
    int, which hiredis packs as they are.  A request carrying a big value
    is framed here instead, the value sent from its own buffer: packing
    copied an 800 KB entry twice (hiredis, then the join), about a
    millisecond per megabyte.
    """
    if _pack_command is not None:
        for command in commands:
            for arg in command:
                kind = type(arg)
                if kind is Gather or (
                    (kind is bytes or kind is memoryview) and len(arg) >= BIG_ARGUMENT
                ):
                    return _framed(commands)
        try:
            if len(commands) == 1:
                return [_pack_command(commands[0])]
            return [b"".join([_pack_command(command) for command in commands])]
        except TypeError:  # an argument hiredis does not take (bytearray, memoryview)
            pass
    return redispy.pack(conn, commands)


def _framed(commands: list[tuple[Any, ...]]) -> list[Any]:
    """RESP for *commands* as buffers to write in order; big arguments are buffers of their own."""
    parts: list[Any] = []
    small = bytearray()
    for command in commands:
        small += b"*%d\r\n" % len(command)
        for arg in command:
            if isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, int) and not isinstance(arg, bool):
                arg = b"%d" % arg
            elif isinstance(arg, float):
                arg = repr(arg).encode()
            elif type(arg) is Gather:  # one bulk string; its big parts written as they are
                small += b"$%d\r\n" % arg.nbytes
                for part in arg.parts:
                    if part.nbytes >= BIG_ARGUMENT:
                        parts.append(bytes(small))
                        parts.append(part)
                        small = bytearray()
                    else:
                        small += part
                small += b"\r\n"
                continue
            elif not isinstance(arg, (bytes, bytearray, memoryview)):
                raise TypeError(f"cannot send {type(arg).__name__} to Redis")
            size = arg.nbytes if isinstance(arg, memoryview) else len(arg)
            small += b"$%d\r\n" % size
            if size >= BIG_ARGUMENT:
                parts.append(bytes(small))
                parts.append(arg)
                small = bytearray(b"\r\n")
            else:
                small += arg
                small += b"\r\n"
    parts.append(bytes(small))
    return parts


def _drop_if_stale(kept: _Kept) -> None:
    """Disconnect the kept connection if the server closed it (restart, timeout) or it holds stray bytes.

    The pool's own check (a connection that reads as ready before a request
    is not fit for one), done with a ``poll()`` object kept for the socket:
    one system call and nothing allocated.  Anything but a plain OS socket
    (TLS, where bytes may wait above the socket; fakeredis, whose sockets
    have no real descriptor) takes redis-py's ``can_read``.  A dropped or unconnected connection connects
    again here, through ``connect()``.
    """
    conn = kept.conn
    sock = redispy.socket_of(conn)
    if sock is None:
        # Connect through connect(), which a Sentinel connection overrides to
        # ask where the primary is now (sending would reconnect to the old one);
        # once, since request() retries the whole request.
        redispy.connect_once(conn)
        return
    if kept.polled is not sock:
        kept.polled, kept.poller = sock, False
        # Only a plain OS socket: TLS keeps bytes above it, and fakeredis's
        # sockets answer fileno() with made-up numbers that may name any
        # descriptor of the process (polling one read as "stale" at random).
        if _POLL is not None and type(sock) is socket.socket:
            try:
                poller = _POLL()
                poller.register(sock, _POLL_MASK)
                kept.poller = poller
            except (TypeError, ValueError, OSError):  # no file descriptor
                pass
    if kept.poller:
        stale = bool(kept.poller.poll(0))
    else:
        try:
            stale = redispy.can_read(conn)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            stale = True
    if stale:
        conn.disconnect()
        redispy.connect_once(conn)


def _dropped(error: Exception) -> None:
    # send/receive already disconnected the connection that failed; the next
    # attempt reconnects it.
    pass
