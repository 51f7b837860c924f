"""A lock object's state and its masters: which servers, which token, held until when.

Apart from :mod:`.redlock` (taking, releasing and renewing) so that each
module has one job; the decisions on replies are in :mod:`.policy`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from .. import runtime
from ..runtime import fork_generation
from ..storage.keys import lock_tag_end
from ..transport.connection import ClientSlot, client_from_url
from ..transport.fanout import run_script
from ..transport.health import Backoff, passing
from ..transport.scripts import LuaScript
from . import lua as redlock_lua
from . import watchdog as _watchdog

__all__ = ["LockHolder", "LOCK_CLIENT_OPTIONS"]

LOCK_CLIENT_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0}
"""Options of the clients a lock builds from URLs.

Short timeouts: a master that hangs must cost a bounded part of the
validity, never block an acquisition (socket_timeout > ``RECHECK``, so a
waiter's ``BLPOP`` is never cut short).
"""


class LockHolder:
    """What one lock object knows (its masters, token, fence, lease) and how it asks its masters.

    :class:`~fleche_redis.locks.redlock.Redlock` adds taking, releasing and
    renewing the lock.

    Args:
        name: the lock's key, ``<namespace>:{<tag>}...`` (see :func:`lock_key`).
        masters: URLs, redis-py clients or :class:`~fleche_redis.transport.connection.ClientSlot`
            objects of independent masters (1, 3 or 5; a ``redis+cluster://``
            URL counts as one).
        ttl: seconds the lock lives without renewal; also what a crashed
            holder costs the others.
        timeout: default seconds ``acquire`` blocks (``None``: forever).
        auto_renew: let the process's watchdog renew the lock while held.
        watchdog: the renewer to register with (default: the process's own).
    """

    ACQUIRE: ClassVar[LuaScript] = redlock_lua.ACQUIRE
    RELEASE: ClassVar[LuaScript] = redlock_lua.RELEASE
    EXTEND: ClassVar[LuaScript] = redlock_lua.EXTEND
    SETTLE: ClassVar[LuaScript] = redlock_lua.SETTLE

    RIDE: ClassVar[float] = 5.0
    """Seconds a script refused by a moving slot or a reconfiguring cluster is asked again (see ``_run``)."""
    RECHECK: ClassVar[float] = 0.2
    """Longest a waiter blocks before checking again (bounds a lost wakeup)."""

    WAITER_LEASE: ClassVar[float] = 5.0
    """Seconds a queued waiter stays in line without checking in."""

    DRIFT_FACTOR: ClassVar[float] = 0.01
    """Clock drift allowed for, as a fraction of the ttl (plus 2 ms)."""

    RENEW_EVERY: ClassVar[float] = 1 / 3
    """Renewal period as a fraction of the ttl."""

    SPLIT_BACKOFF: ClassVar[float] = 0.02
    """Upper bound of the random pause after a split vote among several masters."""

    def __init__(
        self,
        name: str,
        masters: Sequence[Any] | str,
        *,
        ttl: float = 10.0,
        timeout: float | None = None,
        auto_renew: bool = True,
        watchdog: _watchdog.Watchdog | None = None,
    ) -> None:
        tag_end = lock_tag_end(name)
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        if isinstance(masters, str):
            masters = (masters,)
        self.name = name
        self.masters: tuple[ClientSlot, ...] = tuple(_slot(m) for m in masters)
        if not self.masters:
            raise ValueError("a Redlock needs at least one master")
        self.quorum = len(self.masters) // 2 + 1
        self.ttl = float(ttl)
        self.timeout = timeout
        self.auto_renew = auto_renew
        self._watchdog = watchdog
        self._mode = "f" if len(self.masters) == 1 else "w"
        self._keys = (name, f"{name[:tag_end]}:fence")
        self._mutex = threading.Lock()
        self._token: str | None = None
        self._held = False
        self._pending: set[int] = set()
        self._fence: int | None = None
        self._valid_until = 0.0
        self._taken_at = 0.0  # when the lock was last won: a LockLost says how long it was held
        self._lost = False
        self._contended = False
        self._generation = fork_generation()

    def __repr__(self) -> str:
        state = "held" if self.held else ("lost" if self._lost else "free")
        return f"<Redlock {self.name!r} on {len(self.masters)} master(s), {state}>"

    # -- state ----------------------------------------------------------------

    @property
    def held(self) -> bool:
        """Whether this object holds the lock: acquired, not found lost, and its lease not run out.

        The lease counts even when no renewal could tell (Redis unreachable):
        past it, the lock is never assumed held.
        """
        return (
            self._held
            and not self._lost
            and self._generation == fork_generation()
            and runtime.clock() < self._valid_until
        )

    @property
    def lost(self) -> bool:
        """Whether a renewal found the lock expired or taken while it was held."""
        return self._lost

    @property
    def fencing_token(self) -> int | None:
        """The current acquisition's token: greater than every earlier holder's."""
        return self._fence if self._held else None

    @property
    def contended(self) -> bool:
        """Whether the last acquisition had to wait its turn in Redis (it queued)."""
        return self._contended

    def remaining(self) -> float:
        """Seconds the lock is still safely held (0 when not held)."""
        if not self.held:
            return 0.0
        return max(0.0, self._valid_until - runtime.clock())

    def _drift(self, ttl: float) -> float:
        # Clocks of client and servers may run at slightly different rates.
        return ttl * self.DRIFT_FACTOR + 0.002

    def _renewer(self) -> _watchdog.Watchdog:
        return _watchdog.shared() if self._watchdog is None else self._watchdog

    # -- keys and transport -----------------------------------------------------

    def _run(
        self,
        script: LuaScript,
        keys: Sequence[str],
        args: Sequence[Any],
        which: Sequence[int] | None = None,
    ) -> dict[int, Any]:
        """Run *script* on the chosen masters at once; reply or exception per master index.

        A master that refused it because its slot is moving or its cluster
        is reconfiguring (``TRYAGAIN``, ``ASK``, ``CLUSTERDOWN``, ...: the
        script did not run) is asked again, with backoff, for up to
        :attr:`RIDE` seconds, and so is one stopped at a key of a migrating
        slot that is not on its node (``health.NOT_HERE_YET``: it wrote nothing);
        dropped connections are not (the script may have run), and stay the
        caller's to judge.
        """
        which = range(len(self.masters)) if which is None else which
        replies = run_script({i: self.masters[i] for i in which}, script, keys, args)
        backoff = None
        while again := [i for i, r in replies.items() if _refused_for_now(r)]:
            backoff = backoff or Backoff(self.RIDE)
            pause = backoff.next()
            if pause is None:
                break
            runtime.sleep(pause)
            replies.update(run_script({i: self.masters[i] for i in again}, script, keys, args))
        return replies


def _refused_for_now(reply: Any) -> bool:
    return isinstance(reply, Exception) and passing(reply, fails_over=False)


def _slot(master: Any) -> ClientSlot:
    if isinstance(master, ClientSlot):
        return master
    if isinstance(master, str):
        url = master
        return ClientSlot(lambda: client_from_url(url, **LOCK_CLIENT_OPTIONS))
    return ClientSlot(lambda: master, given=master)
