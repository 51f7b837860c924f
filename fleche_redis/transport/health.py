"""What a Redis failure means for the caller: the error policy and the circuit breaker.

``on_error="raise"`` raises a :class:`~fleche_redis.errors.RedisStorageError`;
``"miss"`` fails open.  A :class:`Breaker` opened by consecutive connection
failures fails operations at once for a cool-down (see ``docs/transport.md``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import redis

from .. import runtime
from ..errors import StorageUnavailable

__all__ = ["Breaker", "POLICIES", "describe"]

logger = logging.getLogger("fleche_redis.health")

POLICIES = ("raise", "miss")


def describe(exc: Exception, server: str) -> str:
    """*exc* (from redis-py) as a sentence a person can act on; the original stays in brackets.

    The command line and the storages' exceptions say the same thing.
    """
    text = f"{type(exc).__name__}: {exc}"
    if (
        isinstance(exc, redis.AuthenticationError)
        or "NOAUTH" in str(exc)
        or "WRONGPASS" in str(exc)
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def state(self) -> str:
        if not self.open_until:
            return "closed"
        return "open" if runtime.clock() < self.open_until else "half-open"

    def blocked(self, operation: str) -> StorageUnavailable | None:
        """The error to fail *operation* with while open; ``None`` lets it through."""
        until = self.open_until
        if until and runtime.clock() < until:
            return StorageUnavailable(
                f"Redis {operation} on {self.name} skipped: circuit open for "
                f"{until - runtime.clock():.1f} s more after {self.failures} connection failures",
                operation=operation,
                server=self.name,
            )
        return None

    def failed(self, fault: Exception) -> None:
        """Count a failure; connection failures can open the breaker."""
        with self._lock:
            first = self.failures == 0
            if isinstance(fault, StorageUnavailable):
                self.failures += 1
                if self.failures >= self.threshold:
                    self.open_until = runtime.clock() + self.cooldown
                    self.opened += 1
                    logger.warning("%s; circuit open for %.1f s", fault, self.cooldown)
                    return
        if first:
            logger.warning("%s", fault)
        else:
            logger.debug("%s", fault)

    def succeeded(self) -> None:
        with self._lock:
            if self.failures:
                logger.info("Redis %s reachable again after %d failures", self.name, self.failures)
            self.failures = 0
            self.open_until = 0.0
