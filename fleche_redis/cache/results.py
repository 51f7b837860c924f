"""A hit's result that came with its record: read on the server by LOOKUP, or pushed to a waiter.

:func:`result_keys` tells ``LOOKUP`` how to name a record's result (where a
script may read it), :func:`pushed` keeps the bytes that came only if they are
the record's whole result, and :class:`Pushed` is the cache the hit's
``LazyCall`` reads through.  Why and when: ``docs/cache.md`` (One-request hits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleche.caches import Cache
from fleche.call import DigestedCall
from fleche.storage.destructuring import Digested

from ..storage import chunks
from ..storage.backend import CallRedis, ValueRedis
from ..transport import wire

__all__ = ["Pushed", "pushed", "result_keys"]


def result_keys(values: Any, calls: CallRedis) -> tuple[str, str]:
    """How ``LOOKUP`` names a record's result (see :data:`~.singleflight.LOOKUP`); ``("", "")``: it may not.

    Only where the values are a ``ValueRedis`` on the call storage's own
    client, and that client talks to one server: on Cluster a script may
    touch only the keys it was given, and the result's key is known only once
    the record is read.
    """
    if isinstance(values, ValueRedis):
        client = calls.channel.client()
        if values.channel.client() is client and wire.single_server(client):
            return values.layout.data_template()
    return "", ""


def pushed(
    cache: Cache, record: DigestedCall, digest: bytes = b"", data: Any = None
) -> Pushed | None:
    """The record's result as it came (*digest*, *data*), if it is the whole entry of that very digest.

    A size (a result too big to send), a chunk manifest, or a digest that is
    not the record's (a record rewritten by an older version, which leaves the
    field as it was) leave the result to the value storage.
    """
    values = cache.values
    if (
        not isinstance(data, bytes)
        or not isinstance(values, ValueRedis)
        or record.result is None
        or digest != record.result.encode()
        or chunks.is_manifest(data)
    ):
        return None
    return Pushed(cache, values, record.result, data)


@dataclass(frozen=True)
class Pushed:
    """The cache a ``LazyCall`` reads through when its result came with its record.

    The result is decoded and counted as the value storage's ``get`` does
    (``RedisBackend.received``), when it is read; everything else goes to
    the cache (fleche's query helpers evict and shrink through a
    ``LazyCall``'s cache).
    """

    cache: Cache
    values: ValueRedis
    digest: str
    data: bytes

    def load_value(self, key: Any) -> Any:
        if key != self.digest:
            return self.cache.load_value(key)
        value = self.values.received(key, self.data)
        if isinstance(value, Digested):
            # A destructured container: the value storage loads its parts.
            return self.cache.load_value(key)
        return value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy and pickle probe these before the fields exist
            raise AttributeError(name)
        return getattr(self.cache, name)
