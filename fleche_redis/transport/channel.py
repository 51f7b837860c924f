"""A storage's way to Redis in one process: its client, its circuit breaker and its error policy.

Everything outside the transport that talks to Redis on a storage's behalf
(the storage itself, the cache's single flight, maintenance) goes through
:meth:`Channel.run`, so a failure is counted, logged and turned into the
storage's documented exception in one place (see :mod:`.health`).  A failure
that a failover or a slot migration produces is retried there for up to
``failover_wait`` seconds first, for the operations in :data:`REPEATABLE`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import redis
from redis.exceptions import ClusterDownError, RedisClusterException

from .. import runtime
from ..errors import (
    NotReplicated,
    RedisStorageError,
    SaveRefused,
    ServerTooOld,
    StorageUnavailable,
    UnavailableMiss,
)
from ..metrics import StorageMetrics
from . import wire
from .connection import ClientSlot, fails_over
from .health import Backoff, Breaker, describe, passing
from .replicas import Replicas

__all__ = ["Channel", "REPEATABLE", "WRITES"]

WRITES = frozenset({"put"})
"""Operations that store something: with ``on_error="miss"`` their failure is a refusal, not a miss."""

REPEATABLE = frozenset(
    {
        # Reads.
        "get", "contains", "list", "count", "query", "expand", "info", "ping",
        "dangling_in_sample",
        # Writes whose second run leaves what the first left: entries and
        # records are content-addressed (the same key always gets the same
        # bytes), an index member or reference is added by score, evict and
        # shrink delete.
        "put", "evict", "shrink",
        # Single flight: LOOKUP claims again under the same token (a waiter
        # enlisted twice is woken twice); FINISH and EXTEND check the token.
        # A BLPOP whose reply was lost costs one wait slice, then a look.
        "lease", "wait",
    }
)  # fmt: skip
"""Operations that may be sent again after a failure that left it unknown whether they ran."""

_FAILURES = (redis.RedisError, RedisClusterException)
"""What redis-py raises for a failed request (its cluster client raises the second kind
when no node serves a slot, which is not a ``RedisError``)."""

_UNREACHABLE = (RedisClusterException, ClusterDownError)
"""Cluster failures that make the storage unavailable, as a dropped connection does."""


@dataclass(frozen=True, eq=False)
class Channel:
    """One storage's client slot, breaker, counters and error policy (``"raise"`` or ``"miss"``)."""

    slot: ClientSlot
    breaker: Breaker
    metrics: StorageMetrics
    on_error: str
    server: str
    """The server's URL, password redacted."""
    namespace: str
    failover_wait: float = 0.0
    """Seconds a failover or slot migration is ridden through by retrying (see :meth:`run`)."""
    replicas: Replicas | None = None
    """Replicas that must acknowledge a write before it counts as stored (``wait_replicas``);
    the write's request ends with ``WAIT`` (see :class:`.batch.Request`)."""

    def client(self) -> Any:
        """This process's client (built on first use, rebuilt after ``fork``)."""
        return self.slot.get()

    def run(self, operation: str, request: Callable[..., Any], *args: Any) -> Any:
        """``request(client, *args)`` against Redis under the breaker and the error policy."""
        breaker, counts = self.breaker, self.metrics
        if breaker.open_until and (blocked := breaker.blocked(operation)) is not None:
            counts.short_circuited += 1
            self.refuse(operation, blocked)
        if wire.owing():
            # A write-behind commit of this thread is still unconfirmed: read
            # its reply first, so this thread reads its own writes.
            wire.settle()
        counts.requests += 1
        if counts.requests >= counts.next_check:
            counts.check()
        client = self.slot.get()
        try:
            try:
                result = request(client, *args)
            except _FAILURES as e:
                result = self.ride(operation, e, client, request, *args)
        except NotReplicated:
            # Stored on the primary: no fault of its, so not the breaker's; an
            # error all the same, whether the first attempt or a retry met it.
            counts.errors += 1
            raise
        except ServerTooOld:
            counts.errors += 1  # no retry, breaker or miss helps before an upgrade
            raise
        if breaker.failures:
            breaker.succeeded()
        return result

    def ride(
        self, operation: str, exc: Exception, client: Any, request: Callable[..., Any], *args: Any
    ) -> Any:
        """Retry *request* with backoff while *exc* and its successors say a failover or a slot
        migration is under way, for up to ``failover_wait`` seconds; then the error policy.

        Only :data:`REPEATABLE` operations: the failed attempt may have run.
        The breaker counts one failure for the whole ride, and opens at once
        after a ride that lasted the whole wait.  The client stays the same:
        redis-py's cluster client learns the new slot map, and a connection of
        Sentinel's asks the sentinels for the primary when it reconnects.
        """
        if self.failover_wait <= 0 or operation not in REPEATABLE:
            raise self.failed(operation, exc)
        backoff, topology = Backoff(self.failover_wait), fails_over(client)
        while passing(exc, fails_over=topology):
            pause = backoff.next()
            if pause is None:
                raise self.failed(operation, exc, lasting=True)
            self.metrics.retries += 1
            runtime.sleep(pause)
            try:
                return request(client, *args)
            except _FAILURES as e:
                exc = e
        raise self.failed(operation, exc)

    def failed(self, operation: str, exc: Exception, *, lasting: bool = False) -> Exception:
        """Count *exc* against the breaker; the exception the error policy raises for it."""
        self.metrics.errors += 1
        fault = self.fault(operation, exc)
        self.breaker.failed(fault, lasting=lasting)
        try:
            self.refuse(operation, fault)
        except Exception as refused:
            return refused
        raise AssertionError("unreachable")  # pragma: no cover

    def refuse(self, operation: str, fault: RedisStorageError) -> NoReturn:
        """Raise *fault* as the policy says: itself, a refused write, or a miss."""
        if self.on_error == "raise":
            raise fault
        if operation in WRITES:
            raise SaveRefused(f"not stored: {fault}") from fault
        raise UnavailableMiss(operation, str(fault)) from fault

    def fault(self, operation: str, exc: Exception) -> RedisStorageError:
        """*exc* as this package's exception, naming operation, server and namespace."""
        unavailable = isinstance(exc, (redis.ConnectionError, redis.TimeoutError, *_UNREACHABLE))
        cls = StorageUnavailable if unavailable else RedisStorageError
        fault = cls(
            f"Redis {operation} on {self.server} (namespace {self.namespace!r}) failed: "
            f"{describe(exc, self.server)}",
            operation=operation,
            server=self.server,
        )
        fault.__cause__ = exc
        return fault
