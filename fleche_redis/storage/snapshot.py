"""Visiting every call record once, from a server-side snapshot of the index: transform's basis.

Records written while the work runs (under new keys) are not in the
snapshot, so none is transformed twice; see ``docs/maintenance.md``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

from fleche.call import DigestedCall
from fleche.digest import Digest

from ..transport.request import send
from . import scan
from .keys import SHARDS
from .scan import Progress, Store, batches, shard_members

__all__ = ["snapshot_members", "transform"]


def _snapshot(calls: Store, run: str) -> list[str]:
    """Copy every index shard server-side, so keys written while we work are not visited."""
    client, layout = calls.redis(), calls.layout
    keys = [f"{layout.data_prefix(s)}snapshot:{run}" for s in SHARDS]
    for chunk in batches(list(zip(SHARDS, keys, strict=True)), 64):
        send(client, [("ZUNIONSTORE", copy, 1, layout.index(shard)) for shard, copy in chunk])
    return keys


def snapshot_members(calls: Store, progress: Progress, stage: str) -> Iterator[Digest]:
    """Every digest the index held when this started, each once; the snapshot is deleted after."""
    client = calls.redis()
    keys = _snapshot(calls, secrets.token_hex(6))
    try:
        total = sum(send(client, [("ZCARD", k) for k in keys]))
        done = 0
        for key in keys:
            for digest in shard_members(client, key):
                yield digest
                done += 1
                if done % scan.BATCH == 0 or done == total:
                    progress(stage, done, total)
    finally:
        for chunk in batches(keys, 64):
            send(client, [("DEL", k) for k in chunk])


def transform(
    calls: Any,
    func: Callable[[DigestedCall], DigestedCall] | None = None,
    *,
    progress: Progress = scan.quiet,
) -> int:
    """fleche's ``CallStorage.transform``, streaming; returns how many records changed key.

    *calls* is a :class:`~.backend.CallRedis`.  Works from a server-side
    snapshot of the index, so records it writes under new keys are never
    transformed twice.
    """
    moved = 0
    for key in snapshot_members(calls, progress, "transform"):
        try:
            call = calls.load(key)
        except KeyError:
            continue
        new_call = func(call) if func is not None else call
        new_key = calls.save(new_call)
        if new_key != key:
            calls.evict(key)
            moved += 1
    return moved
