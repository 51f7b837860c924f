"""A distributed lock on one Redis server or a Redlock quorum of several.

::

    lock = Redlock(lock_key("nightly-report"), ["redis://cache-host:6379/0"], ttl=10)
    with lock:
        write_report(fence=lock.fencing_token)

Quorum ``SET NX PX`` on every master at once, FIFO hand-over to queued
waiters, strictly increasing fencing tokens, renewal by the watchdog.  This
module does the I/O; :mod:`.policy` reads the replies, :mod:`.lua` holds the
scripts.  The algorithm and key layout are in ``docs/locks.md``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from types import EllipsisType
from typing import Any, NamedTuple

import redis

from .. import runtime
from ..errors import LockError, LockLost, LockNotOwned, LockUnavailable
from ..runtime import fork_generation
from ..storage.keys import lock_key
from ..transport.request import Command
from ..transport.wire import receive, send
from . import policy
from .holder import LOCK_CLIENT_OPTIONS, LockHolder

logger = logging.getLogger("fleche_redis.redlock")

__all__ = ["Redlock", "lock_key", "LOCK_CLIENT_OPTIONS"]


class Redlock(LockHolder):
    """A lock named by a Redis key, held on one master or a quorum of several.

    Arguments as :class:`~fleche_redis.locks.holder.LockHolder`'s: ``name``,
    ``masters``, ``ttl``, ``timeout``, ``auto_renew``, ``watchdog``.
    """

    # -- acquire ----------------------------------------------------------------

    def acquire(self, blocking: bool = True, timeout: float | None | EllipsisType = ...) -> bool:
        """Take the lock; ``True`` once held.

        Blocks up to *timeout* seconds (default: the lock's ``timeout``),
        then raises :class:`LockTimeout` (held by others) or
        :class:`LockUnavailable` (no quorum of masters answered).  With
        ``blocking=False`` it tries once and returns ``False`` instead.
        """
        with self._mutex:
            if self._generation != fork_generation():
                self._forget()  # a parent's lock: never ours to release
            if self._held or self._pending:
                raise LockError(
                    f"{self.name}: this Redlock object is already held (or its release is "
                    "unconfirmed); it is not reentrant, use one object per holder",
                    name=self.name,
                )
            self._token = token = secrets.token_hex(16)
            self._lost = False
        limit = self.timeout if isinstance(timeout, EllipsisType) else timeout
        deadline = None if limit is None or not blocking else runtime.clock() + limit
        try:
            return self._acquire(token, blocking, deadline)
        except BaseException:
            self._give_up(token)
            raise

    def _acquire(self, token: str, blocking: bool, deadline: float | None) -> bool:
        turn = _Turn(
            token, int(self.ttl * 1000), int(self.WAITER_LEASE * 1000), f"{self.name}:s:{token}",
            self._drift(self.ttl),
        )  # fmt: skip
        mode = self._mode + ("q" if blocking else "")
        home: int | None = None
        waited = False
        if blocking and self._contended and len(self.masters) == 1:
            # This object had to wait last time: attempt and wait in one
            # write, saving a round trip per turn in a busy hand-over chain.
            held, home, waited = self._pipelined_turn(turn, mode + "p", deadline)
            if held:
                return True
            mode = self._mode + "qc"
        while True:
            held, round_, start = self._round(turn, mode, waited)
            if held:
                return True
            mode = self._mode + "qc"  # from now on we may be queued
            home = policy.home(home, round_.answered)
            if not blocking:
                self._give_up(token)
                return False
            waited = True
            now = runtime.clock()
            if deadline is not None and now >= deadline:
                self._give_up(token)
                raise policy.timeout_error(
                    self.name, len(round_.answered), len(self.masters), self.quorum
                )
            wait = policy.next_wait(
                round_,
                recheck=self.RECHECK,
                split_backoff=self.SPLIT_BACKOFF,
                now=now,
                deadline=deadline,
            )
            # A fencing token here means the releaser made us the holder
            # before pushing (no extra round trip), after our last attempt.
            fence = policy.fence_of(self._wait(home, turn.signal_key, wait))
            if (
                fence is not None
                and home is not None
                and self._settle(fence, [home], start, turn.drift)
            ):
                self._contended = True
                return True

    def _round(self, turn: _Turn, mode: str, waited: bool) -> tuple[bool, policy.Round, float]:
        """One ``ACQUIRE`` on every master at once: (held, the replies read, when it started)."""
        start = runtime.clock()
        replies = self._run(
            self.ACQUIRE, self._keys, (turn.token, turn.ttl_ms, turn.lease_ms, mode)
        )
        round_ = policy.tally(replies, self.quorum)
        if round_.fence is not None:
            if self._settle(round_.fence, round_.won, start, turn.drift):
                self._contended = waited
                return True, round_, start
        elif round_.won:
            # A split vote: let others through, keep our place.
            self._release_on(turn.token, round_.won)
        return False, round_, start

    def _pipelined_turn(
        self, turn: _Turn, mode: str, deadline: float | None
    ) -> tuple[bool, int | None, bool]:
        """One attempt and a wait in a single write, on the only master: (held, home, waited).

        (On a server that lost the script, the ``BLPOP`` just times out once.)
        """
        start = runtime.clock()
        wait = policy.first_wait(self.RECHECK, start, deadline)
        attempt, signal = self._attempt_and_wait(turn, mode, wait)
        if isinstance(attempt, Exception):
            return False, None, False
        waited, fence = policy.pipelined(attempt, signal)
        if fence is not None and self._settle(fence, [0], start, turn.drift):
            self._contended = waited
            return True, 0, waited
        return False, 0, waited

    def _attempt_and_wait(self, turn: _Turn, mode: str, wait: float) -> tuple[Any, bytes | None]:
        """ACQUIRE and a BLPOP on our signal in one write: (attempt's reply, signal or ``None``)."""
        client = self.masters[0].get()
        acquire = (
            "EVALSHA",
            self.ACQUIRE.sha,
            2,
            *self._keys,
            turn.token,
            turn.ttl_ms,
            turn.lease_ms,
            mode,
        )
        try:
            attempt, popped = receive(
                send(client, [acquire, ("BLPOP", turn.signal_key, max(wait, 0.001))])
            )
        except redis.RedisError as e:
            return e, None
        if isinstance(popped, Exception) or popped is None:
            return attempt, None
        return attempt, popped[1]

    def _settle(self, fence: int, won: list[int], start: float, drift: float) -> bool:
        """Finish an acquisition held on *won*; ``False`` (and released) if it came too late."""
        token = self._token
        assert token is not None
        if len(self.masters) > 1:
            replies = self._run(self.SETTLE, self._keys, (token, fence))
            if sum(1 for r in replies.values() if r == 1) < self.quorum:
                self._release_on(token, won)
                return False
        validity = self.ttl - (runtime.clock() - start) - drift
        if validity <= 0:
            self._release_on(token, won)
            return False
        with self._mutex:
            self._held = True
            self._fence = fence
            self._valid_until = start + self.ttl - drift
            self._taken_at = runtime.clock()
            self._pending = set(range(len(self.masters)))
        if self.auto_renew:
            self._renewer().watch(self, self.ttl * self.RENEW_EVERY)
        return True

    def _wait(self, home: int | None, signal_key: str, seconds: float) -> bytes | None:
        """Block on our signal list for up to *seconds*; the value pushed, or ``None``."""
        seconds = max(seconds, 0.001)
        if home is None:
            runtime.sleep(seconds)  # nobody answered: nothing to listen to
            return None
        try:
            reply = self.masters[home].get().blpop([signal_key], timeout=seconds)
        except redis.RedisError:
            runtime.sleep(min(seconds, 0.05))
            return None
        return None if reply is None else reply[1]

    def _release_on(self, token: str, which: Sequence[int]) -> None:
        self._run(self.RELEASE, self._keys, (token, self._mode), which=which)

    def _give_up(self, token: str) -> None:
        """Leave the queue everywhere, releasing anything handed to us meanwhile."""
        with self._mutex:
            if self._held or self._token != token:
                return
            self._token = None
        try:
            self._run(self.RELEASE, self._keys, (token, self._mode + "c"))
        except Exception:  # best effort: leases and ttls clean up after us
            logger.debug("leaving the queue of %s failed", self.name, exc_info=True)

    # -- release and extend -----------------------------------------------------

    def release(self) -> None:
        """Release on every master; idempotent.

        Done once a quorum of masters confirmed (a master that stays silent
        lets the key expire).  With fewer confirmations it raises
        :class:`LockUnavailable` and keeps the token: call ``release`` again.
        Raises :class:`LockLost` if the lock had certainly expired or passed
        to another holder before this release.  Releasing a lock that is not
        held does nothing; in a forked child it forgets the parent's lock
        without touching Redis.
        """
        begun = self._begin_release()
        if begun is not None:
            token, pending, first, lost = begun
            replies = self._run(self.RELEASE, self._keys, (token, self._mode), which=pending)
            self._end_release(replies, first, lost)

    def carry_release(self) -> tuple[Command, Callable[[Any], None]] | None:
        """The release as a command for the caller to send, and what to hand its reply.

        For a lock on one master: the caller appends the command to a request
        of its own (after the writes the lock guards, in one atomic request),
        so writing and releasing cost one round trip.  It passes ``settle`` the
        command's reply, which then does what :meth:`release` would (raising
        :class:`LockLost` if the lock was lost before); ``None`` if the command
        certainly did not run (an earlier command of the request was refused:
        the lock stays held); the exception if the reply is unknown (then call
        :meth:`release` again, as after ``LockUnavailable``).  ``None`` where
        there is nothing to carry: several masters, or nothing held.
        """
        if len(self.masters) != 1:
            return None
        begun = self._begin_release()
        if begun is None:
            return None
        token, pending, first, lost = begun
        command = ("EVALSHA", self.RELEASE.sha, 2, *self._keys, token, self._mode)

        def settle(reply: Any) -> None:
            if reply is None:
                self._unbegin_release(token, first)
            else:
                self._end_release({0: reply}, first, lost)

        return command, settle

    def _begin_release(self) -> tuple[str, list[int], bool, bool] | None:
        """Mark the lock released here: (token, masters to release on, whether held, whether lost)."""
        with self._mutex:
            token = self._token
            if token is None or not (self._held or self._pending):
                return None
            if self._generation != fork_generation():
                self._forget()
                return None
            first = self._held
            self._held = False
            pending = sorted(self._pending)
            lost = self._lost
        # Not held any more, so a renewal meanwhile stops by itself; the
        # watchdog hears of it after the release is sent (_end_release), as
        # the next holder may be waiting for that request.
        return token, pending, first, lost

    def _unbegin_release(self, token: str, first: bool) -> None:
        """The release did not happen after all: held as before, renewed again."""
        with self._mutex:
            if self._token != token or not first:
                return
            self._held = True
        if self.auto_renew:
            self._renewer().watch(self, min(self.ttl * self.RENEW_EVERY, self.remaining() / 2))

    def _end_release(self, replies: dict[int, Any], first: bool, lost: bool) -> None:
        """Read the replies of a release begun by :meth:`_begin_release` (raising as ``release``)."""
        self._renewer().unwatch(self)
        confirmed = {i for i, r in replies.items() if not isinstance(r, Exception)}
        with self._mutex:
            self._pending -= confirmed
            if len(self.masters) - len(self._pending) < self.quorum:
                why = next((r for r in replies.values() if isinstance(r, Exception)), None)
                raise LockUnavailable(
                    f"{self.name}: only {len(self.masters) - len(self._pending)} master(s) confirmed "
                    "the release; the token is kept, call release() again"
                    + (f" (a master answered {why!r})" if why is not None else ""),
                    name=self.name,
                )
            # Only a first attempt can tell: a retry finds the key gone when
            # the earlier attempt's reply was lost after it ran.
            still_ours = sum(1 for i in confirmed if replies[i] == 1) + len(self._pending)
            found = "a renewal had found it gone" if lost else "the release found it gone"
            lost = lost or (first and still_ours < self.quorum)
            held = runtime.clock() - self._taken_at
            self._forget()
        if lost:
            raise LockLost(
                f"{self.name}: the lock had expired or passed to another holder before release "
                f"({found}; held {held:.2f} s, ttl {self.ttl:g} s)",
                name=self.name,
            )

    def _forget(self) -> None:
        self._token = None
        self._held = False
        self._pending = set()
        self._fence = None
        self._generation = fork_generation()

    def extend(self, ttl: float | None = None) -> None:
        """Reset the lease to *ttl* seconds (default: the lock's ttl) on a quorum.

        Raises :class:`LockNotOwned` if not held, :class:`LockLost` if a quorum
        says the token no longer holds it, :class:`LockUnavailable` if too
        few masters answered.
        """
        if not self.held:
            raise LockNotOwned(
                f"{self.name}: extend() of a lock this object does not hold", name=self.name
            )
        outcome = self._extend(ttl if ttl is not None else self.ttl)
        if outcome == "lost":
            raise LockLost(f"{self.name}: the lock was lost before extend()", name=self.name)
        if outcome == "unavailable":
            raise LockUnavailable(f"{self.name}: too few masters answered extend()", name=self.name)

    def _extend(self, ttl: float) -> str:
        token = self._token
        start = runtime.clock()
        replies = self._run(self.EXTEND, (self.name,), (token, int(ttl * 1000)))
        yes = sum(1 for r in replies.values() if r == 1)
        no = sum(1 for r in replies.values() if r == 0)
        drift = self._drift(ttl)
        with self._mutex:
            if self._token != token or not self._held:
                return "released"
            if yes >= self.quorum and runtime.clock() - start < ttl - drift:
                self._valid_until = start + ttl - drift
                return "ok"
            if no > len(self.masters) - self.quorum or runtime.clock() >= self._valid_until:
                self._lost = True
                return "lost"
            return "unavailable"

    def renew(self) -> float | None:
        """The watchdog's call: extend now, say when to come back (``None``: stop).

        Implements :class:`~fleche_redis.locks.watchdog.Renewable`.
        """
        if not self.held:
            return None
        outcome = self._extend(self.ttl)
        if outcome == "ok":
            return self.ttl * self.RENEW_EVERY
        if outcome == "unavailable":
            # Try again soon, while the lease still has time left.
            return max(0.01, min(self.RECHECK, self.remaining() / 2))
        if outcome == "lost":
            logger.warning("lock %s was lost while held (expired or taken over)", self.name)
        return None

    def _renew(self) -> float | None:
        """The former name of :meth:`renew`, kept for existing callers."""
        return self.renew()

    # -- context manager ----------------------------------------------------------

    def __enter__(self) -> Redlock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Turn(NamedTuple):
    """What one acquisition sends every round."""

    token: str
    ttl_ms: int
    lease_ms: int
    signal_key: str
    drift: float
