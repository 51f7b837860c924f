"""Looking into a namespace from outside: sizes, memory, index health, records, prefixes.

What ``fleche-redis info``, ``ls`` and ``show`` print, as plain data.  Read
only, with bounded cost: counts from the index shards, memory from a sample;
only :func:`namespaces` scans the keyspace.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Iterator
from typing import Any

import redis
from fleche.call import DigestedCall, QueryCall
from fleche.digest import Digest

from ..errors import RedisStorageError
from ..storage.backend import CallRedis, RedisBackend, ValueRedis
from ..storage.keys import SHARDS, check_prefix
from ..transport import compat
from ..transport.redispy import Client
from ..transport.request import send

__all__ = [
    "store_info",
    "namespace_info",
    "server_info",
    "namespaces",
    "prefix_matches",
    "list_records",
]

SAMPLE = 200
"""Entries per store whose memory and existence ``info`` measures."""


def store_info(storage: RedisBackend, *, sample: int = SAMPLE) -> dict[str, Any]:
    """Entries, memory (index exact, data estimated from a sample) and dangling index entries."""
    layout = storage.layout
    entries = storage.count()
    extra = "terms" if isinstance(storage, CallRedis) else "refs"
    side = layout.terms if isinstance(storage, CallRedis) else layout.references
    keys = [layout.index(s) for s in SHARDS] + [side(s) for s in SHARDS]

    def index_memory(client: Client) -> list[int | None]:
        return send(client, [("MEMORY", "USAGE", k, "SAMPLES", 0) for k in keys])

    index_bytes = sum(size or 0 for size in storage.channel.run("info", index_memory))
    sampled = list(itertools.islice(storage.list(), sample))

    def data_memory(client: Client) -> list[int | None]:
        return send(client, [("MEMORY", "USAGE", layout.data(k), "SAMPLES", 0) for k in sampled])

    sizes = storage.channel.run("info", data_memory) if sampled else []
    live = [size for size in sizes if size is not None]
    data_bytes = round(sum(live) / len(live) * entries) if live else 0
    return {
        "entries": entries,
        "index_bytes": index_bytes,
        "index_structures": f"index + {extra}",
        "data_bytes_estimate": data_bytes,
        "sampled": len(sampled),
        "dangling_in_sample": len(sizes) - len(live),
    }


def namespace_info(values: ValueRedis, calls: CallRedis, *, sample: int = SAMPLE) -> dict[str, Any]:
    """:func:`store_info` of both stores of a namespace, a health verdict and whether gc runs."""
    call_info = store_info(calls, sample=sample)
    value_info = store_info(values, sample=sample)
    flag = ("GET", values.layout.gc_flag(SHARDS[0]))
    (gc_run,) = values.channel.run("info", send, [flag])
    dangling = call_info["dangling_in_sample"] + value_info["dangling_in_sample"]
    return {
        "namespace": calls.namespace,
        "server": calls.server,
        "calls": call_info,
        "values": value_info,
        "memory_bytes_estimate": sum(
            i["index_bytes"] + i["data_bytes_estimate"] for i in (call_info, value_info)
        ),
        "gc_running": gc_run is not None,
        "index_healthy": dangling == 0,
    }


def server_info(storage: RedisBackend) -> dict[str, Any]:
    """Version and memory figures of the server, or ``None`` where an ACL forbids ``INFO``.

    ``redis_version`` is the oldest node's; ``below_floor`` says whether it is
    older than the oldest Redis fleche-redis supports (:data:`.compat.FLOOR`).
    """

    def info(client: Client) -> dict[str, Any]:
        if isinstance(client, redis.RedisCluster):
            # One answer per primary: sum what adds up, keep the first of the rest.
            nodes = list(client.info(target_nodes=redis.RedisCluster.PRIMARIES).values())
        else:
            nodes = [client.info()]
        first = nodes[0]
        version = min(
            (str(n["redis_version"]) for n in nodes if n.get("redis_version")),
            key=lambda v: compat.parse_version(v) or (0,),
            default=None,
        )
        return {
            "redis_version": version,
            "below_floor": compat.below_floor(version),
            "nodes": len(nodes),
            "used_memory": sum(n.get("used_memory", 0) for n in nodes),
            "maxmemory": sum(n.get("maxmemory", 0) for n in nodes),
            "maxmemory_policy": first.get("maxmemory_policy"),
        }

    try:
        return storage.channel.run("info", info)
    except RedisStorageError as e:
        if isinstance(e.__cause__, redis.exceptions.NoPermissionError):
            return dict.fromkeys(
                (
                    "redis_version",
                    "below_floor",
                    "nodes",
                    "used_memory",
                    "maxmemory",
                    "maxmemory_policy",
                )
            )
        raise


def namespaces(storage: RedisBackend) -> list[str]:
    """Every namespace with fleche-redis entries on the server (``SCAN``: maintenance only)."""
    found: set[str] = set()

    def scan(client: Client) -> None:
        for raw in client.scan_iter(match="*:{[cv].??}:index", count=1000):
            found.add(raw.decode().rsplit(":{", 1)[0])

    storage.channel.run("info", scan)
    return sorted(found)


def prefix_matches(storage: RedisBackend, prefix: str, limit: int = 10) -> list[Digest]:
    """Up to *limit* indexed digests starting with *prefix* (to show an ambiguous prefix's candidates)."""
    prefix = check_prefix(prefix)
    shards = [prefix[:2]] if len(prefix) >= 2 else [s for s in SHARDS if s.startswith(prefix)]
    layout = storage.layout

    def matches(client: Client) -> list[list[bytes]]:
        low, high = b"[" + prefix.encode(), b"[" + prefix.encode() + b"\xff"
        return send(
            client, [("ZRANGEBYLEX", layout.index(s), low, high, "LIMIT", 0, limit) for s in shards]
        )

    found = [Digest(m.decode()) for page in storage.channel.run("expand", matches) for m in page]
    return sorted(found)[:limit]


def list_records(
    calls: CallRedis, name: str | None = None, *, batch: int = 500
) -> Iterator[dict[str, Any]]:
    """Call records (optionally of functions matching *name*) with short digests.

    *name* is a function's name or ``module.name``, or a glob pattern over
    either (``"pkg.*"``).  An exact name is answered from the query index; a
    pattern reads every record.  Short digests are what fleche's ``table()``
    shows: the shortest unambiguous prefix of each record's lookup key,
    computed for a whole batch in one request.
    """
    found: Iterator[DigestedCall]
    if name is None:
        found = iter(calls.query(QueryCall()))
    elif any(c in name for c in "*?["):
        found = (
            c
            for c in calls.query(QueryCall())
            if fnmatch.fnmatchcase(c.name, name)
            or fnmatch.fnmatchcase(f"{c.module}.{c.name}", name)
        )
    else:
        module, _, short = name.rpartition(".")
        templates = [QueryCall(name=name)] + (
            [QueryCall(name=short, module=module)] if module else []
        )
        found = _unique(itertools.chain.from_iterable(calls.query(t) for t in templates))
    while chunk := list(itertools.islice(found, batch)):
        keys = [c.to_lookup_key() for c in chunk]
        yield from (
            _row(call, key, short)
            for call, key, short in zip(chunk, keys, _shrink(calls, keys), strict=True)
        )


def _unique(records: Iterator[DigestedCall]) -> Iterator[DigestedCall]:
    seen: set[Digest] = set()
    for record in records:
        key = record.to_lookup_key()
        if key not in seen:
            seen.add(key)
            yield record


def _shrink(calls: CallRedis, keys: list[Digest]) -> list[str]:
    try:
        shrunk = calls.shrink(*keys)
    except KeyError:
        # A record evicted (or re-keyed) since it was read: shrink one by one.
        return [_shrink_one(calls, k) for k in keys]
    return [str(s) for s in shrunk] if isinstance(shrunk, tuple) else [str(shrunk)]


def _shrink_one(calls: CallRedis, key: Digest) -> str:
    try:
        return str(calls.shrink(key))
    except (KeyError, ValueError):
        return str(key)


def _row(call: DigestedCall, key: Digest, short: str) -> dict[str, Any]:
    return {
        "key": short,
        "digest": str(key),
        "name": call.name,
        "module": call.module,
        "version": call.version,
        "arguments": {k: str(v) for k, v in call.arguments.items()},
        "result": None if call.result is None else str(call.result),
        "metadata": call.metadata or {},
    }
