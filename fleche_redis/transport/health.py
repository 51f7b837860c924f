"""What a Redis failure means for the caller: the error policy and the circuit breaker.

``on_error="raise"`` raises a :class:`~fleche_redis.errors.RedisStorageError`;
``"miss"`` fails open.  A :class:`Breaker` opened by consecutive connection
failures fails operations at once for a cool-down; :func:`passing` names the
failures a failover or a slot migration produces, which a storage rides
through for ``failover_wait`` seconds first (see ``docs/transport.md``).
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass, field

import redis
from redis import exceptions as rx

from .. import runtime
from ..errors import StorageUnavailable

__all__ = ["Backoff", "Breaker", "Bursts", "POLICIES", "describe", "kind_of", "passing"]

logger = logging.getLogger("fleche_redis.health")

POLICIES = ("raise", "miss")


def describe(exc: Exception, server: str) -> str:
    """*exc* (from redis-py) as a sentence a person can act on; the original stays in brackets.

    The command line and the storages' exceptions say the same thing.
    """
    text = f"{type(exc).__name__}: {exc}"
    # redis-py 6+ meets the password in HELLO (AuthenticationError); older ones
    # in the first command: NOAUTH, or "unauthenticated" for a long request.
    if isinstance(exc, redis.AuthenticationError) or any(
        word in str(exc) for word in ("NOAUTH", "WRONGPASS", "unauthenticated")
    ):
        if "@" not in server:
            return (
                f"Redis at {server} requires a password; put it in the URL: "
                f"redis://[user]:PASSWORD@host:port/db ({text})"
            )
        return f"authentication failed at {server}: wrong user name or password ({text})"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return (
            f"the Redis user lacks a permission at {server} ({text}); an ACL must allow "
            "the namespace's keys (~<namespace>:*) and the commands fleche-redis uses"
        )
    return text


CONNECTION_KINDS = ("ConnectionError", "TimeoutError")

RECONFIGURING = ("CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK", "MASTERDOWN", "LOADING", "READONLY")
"""Error replies of a server whose cluster or replication is changing under it."""

NOT_HERE_YET = "Script attempted to access a non local key"
"""How a node stops a script that touched a key of a migrating slot that is not on it.

Every script of the package touches all the keys it may write before its
first write (``storage/lua.py``, ``locks/lua.py``), and the rest declare
every key they touch (refused before they run), so a script stopped this
way wrote nothing and is sent again, like one refused with ``TRYAGAIN``."""

_RECONFIGURING = (
    rx.ClusterError,
    rx.AskError,
    rx.TryAgainError,
    rx.ReadOnlyError,
    rx.BusyLoadingError,
    rx.SlotNotCoveredError,
)
"""redis-py's classes for them (``ClusterError`` also covers its "TTL exhausted" after a
storm of redirections, ``AskError`` covers ``MovedError``; its cluster client raises
``SlotNotCoveredError`` while no node serves a slot)."""

_NOT_PASSING = (rx.AuthenticationError, rx.AuthorizationError, rx.MaxConnectionsError)
"""Connection errors that a failover does not cause and does not end."""


def passing(exc: BaseException, *, fails_over: bool) -> bool:
    """Whether *exc* is what a failover or a slot migration produces while it lasts.

    Replies such as ``TRYAGAIN`` or ``CLUSTERDOWN`` say so on any server.
    A refused or dropped connection says so only where another server takes
    over (*fails_over*: Redis Cluster, Sentinel); on a single server it is an
    outage, left to the breaker at once.
    """
    if isinstance(exc, _RECONFIGURING):
        return True
    if isinstance(exc, redis.ResponseError):
        text = str(exc)
        return text.split(" ", 1)[0] in RECONFIGURING or NOT_HERE_YET in text
    if isinstance(exc, _NOT_PASSING):
        return False
    return fails_over and isinstance(
        exc, (redis.ConnectionError, redis.TimeoutError, rx.RedisClusterException)
    )


@dataclass
class Backoff:
    """Pauses between retries through a failover: doubling from *first* up to *cap*, with
    jitter so the workers of a fleet do not retry in step; ``None`` once *wait* seconds
    (counted from construction) would be over."""

    wait: float
    first: float = 0.02
    cap: float = 0.5
    start: float = field(default_factory=lambda: runtime.clock())
    attempts: int = 0

    def next(self) -> float | None:
        pause = min(self.cap, self.first * 2**self.attempts) * (0.5 + random.random() / 2)
        if runtime.clock() + pause - self.start > self.wait:
            return None
        self.attempts += 1
        return pause


def kind_of(fault: BaseException) -> str:
    """What kind of failure *fault* is, for counting bursts: the redis-py error, and a refusal's code."""
    cause = fault.__cause__ if fault.__cause__ is not None else fault
    if isinstance(cause, (redis.ConnectionError, redis.TimeoutError)):
        return "TimeoutError" if isinstance(cause, redis.TimeoutError) else "ConnectionError"
    if isinstance(cause, redis.ResponseError):
        return f"{type(cause).__name__} {str(cause).split(' ', 1)[0]}"  # e.g. WRONGTYPE, OOM
    return type(cause).__name__


@dataclass
class Bursts:
    """Which kinds of failure are in a burst now, so each burst logs one warning.

    A burst of a kind starts with a failure after ``quiet`` seconds without
    one; its first failure is a warning, the rest are debug lines, with a
    reminder (and how many went unlogged) every ``remind`` seconds while it
    lasts.  Successes of other operations do not end it: under ``OOM`` reads
    keep working while every write fails.
    """

    quiet: float = 60.0
    remind: float = 300.0
    _seen: dict[str, list[float]] = field(default_factory=dict, repr=False)
    """kind -> [last warned, last failed, failures since the warning]"""

    def level(self, kind: str) -> tuple[int, int]:
        """The log level of one more failure of *kind*, and how many went unlogged since the last warning."""
        now = runtime.clock()
        seen = self._seen.get(kind)
        if seen is None or now - seen[1] > self.quiet:
            self._seen[kind] = [now, now, 0]
            return logging.WARNING, 0
        seen[1] = now
        if now - seen[0] >= self.remind:
            unlogged = int(seen[2])
            seen[0], seen[2] = now, 0
            return logging.WARNING, unlogged
        seen[2] += 1
        return logging.DEBUG, 0

    def end(self, *kinds: str) -> None:
        """The bursts of *kinds* are over: their next failure warns again."""
        for kind in kinds:
            self._seen.pop(kind, None)


def _more(unlogged: int) -> str:
    return f" ({unlogged} more like it since the last warning)" if unlogged else ""


@dataclass
class Breaker:
    """Consecutive-failure counter and open/closed state of one storage in one process."""

    threshold: int = 3
    cooldown: float = 5.0
    name: str = "redis"
    failures: int = 0
    open_until: float = 0.0
    opened: int = 0
    """How many times the breaker opened (an observable for metrics and tests)."""
    probing_until: float = 0.0
    """While half-open: one operation probes, and the others fail at once until then."""
    bursts: Bursts = field(default=None, repr=False)  # type: ignore[assignment]
    """Shared by every breaker of one server in this process: a cache's storages warn once."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.bursts is None:
            self.bursts = runtime.per_process("health.bursts", dict).setdefault(self.name, Bursts())

    @property
    def state(self) -> str:
        if not self.open_until:
            return "closed"
        return "open" if runtime.clock() < self.open_until else "half-open"

    def blocked(self, operation: str) -> StorageUnavailable | None:
        """The error to fail *operation* with while open; ``None`` lets it through.

        Half-open, the first operation through is the probe; the others fail at
        once until it succeeds or fails (or a cool-down passes without either).
        """
        until = self.open_until
        if not until:
            return None
        now = runtime.clock()
        if now < until:
            return StorageUnavailable(
                f"Redis {operation} on {self.name} skipped: circuit open for "
                f"{until - now:.1f} s more after {self.failures} connection failures",
                operation=operation,
                server=self.name,
            )
        with self._lock:
            if now >= self.probing_until:
                self.probing_until = now + self.cooldown
                return None
        return StorageUnavailable(
            f"Redis {operation} on {self.name} skipped: circuit half-open, "
            f"another operation is probing after {self.failures} connection failures",
            operation=operation,
            server=self.name,
        )

    def failed(self, fault: Exception, *, lasting: bool = False) -> None:
        """Count a failure; connection failures can open the breaker.  Logged once per burst.

        A *lasting* one went on through a whole ``failover_wait`` of retries:
        it opens the breaker at once, or an outage would cost ``threshold``
        callers that wait each.
        """
        opening = False
        with self._lock:
            self.probing_until = 0.0  # a probe has its answer
            if isinstance(fault, StorageUnavailable):
                self.failures = max(self.failures + 1, self.threshold if lasting else 0)
                if self.failures >= self.threshold:
                    self.open_until = runtime.clock() + self.cooldown
                    self.opened += 1
                    opening = True
            kind = "circuit" if opening else kind_of(fault)
            level, unlogged = self.bursts.level(kind)
        if opening:
            logger.log(
                level, "%s; circuit open for %.1f s%s", fault, self.cooldown, _more(unlogged)
            )
        else:
            logger.log(level, "%s%s", fault, _more(unlogged))

    def succeeded(self) -> None:
        with self._lock:
            if self.failures:
                logger.info("Redis %s reachable again after %d failures", self.name, self.failures)
                self.bursts.end(*CONNECTION_KINDS, "circuit")  # the outage is over
            self.failures = 0
            self.open_until = 0.0
            self.probing_until = 0.0
