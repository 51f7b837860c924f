"""What a Redis failure means for the caller: the error policy and the circuit breaker.

With ``on_error="raise"`` (the default) a failure is a
:class:`~fleche_redis.errors.RedisStorageError` naming server and operation.
With ``on_error="miss"`` the cache fails open: a read is a miss
(:class:`~fleche_redis.errors.UnavailableMiss`, a ``KeyError``), a write is
refused (:class:`~fleche_redis.errors.SaveRefused`, a ``SaveError``, so fleche
returns the result uncached) and an eviction is skipped, each logged once per
burst of failures.

Either way a :class:`Breaker` counts consecutive connection failures; after
``threshold`` of them it *opens* for ``cooldown`` seconds, and every operation
fails at once without touching the network, so a dead Redis costs
microseconds per call instead of a socket timeout.  The first operation
after the cool-down tries Redis again (half-open): success closes the
breaker, failure opens it for another cool-down.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from .. import runtime
from ..errors import StorageUnavailable

__all__ = ["Breaker", "POLICIES"]

logger = logging.getLogger("fleche_redis.health")

POLICIES = ("raise", "miss")


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
