"""The invalidation listener: Redis's server-assisted client-side caching, one connection per process and prefix.

A :class:`Listener` holds one connection of its own to a server, speaking
RESP3, and turns on ``CLIENT TRACKING ON BCAST PREFIX <prefix>``: from then
on Redis pushes on that connection the name of every key under the prefix
that anyone writes (or that expires or is evicted), and a daemon thread
hands them to its subscribers (the near caches of
:mod:`fleche_redis.storage.near`).  RESP3 push rather than RESP2's redirect
to ``__redis__:invalidate``: subscribing there needs a channel permission
that an ACL user confined to its namespace (``&<namespace>*``) lacks.  When the connection drops, the
subscribers are told to forget everything, and the thread connects again.
Where there is no single server to listen to (Redis Cluster, fakeredis),
:func:`watch` says so and nothing is cached that would need it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any, Protocol

import redis

from .. import runtime
from . import compat, redispy
from .connection import ClientSlot

__all__ = ["Subscriber", "Listener", "watch"]

logger = logging.getLogger("fleche_redis.tracking")

INVALIDATE = b"invalidate"

THREAD_NAME = "fleche-redis tracking"
"""What the listeners' threads are called (then the prefix they track)."""

CLIENT_NAME = "fleche-redis-tracking"
"""The tracking connections' name in ``CLIENT LIST``."""

IDLE_PING = 5.0
"""Seconds of silence after which the listener pings its server (a dead peer is found then)."""

PONG_TIMEOUT = 5.0
"""Seconds a ping may go unanswered before the connection is given up and made again."""

RETRY_MIN, RETRY_MAX = 0.05, 1.0
"""Seconds between two attempts to connect again, doubling from the first to the second."""

GIVE_UP = 30.0
"""Seconds a listener keeps trying to reach a server that does not answer before its thread ends.

Its subscribers hear ``tracking_ended`` and subscribe again on their next
read, so a server that went away for good (a test's, a decommissioned one)
leaves no thread behind knocking at its door every second."""


class Subscriber(Protocol):
    """What a listener tells: tracking began, these keys changed (``None``: all), tracking stopped."""

    def tracking_started(self) -> None: ...

    def invalidated(self, names: list[bytes] | None) -> None: ...

    def tracking_stopped(self) -> None: ...

    def tracking_ended(self) -> None:
        """The listener gave up on its server (``GIVE_UP``); subscribe again to track anew."""


def watch(slot: ClientSlot, prefixes: tuple[str, ...], subscriber: Subscriber) -> bool:
    """Subscribe *subscriber* to the changes of keys under *prefixes* on *slot*'s server.

    Returns ``False`` where Redis cannot track for us (Redis Cluster,
    fakeredis): then *subscriber* hears nothing.  The subscription ends
    when *subscriber* is garbage collected; the listener ends with its last
    subscriber.
    """
    if redispy.tracking_connection(slot.get()) is None:
        return False
    listeners: dict[tuple[int, tuple[str, ...]], Listener] = runtime.per_process(
        "tracking.listeners", dict
    )
    with _registry_lock:
        listener = listeners.get((id(slot), prefixes))
        if listener is None or not listener.running:
            listener = listeners[(id(slot), prefixes)] = Listener(slot, prefixes)
        listener.add(subscriber)
    return True


_registry_lock = threading.Lock()


class Listener:
    """One tracking connection and the daemon thread that reads it (see the module docstring)."""

    def __init__(self, slot: ClientSlot, prefixes: tuple[str, ...]) -> None:
        self.slot = slot  # held, so id(slot) names it as long as this listener lives
        self.prefixes = prefixes
        self.prefix = os.path.commonprefix(prefixes)
        """What the prefixes share: the listener's name in logs and its thread's."""
        self.running = True
        self.connection_id: int | None = None
        """The server's id of the tracking connection, while connected (for tests)."""
        self._subscribers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._live = False
        self._lock = threading.Lock()
        self._pause = threading.Event()  # never set: a sleep tests' clocks do not touch
        self._thread = threading.Thread(
            target=self._run, name=f"{THREAD_NAME} {self.prefix}", daemon=True
        )

    def add(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.add(subscriber)
            live = self._live
            if self._thread.ident is None:
                self._thread.start()  # now that it has someone to listen for
        if live:
            subscriber.tracking_started()

    def _tell(self, event: str, *args: Any) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            try:
                getattr(subscriber, event)(*args)
            except Exception:  # pragma: no cover - a subscriber's bug must not stop tracking
                logger.exception("tracking subscriber %r failed on %s", subscriber, event)

    def _run(self) -> None:
        delay = RETRY_MIN
        down_since: float | None = None
        while self._subscribers:
            conn = None
            try:
                conn = self._connect()
                delay, down_since = RETRY_MIN, None
                self._listen(conn)
            except redis.ResponseError as e:
                # The server refuses tracking (an ACL without CLIENT, a prefix
                # the user may not read):
                # asking again will not help.
                logger.warning(
                    "Redis refused client tracking for %s (%s); call records are not near-cached",
                    self.prefix,
                    compat.explained(self.slot.get(), e, "CLIENT"),  # names an old server's version
                )
                self._stop()
                return
            except (redis.RedisError, OSError) as e:
                logger.debug("tracking connection for %s lost: %s", self.prefix, e)
            finally:
                self._went_down()
                if conn is not None:
                    conn.disconnect()
            now = time.monotonic()
            down_since = now if down_since is None else down_since
            if now - down_since > GIVE_UP:
                logger.info("tracking for %s: no server for %.0fs, stopped", self.prefix, GIVE_UP)
                self._stop()
                self._tell("tracking_ended")
                return
            self._pause.wait(delay)
            delay = min(2 * delay, RETRY_MAX)
        self._stop()

    def _connect(self) -> Any:
        conn = redispy.tracking_connection(self.slot.get(), name=CLIENT_NAME)
        if conn is None:  # pragma: no cover - watch() checked the client
            raise redis.ConnectionError("no single server to track")
        redispy.connect(conn)
        redispy.send_command(conn, "CLIENT", "ID")
        own = int(redispy.read_push(conn))
        redispy.send_command(
            conn,
            "CLIENT",
            "TRACKING",
            "ON",
            "BCAST",
            *(word for prefix in self.prefixes for word in ("PREFIX", prefix)),
        )
        redispy.read_push(conn)
        self.connection_id = own
        with self._lock:
            self._live = True
        self._tell("tracking_started")
        return conn

    def _listen(self, conn: Any) -> None:
        # Its own clock, not runtime.clock: this is the socket's health, which
        # a test driving the package's deadlines must not fake.
        silent_since = time.monotonic()
        pinged = False
        while self._subscribers:
            if not redispy.wait_readable(conn, 1.0):
                silence = time.monotonic() - silent_since
                if pinged and silence > PONG_TIMEOUT:
                    raise redis.ConnectionError("tracking connection: no answer to PING")
                if not pinged and silence > IDLE_PING:
                    redispy.send_command(conn, "PING")
                    pinged, silent_since = True, time.monotonic()
                continue
            reply = redispy.read_push(conn)
            silent_since, pinged = time.monotonic(), False
            if isinstance(reply, list) and len(reply) == 2 and reply[0] == INVALIDATE:
                names = reply[1]
                self._tell("invalidated", None if names is None else list(names))

    def _went_down(self) -> None:
        self.connection_id = None
        with self._lock:
            was_live, self._live = self._live, False
        if was_live:
            self._tell("tracking_stopped")

    def _stop(self) -> None:
        self.running = False
        self._went_down()
