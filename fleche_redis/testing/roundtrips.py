"""Counting Redis round trips, the one performance figure exact on a noisy machine.

Each request a redis-py connection writes (a command, a pipeline, a
MULTI/EXEC block) is one ``send_packed_command`` call; see docs/testing.md.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from redis.connection import AbstractConnection

from ..transport import tracking

__all__ = ["RoundTrips"]


@dataclass
class RoundTrips:
    """Counts requests sent by every redis-py connection in this process while active.

    ``commands`` keeps the first word of each request (``b"EVALSHA"``; a
    pipeline shows its first command) to make failures readable.  The near
    cache's invalidation listener is left out: its connection is the
    process's, in a thread of its own, not a request of any operation.
    """

    count: int = 0
    commands: list[bytes] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __enter__(self) -> RoundTrips:
        self._original = AbstractConnection.send_packed_command
        original = self._original
        counter, lock = self, self._lock

        def counting(conn, command, check_health=True):
            if threading.current_thread().name.startswith(tracking.THREAD_NAME):
                return original(conn, command, check_health)
            first = command[0] if isinstance(command, (list, tuple)) else command
            word = (
                bytes(first).split(b"\r\n")[2]
                if bytes(first).startswith(b"*")
                else bytes(first)[:16]
            )
            with lock:
                counter.count += 1
                counter.commands.append(word)
            return original(conn, command, check_health)

        setattr(AbstractConnection, "send_packed_command", counting)  # noqa: B010 (a method)
        return self

    def __exit__(self, *exc) -> None:
        setattr(AbstractConnection, "send_packed_command", self._original)  # noqa: B010

    def reset(self) -> None:
        with self._lock:
            self.count = 0
            self.commands.clear()
