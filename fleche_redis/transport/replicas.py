"""Replica-acknowledged writes: the ``WAIT`` a durable write request ends with, and its verdict.

``WAIT`` counts the replicas that acknowledged every write made *on its own
connection*, so it must follow the writes in the same request on the same
connection (:func:`.request.send` puts it there; on Redis Cluster, once per
primary).  Inside ``MULTI`` it would not block, so it goes after ``EXEC``.
What it guarantees and what it does not: ``docs/storage.md`` (Durability).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import NotReplicated

__all__ = ["Replicas", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 0.5
"""Seconds a write waits for its replicas by default: replication lag on a sound
network is well under a millisecond, so half a second only ends a wait for a
replica that is stopped, cut off or far behind; and it stays below the
storages' default ``socket_timeout`` (2 s), which must outlast the wait."""


@dataclass(frozen=True)
class Replicas:
    """How many replicas must acknowledge a write (``count``), within ``timeout`` seconds."""

    count: int
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        check(self.count, self.timeout)

    def command(self) -> tuple[Any, ...]:
        # WAIT's 0 means "forever": the timeout is at least one millisecond.
        return ("WAIT", self.count, max(1, round(self.timeout * 1000)))

    def refusal(self, reply: Any, server: str) -> Exception | None:
        """What ``WAIT``'s *reply* means: ``None`` (acknowledged), an error reply, or NotReplicated."""
        if isinstance(reply, Exception):
            return reply
        acknowledged = int(reply)
        if acknowledged >= self.count:
            return None
        return NotReplicated(
            f"write on {server} acknowledged by {acknowledged} of the {self.count} replica(s) "
            f"wanted within {self.timeout:g} s: it is on the primary, but a failover may lose it",
            acknowledged=acknowledged,
            wanted=self.count,
            server=server,
        )


def check(count: int, timeout: float, socket_timeout: float | None = None) -> None:
    """Raise ``ValueError`` for a replica count or wait that makes no sense."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"wait_replicas must be an integer >= 0, not {count!r}")
    if not timeout > 0:
        raise ValueError(f"wait_replicas_timeout must be > 0 seconds, not {timeout!r}")
    if socket_timeout is not None and count and not timeout < socket_timeout:
        raise ValueError(
            f"wait_replicas_timeout ({timeout:g} s) must be shorter than socket_timeout "
            f"({socket_timeout:g} s): the reply to WAIT comes only when the wait ends"
        )
