"""Distributed counterparts of fleche's ``PerKeyLockMixin`` and ``SerializingMixin``.

They override fleche's ``_operation_context`` hook like the in-process
mixins of ``fleche.storage.thread_safe``, but exclude every process sharing
the lock servers: one :class:`~.redlock.Redlock` per entry or per namespace,
reentrant per thread.  Reads take no lock, and a lock failure in a call
storage or cache is a ``Rejected`` save, never a failed computation; see
``docs/locks.md`` for the read policy, error policy and configuration.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NoReturn

from fleche.caches import BaseCache, Rejected
from fleche.digest import DIGEST_LENGTH
from fleche.storage.base import AmbiguousDigestError, CallStorage, Intent, OperationContext

from .. import runtime
from ..errors import LockError, LockTimeout
from ..metrics import StorageMetrics
from ..storage.backend import RedisBackend
from ..storage.keys import InvalidDigestError, KeyLayout, check_digest, check_namespace
from ..transport.connection import ClientSlot, client_from_url, redact_url
from .redlock import LOCK_CLIENT_OPTIONS, Redlock

logger = logging.getLogger("fleche_redis.locks")

__all__ = ["PerKeyLockMixin", "SerializingMixin"]


# -- process-wide state ----------------------------------------------------------


class _KeyLock:
    """This process's side of one distributed lock: which thread holds it, who needs the entry."""

    __slots__ = ("mutex", "owner", "users", "redlock")

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.owner: int | None = None
        self.users = 0
        # Used only by the thread holding ``mutex``; kept while the entry
        # lives so a busy key remembers that it is contended.
        self.redlock: Redlock | None = None


# Keyed by (lock servers, lock key), not by storage object: two storages on
# the same servers and key (a pickled copy, a value and a call storage under
# SerializingMixin) are one lock, so nesting them stays reentrant.
# A forked child starts with an empty registry: locks taken by other threads
# of the parent would never be released there.
class _Registry:
    __slots__ = ("table", "lock", "url_slots")

    def __init__(self) -> None:
        self.table: dict[tuple[Any, str], _KeyLock] = {}
        self.lock = threading.Lock()
        self.url_slots: dict[str, ClientSlot] = {}


def _registry() -> _Registry:
    return runtime.per_process("locks", _Registry)


def _url_slot(url: str) -> ClientSlot:
    """One client per lock URL per process, shared by every storage using it."""
    registry = _registry()
    slot = registry.url_slots.get(url)
    if slot is None:
        with registry.lock:
            slot = registry.url_slots.setdefault(
                url, ClientSlot(partial(client_from_url, url, **LOCK_CLIENT_OPTIONS))
            )
    return slot


@contextlib.contextmanager
def _registered(entry: tuple[Any, str]) -> Iterator[_KeyLock]:
    """This process's :class:`_KeyLock` of *entry*, kept in the registry while anyone uses it."""
    registry = _registry()
    with registry.lock:
        kl = registry.table.get(entry)
        if kl is None:
            kl = registry.table[entry] = _KeyLock()
        kl.users += 1
    try:
        yield kl
    finally:
        # Looked up again: after a fork it is the child's registry.
        registry = _registry()
        with registry.lock:
            kl.users -= 1
            if kl.users == 0 and registry.table.get(entry) is kl:
                del registry.table[entry]


class _Bypass:
    """Per-thread depth of operations that take no distributed lock (reads, prefix expansion)."""

    __slots__ = ("local",)

    def __init__(self) -> None:
        self.local = threading.local()

    def __bool__(self) -> bool:
        return getattr(self.local, "depth", 0) > 0

    def __enter__(self) -> None:
        self.local.depth = getattr(self.local, "depth", 0) + 1

    def __exit__(self, *exc: object) -> None:
        self.local.depth -= 1


class _LockState:
    """A storage's process-local lock state; pickles as a fresh one.

    Storages cross process boundaries by pickle (fleche's own storages with
    their ``__dict__``), and a lock's clients and thread-locals are only
    meaningful in the process that made them.
    """

    def __init__(self) -> None:
        self.bypass = _Bypass()
        self.masters: tuple[ClientSlot, ...] | None = None
        self.servers: Any = None
        self.metrics: StorageMetrics | None = None

    def __reduce__(self) -> tuple[type, tuple]:
        return (_LockState, ())


# -- the shared base -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _DistributedLocking(OperationContext):
    lock_urls: tuple[str, ...] = ()
    """Redis URLs of the lock servers: one, or 3/5 independent masters for a quorum."""
    lock_ttl: float = 10.0
    """Seconds a lock outlives a crashed holder; the watchdog renews it while the holder lives."""
    lock_timeout: float = 30.0
    """Seconds to wait for a lock before the operation is refused."""
    lock_namespace: str = "fleche"
    """Key prefix of the locks of storages that have no namespace of their own."""
    lock_reads: bool = False
    """Also lock ``load``/``contains``/``expand``/``shrink`` (for storages whose writes are not atomic)."""

    _lock_state: _LockState = field(init=False, repr=False, compare=False)

    def __post_init__(self, *args: Any, **kwargs: Any) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent(*args, **kwargs)
        urls = (self.lock_urls,) if isinstance(self.lock_urls, str) else tuple(self.lock_urls)
        object.__setattr__(self, "lock_urls", urls)
        if self.lock_ttl <= 0:
            raise ValueError(f"lock_ttl must be positive, got {self.lock_ttl}")
        if self.lock_timeout < 0:
            raise ValueError(f"lock_timeout must not be negative, got {self.lock_timeout}")
        check_namespace(self.lock_namespace)
        if not urls and not isinstance(self, RedisBackend):
            raise ValueError(
                f"{type(self).__name__} needs lock_urls=('redis://host:6379/0',): only fleche-redis "
                "storages have a Redis of their own to lock on"
            )
        object.__setattr__(self, "_lock_state", _LockState())

    def lock_config(self) -> dict[str, Any]:
        """The lock fields as TOML-safe configuration.

        For the ``to_config`` of a composition registered with
        ``fleche.storage.register_storage`` (see the README)::

            def to_config(self):
                return {**super().to_config(), **self.lock_config(), "type": "redis-locked"}
        """
        return {
            "lock_urls": list(self.lock_urls),
            "lock_ttl": self.lock_ttl,
            "lock_timeout": self.lock_timeout,
            "lock_namespace": self.lock_namespace,
            "lock_reads": self.lock_reads,
        }

    # -- which servers, which key ---------------------------------------------------

    def _lock_masters(self) -> tuple[tuple[ClientSlot, ...], Any]:
        state = self._lock_state
        if state.masters is None:
            if self.lock_urls:
                state.servers = self.lock_urls
                state.masters = tuple(_url_slot(u) for u in self.lock_urls)
            else:
                assert isinstance(self, RedisBackend)
                state.servers = (
                    "storage",
                    self.url,
                    id(self.client) if self.client is not None else None,
                )
                state.masters = (self.channel.slot,)
        return state.masters, state.servers

    def _lock_metrics(self) -> StorageMetrics:
        # A fleche-redis storage counts its lock waits with its other counters.
        state = self._lock_state
        if state.metrics is None:
            channel = getattr(self, "channel", None)
            state.metrics = (
                channel.metrics
                if channel is not None
                else StorageMetrics(
                    type(self).__name__,
                    ",".join(redact_url(u) for u in self.lock_urls),
                    self._lock_namespace(),
                )
            )
        return state.metrics

    def metrics(self) -> dict[str, Any]:
        """Counters of this process, lock waits included; see :mod:`fleche_redis.metrics`."""
        return self._lock_metrics().snapshot()

    def _lock_namespace(self) -> str:
        return self.namespace if isinstance(self, RedisBackend) else self.lock_namespace

    def _lock_name(self, key: Any) -> str | None:
        """The Redis key of the lock guarding *key*, or ``None`` to lock nothing."""
        raise NotImplementedError

    # -- the hook -------------------------------------------------------------------

    @contextlib.contextmanager
    def _operation_context(self, key: Any, *, intent: Intent = Intent.WRITE) -> Iterator[None]:
        name = None
        if intent is not Intent.READ and not self._lock_state.bypass:
            name = self._lock_name(key)
        if name is None:
            with super()._operation_context(key, intent=intent):
                yield
            return
        with self._hold(name), super()._operation_context(key, intent=intent):
            yield

    @contextlib.contextmanager
    def _hold(self, name: str) -> Iterator[None]:
        """Hold the lock *name*: this process's turn first, then the distributed lock."""
        masters, servers = self._lock_masters()
        with _registered((servers, name)) as kl:
            if kl.owner == threading.get_ident():  # nested: held already, no round trip
                yield
                return
            deadline = runtime.clock() + self.lock_timeout
            counts, started = self._lock_metrics(), time.perf_counter()
            # A thread of this process holding the key counts as a wait too.
            queued = self._process_turn(kl, name, counts)
            try:
                lock = self._acquire_redlock(kl, name, masters, deadline, counts)
                # The Redlock remembers whether this acquisition queued in Redis.
                counts.lock_acquired(time.perf_counter() - started, queued or lock.contended)
                with self._owning(kl, lock):
                    yield
            finally:
                kl.mutex.release()

    def _process_turn(self, kl: _KeyLock, name: str, counts: StorageMetrics) -> bool:
        """Take *kl*'s in-process mutex; whether we had to wait for it (refused after the timeout)."""
        if kl.mutex.acquire(blocking=False):
            return False
        if not kl.mutex.acquire(timeout=min(self.lock_timeout, threading.TIMEOUT_MAX)):
            counts.lock_failures += 1
            self._refuse(
                LockTimeout(
                    f"{name}: another thread of this process held it for {self.lock_timeout}s",
                    name=name,
                )
            )
        return True

    def _acquire_redlock(
        self,
        kl: _KeyLock,
        name: str,
        masters: tuple[ClientSlot, ...],
        deadline: float,
        counts: StorageMetrics,
    ) -> Redlock:
        """Acquire the key's distributed lock by *deadline* (refused if not)."""
        lock = kl.redlock
        if lock is None:
            lock = kl.redlock = Redlock(name, masters, ttl=self.lock_ttl)
        lock.ttl = self.lock_ttl
        try:
            lock.acquire(timeout=max(0.0, deadline - runtime.clock()))
        except LockError as e:
            counts.lock_failures += 1
            self._refuse(e)
        return lock

    @contextlib.contextmanager
    def _owning(self, kl: _KeyLock, lock: Redlock) -> Iterator[None]:
        """Run the operation as *kl*'s owner thread, then release *lock*."""
        kl.owner = threading.get_ident()
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            kl.owner = None
            try:
                lock.release()
            except LockError as e:
                kl.redlock = None  # an unconfirmed release: leave it to expire
                if failed:  # the operation's own error says more
                    logger.warning("%s (while handling another error)", e)
                else:
                    self._refuse(e)

    def _refuse(self, error: LockError) -> NoReturn:
        """Raise *error* as this storage's refusal (error policy: ``docs/locks.md``)."""
        if isinstance(self, (CallStorage, BaseCache)):
            raise Rejected(f"lock failure, call not recorded: {error}") from error
        raise error

    # -- reads pass through -------------------------------------------------------

    def _reads(self) -> Any:
        return contextlib.nullcontext() if self.lock_reads else self._lock_state.bypass

    def load(self, key: Any) -> Any:
        with self._reads():
            return super().load(key)

    def load_value(self, key: Any) -> Any:
        """Caches only (``fleche.caches.Cache.load_value``); a read."""
        with self._reads():
            return super().load_value(key)

    def contains(self, key: Any) -> bool:
        with self._reads():
            return super().contains(key)

    def expand(self, key: Any) -> Any:
        with self._reads():
            return super().expand(key)

    def shrink(self, *keys: Any) -> Any:
        with self._reads():
            return super().shrink(*keys)


def _lockable_digest(key: str) -> str:
    # Keys that are not digests (fleche refuses them a moment later) are
    # hashed so that braces or globs in them never reach a Redis key.
    try:
        return check_digest(key)
    except InvalidDigestError:
        return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class PerKeyLockMixin(_DistributedLocking):
    """One distributed lock per entry, across processes and hosts.

    Place before the storage or cache class::

        @dataclass(frozen=True)
        class LockedCallRedis(PerKeyLockMixin, CallRedis): ...

        calls = LockedCallRedis(url="redis://cache-host:6379/0", namespace="team-a")

    The lock of entry ``3fa9...`` is ``team-a:{c.3f}:lock:3fa9...``, in the
    entry's hash slot.  See ``docs/locks.md`` for what is locked
    and what happens when a lock cannot be had.
    """

    def _lock_name(self, key: Any) -> str | None:
        key = str(key)
        if len(key) < DIGEST_LENGTH:
            # Expanding is a read, so it takes no lock and cannot recurse
            # into this hook; then the full key is locked.
            with self._lock_state.bypass:
                try:
                    key = str(self.expand(key))
                except (KeyError, AmbiguousDigestError):
                    return None
        digest = _lockable_digest(key)
        if isinstance(self, RedisBackend):
            return self.layout.key(digest, "lock")
        return KeyLayout(self.lock_namespace, "lock").key(digest, "lock")


@dataclass(frozen=True, kw_only=True)
class SerializingMixin(_DistributedLocking):
    """One distributed lock per namespace: at most one operation at a time, anywhere.

    For storages that cannot take concurrent writers at all.  Two storages
    in one namespace share the lock, so nesting one inside the other on the
    same thread stays reentrant::

        @dataclass(frozen=True)
        class SerialPickle(SerializingMixin, ValuePickleFile): ...

        values = SerialPickle(root="/shared/cache", lock_urls=("redis://lock-host:6379/0",),
                              lock_namespace="team-a")      # lock key team-a:{team-a}:lock
    """

    def _lock_name(self, key: Any) -> str | None:
        ns = self._lock_namespace()
        return f"{ns}:{{{ns}}}:lock"
