"""fleche storages that keep values and call records in Redis: RedisBackend, ValueRedis, CallRedis.

Importing :mod:`fleche_redis` registers ValueRedis and CallRedis as storage
type ``"redis"``.  Usage, configuration and round trips: ``docs/storage.md``.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from fleche.call import DigestedCall
from fleche.digest import Digest
from fleche.storage.base import CallMixin, StorageBackend, ValueMixin, register_storage
from fleche.storage.destructuring import DestructuringMixin, Digested

from ..errors import SaveRefused, UnavailableMiss
from ..metrics import StorageMetrics
from ..transport import wire
from ..transport.batch import Recorder, active_batch, write_batch
from ..transport.channel import Channel
from ..transport.connection import ClientSlot, check_url, redact_url, shared_slot, url_from_client
from ..transport.health import Breaker
from ..transport.replicas import DEFAULT_TIMEOUT, Replicas
from ..transport.request import Command, call, send
from ..transport.scripts import LuaScript
from . import check, chunks, config, exposure, nested, snapshot, trust
from . import lua as entry_lua
from .calls import IndexedCallsMixin
from .codec import Codec, Encoded
from .index import PrefixIndexMixin
from .keys import InvalidDigestError, KeyLayout, check_digest, check_namespace
from .near import DEFAULT_BYTES, NearCache, NearRecordsMixin, check_size, near_cache
from .signing import signing_keys

__all__ = ["RedisBackend", "ValueRedis", "CallRedis", "DEFAULT_URL"]

DEFAULT_URL = "redis://localhost:6379/0"


def _restore(cls: type, kwargs: dict[str, Any], secret_explicit: bool) -> RedisBackend:
    obj = cls(**kwargs)
    object.__setattr__(obj, "_secret_explicit", secret_explicit)
    return obj


@dataclass(frozen=True, kw_only=True)
class RedisBackend(trust.TrustOptions, PrefixIndexMixin, StorageBackend):
    """Entries under digest keys in Redis, plus a sorted-set index per shard.

    Configuration is the dataclass fields; the connection is built lazily in
    each process (and again after ``fork``), and pickling sends only the
    configuration, so a storage travels to worker processes and reconnects
    there.

    Args:
        url: where Redis is; ``redis://``, ``rediss://``, ``unix://`` or
            ``redis+cluster://host:port,...``.
        namespace: prefix of every key written; storages in different
            namespaces never see each other's entries.
        client: a ready ``redis.Redis``, ``redis.RedisCluster`` or fakeredis
            client to use instead of *url* (it must not decode responses).
        serializer: ``"cloudpickle"`` (default), ``"pickle"`` or ``"dill"``.
        compress: compress entries of at least *compress_min_size* bytes:
            ``True``/``"zlib"``, ``"zstd"`` or ``"lz4"`` (reads detect any).
        secret_key: HMAC signing key(s) with fleche's semantics (bytes, hex
            string, ``:``-separated hex keys, or a list); when omitted,
            ``FLECHE_SECRET_KEY`` is used.  Entries that fail verification are
            misses and are never unpickled.  ``require_signature``,
            ``restricted``, ``allowed_modules``: see :class:`~.trust.TrustOptions`.
        chunk_size: entries larger than this many bytes are stored as chunks
            (see :mod:`fleche_redis.storage.chunks`); Redis strings end at 512 MB.
        ttl: seconds an entry lives after it was written (``None``: until
            evicted).  Index entries of expired data are dropped when a lookup
            meets them and by :func:`fleche_redis.maintenance.repair`.
        failover_wait: seconds a failover or slot migration of Redis Cluster
            or Sentinel is ridden through by retrying with backoff, so
            callers see no exception; past it, *on_error* applies (see
            ``docs/transport.md``).  ``0`` turns retrying off.
        near_cache_bytes: bound of the near cache, the entries this process
            read lately (0: off); see ``docs/near-cache.md``.
        wait_replicas: replicas that must acknowledge each write (``WAIT``, in
            the write's own request) before a save returns; fewer within
            *wait_replicas_timeout* seconds raise
            :class:`~fleche_redis.errors.NotReplicated`.  ``0`` (the default)
            waits for none: a failover can lose writes younger than the
            replication lag.  See ``docs/storage.md`` (Durability).
    """

    keyspace: ClassVar[str] = "kv"
    """Separates stores sharing a namespace; see :class:`~fleche_redis.storage.keys.KeyLayout`."""

    PUT: ClassVar[LuaScript] = entry_lua.PUT
    INDEX: ClassVar[LuaScript] = entry_lua.INDEX
    DIRECT_WRITE_MIN: ClassVar[int] = 8 * 1024
    """Entries at least this big skip Lua: a script's arguments are copied
    into Lua and again into Redis (about 1.7 ms of server time for 800 KB,
    against 0.1 ms for a plain ``SET`` and the index script); below it the
    script alone is cheaper."""

    EVICT: ClassVar[LuaScript] = entry_lua.EVICT

    url: str = field(default=DEFAULT_URL, repr=False)  # may hold a password; see `server`
    namespace: str = "fleche"
    client: Any = field(default=None, repr=False, compare=False)
    serializer: str = "cloudpickle"
    compress: bool | str = False
    compress_min_size: int = 512
    secret_key: Any = field(default=(), repr=False)
    ttl: float | None = None
    on_error: str = "raise"
    socket_timeout: float | None = 2.0
    connect_timeout: float | None = 1.0
    retries: int = 1
    breaker_threshold: int = 3
    breaker_cooldown: float = 5.0
    failover_wait: float = 5.0
    chunk_size: int = 32 * 2**20
    near_cache_bytes: int = DEFAULT_BYTES
    wait_replicas: int = 0
    wait_replicas_timeout: float = DEFAULT_TIMEOUT

    server: str = field(init=False, compare=False)
    """The URL with its password redacted: safe for repr, logs and errors."""
    layout: KeyLayout = field(init=False, repr=False, compare=False)
    """Which Redis key holds what (see :class:`~fleche_redis.storage.keys.KeyLayout`)."""
    codec: Codec = field(init=False, repr=False, compare=False)
    """Bytes in Redis <-> Python objects: serializer, signature, compression."""
    channel: Channel = field(init=False, repr=False, compare=False)
    """This process's way to Redis: client, breaker, counters, error policy."""
    near: NearCache = field(init=False, repr=False, compare=False)
    """This process's near cache of entries read lately (see :mod:`.near`)."""
    _secret_explicit: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        check_namespace(self.namespace)
        if self.client is None:
            check_url(self.url)
        else:
            config.refuse_decoding_client(self.client)
            if self.url == DEFAULT_URL:
                set_(
                    self,
                    "url",
                    url_from_client(self.client, with_password=False) or config.NO_ADDRESS,
                )
        explicit = bool(self.secret_key)
        keys = signing_keys(self.secret_key)
        set_(self, "secret_key", keys)
        set_(self, "_secret_explicit", explicit)
        trusted = self.codec_options(self.secret_key)
        set_(self, "layout", KeyLayout(self.namespace, self.keyspace))
        set_(self, "server", redact_url(self.url))
        config.check(self)
        url, options = self.url, self._client_options()
        if self.client is not None:
            slot = ClientSlot(lambda: self.client, given=self.client)
        else:
            slot_key = (url, self.socket_timeout, self.connect_timeout, self.retries)
            slot = shared_slot(url, options, slot_key)
        check_size(self.near_cache_bytes)
        set_(self, "near", near := near_cache(self.near_cache_bytes, slot, self.layout))
        breaker = Breaker(self.breaker_threshold, self.breaker_cooldown, self.server)
        # Process-local: rebuilt by __post_init__ wherever the storage is unpickled.
        metrics = StorageMetrics(type(self).__name__, self.server, self.namespace, breaker, near)
        metrics.unsigned_network = exposure.check(
            url, self.server, self.namespace, bool(keys), restricted=self.restricted
        )
        opts = {**trusted, "counts": metrics}
        codec = Codec(
            self.serializer, self.secret_key, self.compress, self.compress_min_size, **opts
        )
        set_(self, "codec", codec)
        set_(
            self,
            "channel",
            Channel(
                slot,
                breaker,
                metrics,
                self.on_error,
                self.server,
                self.namespace,
                failover_wait=self.failover_wait,
                replicas=Replicas(self.wait_replicas, self.wait_replicas_timeout)
                if self.wait_replicas
                else None,
            ),
        )

    def replaced(self, **changes: Any) -> RedisBackend:
        """A copy of this storage with the fields in *changes* changed (storages are frozen)."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        return _restore(type(self), {**kwargs, **changes}, self._secret_explicit)

    def _client_options(self) -> dict[str, Any]:
        return config.client_options(self.socket_timeout, self.connect_timeout, self.retries)

    # -- process boundaries -------------------------------------------------

    def __reduce__(self):
        # Constructor arguments are the whole durable state (mixin fields
        # included); the receiving process builds its own connection.
        kwargs = {
            f.name: getattr(self, f.name) for f in fields(self) if f.init and f.name != "client"
        }
        if self.client is not None:
            url = url_from_client(self.client)
            if url is None:
                raise pickle.PicklingError(
                    f"{type(self).__name__} was built on a client that cannot cross processes "
                    f"(an in-process fakeredis?); build it with url=... to send it to workers"
                )
            kwargs["url"] = url
        return (_restore, (type(self), kwargs, self._secret_explicit))

    def redis(self) -> Any:
        """This process's client (built on first use, rebuilt after ``fork``)."""
        return self.channel.slot.get()

    def close(self) -> None:
        """Close the connections this storage opened (a client passed in stays open)."""
        self.channel.slot.close()

    # -- StorageBackend -----------------------------------------------------

    def put(self, value: Any, key: Digest) -> Digest:
        key = check_digest(key)
        data = self.codec.encode(value)
        batch = active_batch()
        if batch is None and self.channel.replicas is not None:
            # A durable write's WAIT joins its request where requests are shaped.
            with write_batch():
                return self.put(value, key)
        if batch is not None:
            batch.add(self, lambda client: self._write(client, key, data, value), self._scripts())
            batch.encoded[(id(self), key)] = data
        else:
            self.channel.run("put", self._write, key, data, value)
        counts = self.channel.metrics
        counts.saves += 1
        counts.bytes_out += len(data)
        return key

    def get(self, key: Digest) -> Any:
        key, near = check_digest(key), self.near
        if (data := near.get(key)) is not None:
            self.channel.metrics.hits += 1
            return self.codec.decode(data, key=key)
        since = near.began()
        data = self.channel.run("get", self._read, key)
        if data is None:
            self.channel.metrics.misses += 1
            raise KeyError(key)
        return self.received(key, data, since)

    def received(self, key: Digest, data: bytes | bytearray, since: int = 0) -> Any:
        """The entry *data* read at *key*, by ``get`` or by a script on this storage's behalf.

        Counted, decoded (signature first: a refusal is
        :class:`~fleche_redis.errors.UndecodableEntry`, a miss) and kept near
        the one way, wherever the bytes came from (``RedisCache``'s lookup
        reads results); *since* is when the read began (see ``near.began``).
        """
        counts = self.channel.metrics
        counts.hits += 1
        counts.bytes_in += len(data)
        entry = self.codec.decode(data, key=key)
        self.near.keep(key, data, since)  # decoded: the bytes are sound
        return entry

    def metrics(self) -> dict[str, Any]:
        """This storage's counters in this process; see :mod:`fleche_redis.metrics`."""
        return self.channel.metrics.snapshot()

    # Storage layout hooks: one atomic request each.  Call records override
    # them to keep their query index (see fleche_redis.calls).

    def _ttl_ms(self) -> int:
        return 0 if self.ttl is None else max(1, round(self.ttl * 1000))

    def _write(self, client: Any, key: Digest, data: Encoded, value: Any) -> None:
        layout = self.layout
        keys = (
            layout.data(key),
            layout.index_of(key),
            layout.references_of(key),
            layout.gc_flag(key[:2]),
        )
        if len(data) > self.chunk_size:
            data = chunks.write(client, keys[0], data, self.chunk_size, self._ttl_ms())
        elif len(data) >= self.DIRECT_WRITE_MIN:
            if getattr(client, "transactional", False):
                # A recorder whose commands reach one server in one MULTI/EXEC.
                # Beside the data key; INDEX renames it into place once every
                # key of the entry is known to be of the right type.
                staged = keys[0] + ":w"
                client.set(staged, data, px=self._ttl_ms() or None)
                self.INDEX(
                    client,
                    (*keys, staged),
                    (b"", key, 0, self._references(value), bytes.fromhex(key)),
                )
                return
            if wire.single_server(client):
                recorder = Recorder(transactional=True)
                self._write(recorder, key, data, value)
                send(client, recorder.commands, scripts=(self.INDEX,), bundled=True)
                return
        self.PUT(
            client,
            keys,
            (bytes(data), key, self._ttl_ms(), self._references(value), bytes.fromhex(key)),
        )

    def _read(self, client: Any, key: Digest) -> bytes | bytearray | None:
        data = call(client, "GET", self.layout.data(key))
        if data is not None and chunks.is_manifest(data):
            return chunks.read(client, self.layout.data(key), data, key)
        return data

    def _delete(self, client: Any, key: Digest) -> None:
        layout = self.layout
        self.EVICT(
            client,
            (layout.data(key), layout.index_of(key), layout.references_of(key)),
            (key, chunks.MAGIC),
        )

    def _references(self, value: Any) -> bytes:
        """Digests *value* refers to, 32 raw bytes each; kept for streaming garbage collection."""
        return b""

    def _scripts(self) -> tuple[LuaScript, ...]:
        """The scripts the layout hooks run (to load them before a pipeline uses them)."""
        return (self.PUT, self.INDEX, self.EVICT)

    def _contains(self, key: Digest) -> bool:
        try:
            key = check_digest(key)
        except InvalidDigestError:
            return False
        try:
            return bool(
                self.channel.run(
                    "contains", lambda client: call(client, "EXISTS", self.layout.data(key))
                )
            )
        except UnavailableMiss:
            return False

    def _evict(self, key: Digest) -> None:
        key = check_digest(key)
        self.near.drop((key,))  # this thread reads its own evict at once
        try:
            self.channel.run("evict", self._delete, key)
        except UnavailableMiss:
            pass  # failing open: the entry stays until a later evict, its ttl, or gc

    # -- configuration ------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return config.describe(self, secret_explicit=self._secret_explicit)

    def to_config(self) -> dict[str, Any]:
        return self._config()

    def verify(self, *, progress: Any = None) -> check.Report:
        """Check the storage's invariants; see :func:`fleche_redis.maintenance.verify`."""
        return check.verify(self, **({"progress": progress} if progress else {}))

    def repair(self, *, progress: Any = None, drop_unsigned: bool = False) -> check.Report:
        """Restore the storage's invariants; see :func:`fleche_redis.maintenance.repair`."""
        options = {"progress": progress} if progress else {}
        return check.repair(self, drop_unsigned=drop_unsigned, **options)

    # -- maintenance --------------------------------------------------------

    def eviction_commands(self, keys: Iterable[Digest]) -> list[Command]:
        """The commands that evict *keys* (what ``evict`` runs for each), to send as a group."""
        recorder = Recorder()
        for key in keys:
            self._delete(recorder, check_digest(key))
        return recorder.commands

    def evict_many(self, keys: Iterable[Digest]) -> None:
        """Evict *keys* in one request (one by one on Redis Cluster); for maintenance.

        Unlike ``evict`` it bypasses the breaker and the error policy: a
        failure is redis-py's exception, as for the rest of maintenance.
        """
        self.near.drop(keys := list(keys))
        send(self.redis(), self.eviction_commands(keys), scripts=self._scripts())


@dataclass(frozen=True)
class ValueRedis(DestructuringMixin, ValueMixin, RedisBackend):
    """Value storage in Redis; containers are destructured as in ``ValuePickleFile``."""

    keyspace: ClassVar[str] = "v"

    def _references(self, value: Any) -> bytes:
        # A destructured container's children are recorded beside it, so
        # garbage collection follows them without loading the container.
        if isinstance(value, Digested):
            return b"".join(bytes.fromhex(d) for d in sorted(self._raw_sub_digests(value)))
        return b""

    def load(self, key: Digest | str) -> Any:
        """fleche's destructured load, fetching each level of nesting in one request (see :mod:`.nested`)."""
        raw = ValueMixin.load(self, key)
        return nested.mend(self, raw) if isinstance(raw, Digested) else raw

    def to_config(self) -> dict[str, Any]:
        return {**self._config(), "remaining_depth": self.remaining_depth}


@dataclass(frozen=True)
class CallRedis(NearRecordsMixin, IndexedCallsMixin, CallMixin, RedisBackend):
    """Call-record storage in Redis, with a query index (see :mod:`fleche_redis.storage.calls`)."""

    keyspace: ClassVar[str] = "c"

    def transform(self, func: Any = None, *, progress: Any = None) -> int:
        """fleche's ``transform``, streaming from a snapshot; see :func:`fleche_redis.maintenance.transform`."""
        return snapshot.transform(self, func, **({"progress": progress} if progress else {}))

    def save(self, call: DigestedCall) -> Digest:
        # One round trip: the script overwrites the record and re-adds its
        # (identical) index member, so CallMixin's contains/evict pre-check
        # would only add two.
        key = call.to_lookup_key()
        with self._operation_context(key):
            try:
                return self.put(call, key)
            except SaveRefused:
                # fleche lets a SaveError from call storage escape after the
                # memoized function ran; failing open means the record is
                # simply not filed (already logged) and the call stays uncached.
                return key


register_storage("redis", kind="value")(ValueRedis)
register_storage("redis", kind="call")(CallRedis)
