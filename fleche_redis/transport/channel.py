"""A storage's way to Redis in one process: its client, its circuit breaker and its error policy.

Everything outside the transport that talks to Redis on a storage's behalf
(the storage itself, the cache's single flight, maintenance) goes through
:meth:`Channel.run`, so a failure is counted, logged and turned into the
storage's documented exception in one place (see :mod:`.health`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import redis

from ..errors import RedisStorageError, SaveRefused, StorageUnavailable, UnavailableMiss
from ..metrics import StorageMetrics
from . import wire
from .connection import ClientSlot
from .health import Breaker, describe

__all__ = ["Channel", "WRITES"]

WRITES = frozenset({"put"})
"""Operations that store something: with ``on_error="miss"`` their failure is a refusal, not a miss."""


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
        try:
            result = request(self.slot.get(), *args)
        except redis.RedisError as e:
            raise self.failed(operation, e)  # noqa: B904 - __cause__ is set by fault()
        if breaker.failures:
            breaker.succeeded()
        return result

    def failed(self, operation: str, exc: redis.RedisError) -> Exception:
        """Count *exc* against the breaker; the exception the error policy raises for it."""
        self.metrics.errors += 1
        fault = self.fault(operation, exc)
        self.breaker.failed(fault)
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

    def fault(self, operation: str, exc: redis.RedisError) -> RedisStorageError:
        """*exc* as this package's exception, naming operation, server and namespace."""
        unavailable = isinstance(exc, (redis.ConnectionError, redis.TimeoutError))
        cls = StorageUnavailable if unavailable else RedisStorageError
        fault = cls(
            f"Redis {operation} on {self.server} (namespace {self.namespace!r}) failed: "
            f"{describe(exc, self.server)}",
            operation=operation,
            server=self.server,
        )
        fault.__cause__ = exc
        return fault
