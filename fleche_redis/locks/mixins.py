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
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn

from fleche.caches import BaseCache, Rejected
from fleche.digest import DIGEST_LENGTH
from fleche.storage.base import AmbiguousDigestError, CallStorage, Intent, OperationContext
from redis.exceptions import ResponseError

from ..errors import LockError, LockLost
from ..metrics import StorageMetrics
from ..storage.backend import RedisBackend
from ..storage.calls import stale_write
from ..storage.keys import InvalidDigestError, KeyLayout, check_digest, check_namespace
from ..transport import wire
from ..transport.batch import Recorder
from ..transport.connection import ClientSlot, redact_url
from .holds import Hold, Settings, registry, saving, url_slot

__all__ = ["PerKeyLockMixin", "SerializingMixin"]


NAMES_KEPT = 4096
"""Lock names a storage remembers by key (then it starts again)."""


class _Bypass(threading.local):
    """Per-thread depth of operations that take no distributed lock (reads, prefix expansion)."""

    depth = 0  # each thread starts at 0

    def __enter__(self) -> None:
        self.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1


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
        self.settings: Settings | None = None
        # Full keys to their lock's name (PerKeyLockMixin), so a busy key
        # skips checking and formatting it every time; bounded.
        self.names: dict[str, str] = {}

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

    _fences_records: ClassVar[bool] = False
    """Whether a record written under the lock carries its fencing token (one lock per entry)."""

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
        ``fleche.storage.register_storage`` (see docs/locks.md)::

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
                state.masters = tuple(url_slot(u) for u in self.lock_urls)
            else:
                assert isinstance(self, RedisBackend)
                state.servers = (
                    "storage",
                    self.url,
                    id(self.client) if self.client is not None else None,
                )
                state.masters = (self.channel.slot,)
        return state.masters, state.servers

    def _carries_releases(self) -> bool:
        """Whether a write may carry the release of its lock: the lock is on this storage's own Redis."""
        return isinstance(self, RedisBackend) and not self.lock_urls

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

    def _operation_context(
        self, key: Any, *, intent: Intent = Intent.WRITE
    ) -> contextlib.AbstractContextManager[None]:
        # A plain method returning the hold (not a generator around it): this
        # runs on every operation, and every contextlib layer costs a few
        # microseconds of a contended key's turn.
        if intent is Intent.READ or self._lock_state.bypass.depth:
            return super()._operation_context(key, intent=intent)
        name = self._lock_name(key)
        if name is None:
            return super()._operation_context(key, intent=intent)
        # fleche's own hook does nothing: skip making it when nothing else is in the chain.
        inner = (
            _NOTHING
            if _chain_ends_here(type(self))
            else super()._operation_context(key, intent=intent)
        )
        return self._hold(name, inner)

    def _hold(self, name: str, inner: contextlib.AbstractContextManager[None]) -> Hold:
        """Hold the lock *name* around *inner*: this process's turn first, then the distributed lock."""
        masters, servers = self._lock_masters()
        settings = self._lock_state.settings
        if settings is None:
            settings = self._lock_state.settings = Settings(
                self.lock_ttl, self.lock_timeout, self._lock_metrics(), self._refuse
            )
        # A per-key lock's name ends with the digest it guards (see _lock_name).
        digest = name.rpartition(":")[2] if self._fences_records else None
        return Hold(settings, name, masters, (servers, name), inner, digest)

    # -- the last write carries the release ---------------------------------------

    def save(self, *args: Any, **kwargs: Any) -> Any:
        # fleche's saves (ValueMixin, CallMixin, CallRedis) end their hold with
        # the entry's write: a hold opened by this call may send its release
        # in the write's request (see _write).
        # A record write refused for a stale fence raises LockLost: refused
        # here as every lock failure is (Rejected in a call storage or cache).
        try:
            if not self._carries_releases():
                return super().save(*args, **kwargs)
            outer = getattr(saving, "marker", None)
            saving.marker = object()
            try:
                return super().save(*args, **kwargs)
            finally:
                saving.marker = outer
        except LockLost as e:
            self._refuse(e)

    def _write(self, client: Any, key: Any, data: bytes, value: Any) -> None:
        """RedisBackend's layout hook: the write, with the lock's release in its request when it ends a save."""
        hold = self._saving_hold(client, key)
        if hold is None:
            super()._write(client, key, data, value)  # type: ignore[misc]
            return
        recorder = Recorder(transactional=True)
        super()._write(recorder, key, data, value)  # type: ignore[misc]
        try:
            hold.carry(client, recorder.commands, self._scripts())  # type: ignore[attr-defined]
        except ResponseError as e:
            stale = stale_write(e, key)
            if stale is None:
                raise
            raise stale from e

    def _saving_hold(self, client: Any, key: Any) -> Hold | None:
        """The hold whose release this write may carry: opened by the running ``save``, on this server."""
        marker = getattr(saving, "marker", None)
        if marker is None or isinstance(client, Recorder) or not wire.single_server(client):
            return None
        name = self._lock_name(key)
        if name is None:
            return None
        kl = registry().table.get((self._lock_masters()[1], name))
        if kl is None or kl.owner != threading.get_ident() or kl.hold is None:
            return None
        hold = kl.hold
        if hold.carried:  # a second write in the same save: hold the lock again first
            hold.reacquire()
            return None
        return hold if hold.opened_by is marker else None

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


_NOTHING = contextlib.nullcontext()


_chain_ends: dict[type, bool] = {}


def _chain_ends_here(cls: type) -> bool:
    """Whether the ``_operation_context`` after ours in *cls*'s MRO is fleche's no-op base."""
    ends = _chain_ends.get(cls)
    if ends is None:
        ends = False
        mro = cls.__mro__
        for klass in mro[mro.index(_DistributedLocking) + 1 :]:
            hook = vars(klass).get("_operation_context")
            if hook is not None:
                ends = hook is vars(OperationContext)["_operation_context"]
                break
        _chain_ends[cls] = ends
    return ends


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
    and what happens when a lock cannot be had.  A call record written
    under the lock carries its fencing token, and Redis refuses it if a
    newer holder wrote the record meanwhile (``docs/locks.md``, Fencing).
    """

    _fences_records: ClassVar[bool] = True

    def _lock_name(self, key: Any) -> str | None:
        key = str(key)
        names = self._lock_state.names
        name = names.get(key)
        if name is not None:
            return name
        if len(key) < DIGEST_LENGTH:
            # Expanding is a read, so it takes no lock and cannot recurse
            # into this hook; then the full key is locked.
            with self._lock_state.bypass:
                try:
                    key = str(self.expand(key))
                except (KeyError, AmbiguousDigestError):
                    return None
            return self._lock_name(key)
        digest = _lockable_digest(key)
        if isinstance(self, RedisBackend):
            name = self.layout.key(digest, "lock")
        else:
            name = KeyLayout(self.lock_namespace, "lock").key(digest, "lock")
        if len(names) >= NAMES_KEPT:
            names.clear()
        names[key] = name
        return name


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
