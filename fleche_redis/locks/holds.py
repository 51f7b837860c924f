"""This process's side of the locks the mixins take: in-process locks by key, and one operation's hold.

:mod:`.mixins` decides which lock an operation needs and what a refusal
is; this module takes it: this process's turn first (other threads of the
process wait on an in-process lock), then the :class:`~.redlock.Redlock`,
then, after the operation, the release, which the operation's last write
may carry in its own request (:meth:`Hold.carry`).  See ``docs/locks.md``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

from .. import runtime
from ..errors import LockError, LockTimeout
from ..metrics import StorageMetrics
from ..storage.calls import write_fences
from ..transport import request
from ..transport.connection import ClientSlot, client_from_url
from ..transport.request import Command
from ..transport.scripts import LuaScript
from .redlock import LOCK_CLIENT_OPTIONS, Redlock

logger = logging.getLogger("fleche_redis.locks")

__all__ = [
    "IDLE_LOCKS",
    "KeyLock",
    "Registry",
    "registry",
    "url_slot",
    "saving",
    "Settings",
    "Hold",
]

IDLE_LOCKS = 1024
"""Locks of keys no thread uses, kept per process for the next operation on the key."""


class KeyLock:
    """This process's side of one distributed lock: which thread holds it, who needs the entry."""

    __slots__ = ("mutex", "owner", "users", "redlock", "hold")

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.owner: int | None = None
        self.users = 0
        # Used only by the thread holding ``mutex``.  Kept between operations
        # (see Registry.idle): a busy key's Redlock remembers that it is
        # contended, so its next turn asks and waits in one request.
        self.redlock: Redlock | None = None
        self.hold: Hold | None = None  # the owner thread's outermost hold


# Keyed by (lock servers, lock key), not by storage object: two storages on
# the same servers and key (a pickled copy, a value and a call storage under
# SerializingMixin) are one lock, so nesting them stays reentrant.
# A forked child starts with an empty registry: locks taken by other threads
# of the parent would never be released there.
class Registry:
    __slots__ = ("table", "idle", "lock", "url_slots")

    def __init__(self) -> None:
        self.table: dict[tuple[Any, str], KeyLock] = {}
        # The most recently used last; bounded by IDLE_LOCKS.
        self.idle: OrderedDict[tuple[Any, str], KeyLock] = OrderedDict()
        self.lock = threading.Lock()
        self.url_slots: dict[str, ClientSlot] = {}

    def enter(self, entry: tuple[Any, str]) -> KeyLock:
        """The :class:`KeyLock` of *entry*, kept in the table until :meth:`leave`."""
        with self.lock:
            kl = self.table.get(entry)
            if kl is None:
                kl = self.idle.pop(entry, None) or KeyLock()
                self.table[entry] = kl
            kl.users += 1
        return kl

    def leave(self, entry: tuple[Any, str], kl: KeyLock) -> None:
        with self.lock:
            kl.users -= 1
            if kl.users == 0 and self.table.get(entry) is kl:
                del self.table[entry]
                if kl.redlock is not None:
                    self.idle[entry] = kl
                    while len(self.idle) > IDLE_LOCKS:
                        self.idle.popitem(last=False)


def registry() -> Registry:
    return runtime.per_process("locks", Registry)


def url_slot(url: str) -> ClientSlot:
    """One client per lock URL per process, shared by every storage using it."""
    reg = registry()
    slot = reg.url_slots.get(url)
    if slot is None:
        with reg.lock:
            slot = reg.url_slots.setdefault(
                url, ClientSlot(partial(client_from_url, url, **LOCK_CLIENT_OPTIONS))
            )
    return slot


saving = threading.local()
"""``saving.marker``: the innermost ``save`` on this thread of a storage whose
writes may carry their lock's release (see ``_DistributedLocking.save``)."""


class Settings:
    """What a hold needs of its storage, gathered once per storage and process."""

    __slots__ = ("ttl", "timeout", "counts", "refuse")

    def __init__(
        self,
        ttl: float,
        timeout: float,
        counts: StorageMetrics,
        refuse: Callable[[LockError], Any],
    ) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self.counts = counts
        self.refuse = refuse  # raises the lock error as the storage's refusal


class Hold:
    """One operation's hold of a lock: the registry entry, this process's turn, the Redlock.

    A class rather than a generator: with 4 processes on one key this path
    runs thousands of times a second, and every layer of ``contextlib``
    costs a few microseconds of each turn.
    """

    __slots__ = (
        "settings", "name", "masters", "entry", "inner", "kl", "lock", "opened_by", "carried",
        "lost", "digest", "outer_fence",
    )  # fmt: skip

    def __init__(
        self,
        settings: Settings,
        name: str,
        masters: tuple[ClientSlot, ...],
        entry: tuple[Any, str],
        inner: contextlib.AbstractContextManager[None],
        digest: str | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.masters = masters
        self.entry = entry
        self.inner = inner
        self.kl: KeyLock | None = None
        self.lock: Redlock | None = None
        self.opened_by: object = None  # the save() this hold was taken for
        self.carried = False  # a write sent the release already
        self.lost: LockError | None = None  # what that release found
        self.digest = digest  # the record this lock fences (PerKeyLockMixin), or None
        self.outer_fence: int | None = None  # another lock's fence on the digest, put back after

    def __enter__(self) -> None:
        self._acquire()
        try:
            self.inner.__enter__()
        except BaseException:
            self._release(failed=True)
            raise

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        try:
            suppressed = bool(self.inner.__exit__(exc_type, exc, tb))
        except BaseException:
            self._release(failed=True)
            raise
        self._release(failed=exc_type is not None and not suppressed)
        return suppressed

    # -- taking it ------------------------------------------------------------------

    def _acquire(self) -> None:
        kl = self.kl = registry().enter(self.entry)
        try:
            me = threading.get_ident()
            if kl.owner == me:  # nested: held already, no round trip
                outer = kl.hold
                if outer is not None and outer.carried:
                    outer.reacquire()
                return
            settings = self.settings
            counts, started = settings.counts, time.perf_counter()
            deadline = runtime.clock() + settings.timeout
            # A thread of this process holding the key counts as a wait too.
            queued = not kl.mutex.acquire(blocking=False) and self._process_turn(kl)
            try:
                lock = self._acquire_redlock(kl, deadline)
            except BaseException:
                kl.mutex.release()
                raise
            # The Redlock remembers whether this acquisition queued in Redis.
            counts.lock_acquired(time.perf_counter() - started, queued or lock.contended)
            kl.owner = me
            kl.hold = self
            self.lock = lock
            self.opened_by = getattr(saving, "marker", None)
            self._fence(lock)
        except BaseException:
            self._leave()
            raise

    def _process_turn(self, kl: KeyLock) -> bool:
        """Wait for *kl*'s in-process mutex, held by another thread (refused after the timeout); ``True``."""
        timeout = self.settings.timeout
        if not kl.mutex.acquire(timeout=min(timeout, threading.TIMEOUT_MAX)):
            self.settings.counts.lock_failures += 1
            self.settings.refuse(
                LockTimeout(
                    f"{self.name}: another thread of this process held it for {timeout}s",
                    name=self.name,
                )
            )
        return True

    def _acquire_redlock(self, kl: KeyLock, deadline: float) -> Redlock:
        """Acquire the key's distributed lock by *deadline* (refused if not)."""
        settings = self.settings
        lock = kl.redlock
        if lock is None or lock.masters != self.masters:
            # (Another storage on the same servers made the kept one: its clients.)
            lock = kl.redlock = Redlock(self.name, self.masters, ttl=settings.ttl)
        lock.ttl = settings.ttl
        try:
            lock.acquire(timeout=max(0.0, deadline - runtime.clock()))
        except LockError as e:
            settings.counts.lock_failures += 1
            settings.refuse(e)
        return lock

    def reacquire(self) -> None:
        """Hold the lock again after a write carried its release (an operation that goes on)."""
        assert self.kl is not None
        self.lock = self._acquire_redlock(self.kl, runtime.clock() + self.settings.timeout)
        self.carried = False
        self._fence(self.lock, again=True)

    def _fence(self, lock: Redlock, again: bool = False) -> None:
        """Let this thread's writes of the fenced record carry *lock*'s fencing token."""
        fence, digest = lock.fencing_token, self.digest
        if digest is None or fence is None:
            return
        held = write_fences().held
        if not again:
            self.outer_fence = held.get(digest)  # a lock of another storage, around this one
        held[digest] = fence

    def _unfence(self) -> None:
        digest = self.digest
        if digest is not None:
            held = write_fences().held
            if self.outer_fence is None:
                held.pop(digest, None)
            else:
                held[digest] = self.outer_fence

    # -- letting it go ----------------------------------------------------------------

    def _release(self, failed: bool) -> None:
        lock, kl = self.lock, self.kl
        if lock is None:  # nested
            self._leave()
            return
        assert kl is not None
        self.lock = None
        self._unfence()
        try:
            self._release_redlock(kl, lock, failed)
        finally:
            # Bookkeeping after the release request: the next holder may be waiting for it.
            kl.owner = kl.hold = None
            kl.mutex.release()
            self._leave()

    def _release_redlock(self, kl: KeyLock, lock: Redlock, failed: bool) -> None:
        """Release *lock* after the operation (*failed*: it raised, and its error says more)."""
        lost = self.lost  # what a release carried by the operation's last write found
        try:
            lock.release()  # nothing to send after a carried release
        except LockError as e:
            kl.redlock = None  # an unconfirmed release: leave it to expire
            lost = e
        if lost is not None:
            if failed:
                logger.warning("%s (while handling another error)", lost)
            else:
                self.settings.refuse(lost)

    def _leave(self) -> None:
        # Looked up again: after a fork it is the child's registry.
        if self.kl is not None:
            registry().leave(self.entry, self.kl)
            self.kl = None

    # -- the last write carries the release ------------------------------------------

    def carry(self, client: Any, commands: list[Command], scripts: tuple[LuaScript, ...]) -> None:
        """Send *commands* (recorded writes) and the lock's release as one atomic request.

        The release runs after the writes, in the same ``MULTI``/``EXEC`` or
        script, so "the lock was still ours" means it was ours when they ran.
        A write refused by the server stops the release: the lock stays held
        and is released at the end of the operation, as usual.
        """
        lock = self.lock
        carried = None if lock is None else lock.carry_release()
        if lock is None or carried is None:
            request.send(client, commands, scripts=scripts, bundled=True)
            return
        release, settle = carried
        self.carried = True
        try:
            replies = request.send(
                client,
                [*commands, release],
                scripts=(*scripts, lock.RELEASE),
                bundled=True,
                raise_errors=False,
            )
        except BaseException as e:
            self._settle(settle, e)  # unknown: release() again at the end
            raise
        reply = replies[-1]
        if isinstance(reply, Exception):
            self._settle(settle, None)  # the writes were refused, the release never ran
            raise reply
        self._settle(settle, reply[-1])

    def _settle(self, settle: Callable[[Any], None], reply: Any) -> None:
        unsent = reply is None or isinstance(reply, BaseException)
        try:
            settle(reply)
        except LockError as e:
            # Unknown whether it ran: the release at the end asks again and says.
            if not unsent:
                self.lost = e
        if unsent:
            self.carried = False
