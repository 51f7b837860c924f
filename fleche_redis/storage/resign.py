"""Re-signing a storage's entries with its first secret key, after a rotation: streaming.

An entry that verifies only with a later key (``FLECHE_SECRET_KEY=new:old``)
gets the first key's signature; its stream stays byte for byte and nothing
is unpickled, so the work needs none of the classes the entries hold, and
an entry no key verifies is counted and left alone.  Safe while workers
run: a value is content-addressed, and a record is replaced only if it still
holds the bytes that were read (the ``RESIGN`` script).  The runbook:
``docs/security.md`` (Rotating a key).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from fleche.digest import Digest

from ..errors import UndecodableEntry
from ..transport.batch import Recorder
from ..transport.request import call, send
from . import chunks, scan
from .calls import IndexedCallsMixin
from .lua import RESIGN
from .scan import Progress, Store, batches

__all__ = ["Resigned", "resign"]

READ_BYTES = 32 * 2**20
"""Bytes of entries held at once (read, then re-signed, in groups this big)."""


class Signed(Store, Protocol):
    """What re-signing needs of a storage (a :class:`~.backend.RedisBackend`)."""

    chunk_size: int


@dataclass
class Resigned:
    """What :func:`resign` found (and did) in one storage."""

    storage: str
    entries: int = 0
    """Entries read."""
    old_key: int = 0
    """Entries signed by a key after the first, i.e. before the rotation."""
    resigned: int = 0
    """Of those, now signed with the first key (0 in a dry run)."""
    changed: int = 0
    """Of those, replaced or removed by a writer meanwhile, so left as they are (run again)."""
    undecodable: int = 0
    """Entries no key verifies (or unreadable): left in place, never unpickled."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resign(storage: Signed, *, dry_run: bool = False, progress: Progress = scan.quiet) -> Resigned:
    """Sign every entry still signed by an old key with the first key; *dry_run* only counts them.

    Idempotent: a second run finds nothing to do, so ``dry_run`` after a run
    is how to know the old keys may be dropped.  Entries written meanwhile
    carry the writer's first key already, where every writer has the new key.
    """
    if not storage.codec.secret_key:
        raise ValueError(
            f"namespace {storage.namespace!r} at {storage.server}: this storage has no secret "
            "key to sign with (set FLECHE_SECRET_KEY=new:old, the new key first)"
        )
    report = Resigned(
        storage=f"{type(storage).__name__}({storage.server}, namespace={storage.namespace!r})"
    )
    total, done = storage.count(), 0
    for batch in batches(storage.list()):
        for group in _groups(batch, _sizes(storage, batch)):
            _resign_group(storage, group, report, dry_run=dry_run)
        done += len(batch)
        progress("resign", done, total)
    return report


def _field(storage: Signed) -> str:
    """Where an entry's bytes are: a call record's hash field ``v``, else ('') the whole string."""
    return "v" if isinstance(storage, IndexedCallsMixin) else ""


def _sizes(storage: Signed, keys: list[Digest]) -> list[int]:
    """Each entry's size in bytes (0 where gone, or a foreign type took its key)."""
    layout, field = storage.layout, _field(storage)
    commands = [
        ("HSTRLEN", layout.data(k), field) if field else ("STRLEN", layout.data(k)) for k in keys
    ]
    sizes = send(storage.redis(), commands, raise_errors=False)
    return [0 if isinstance(n, Exception) else n for n in sizes]


def _groups(keys: list[Digest], sizes: list[int]) -> Iterator[list[Digest]]:
    """*keys* in groups of at most :data:`READ_BYTES` (an entry bigger than that alone)."""
    group: list[Digest] = []
    held = 0
    for key, size in zip(keys, sizes, strict=True):
        if group and held + size > READ_BYTES:
            yield group
            group, held = [], 0
        group.append(key)
        held += size
    if group:
        yield group


def _resign_group(storage: Signed, keys: list[Digest], report: Resigned, *, dry_run: bool) -> None:
    """Read *keys*, re-sign what an old key signed, and put it back in one request."""
    client, layout, field = storage.redis(), storage.layout, _field(storage)
    commands = [("HGET", layout.data(k), field) if field else ("GET", layout.data(k)) for k in keys]
    found = send(client, commands, raise_errors=False)
    recorder = Recorder()
    for key, data in zip(keys, found, strict=True):
        if data is None or isinstance(data, Exception):
            continue  # gone since listed, or a foreign type (verify reports it)
        report.entries += 1
        if chunks.is_manifest(data):
            _resign_chunked(storage, key, data, report, dry_run=dry_run)
            continue
        fresh = _fresh(storage, key, data, report)
        if fresh is not None and not dry_run:
            # A record only if unchanged since read; a value whatever its version.
            RESIGN(recorder, (layout.data(key),), (data if field else b"", fresh, field))
    if recorder.commands:
        _count(report, send(client, recorder.commands, scripts=(RESIGN,)))


def _fresh(storage: Signed, key: Digest, data: bytes, report: Resigned) -> bytes | None:
    """*data* signed with the first key, if an old key signed it (counted); else ``None``."""
    try:
        fresh = storage.codec.resigned(data, key=key)
    except UndecodableEntry:
        report.undecodable += 1
        return None
    if fresh is not None:
        report.old_key += 1
    return fresh


def _resign_chunked(
    storage: Signed, key: Digest, manifest: bytes, report: Resigned, *, dry_run: bool
) -> None:
    """A big entry: chunks written again, then its manifest replaced if it is still the one read.

    A reader between the two sees chunks that do not match the manifest's
    checksum: a logged miss, as while any writer rewrites a big entry.
    """
    client, data_key = storage.redis(), storage.layout.data(key)
    try:
        data = bytes(chunks.read(client, data_key, manifest, key))
    except UndecodableEntry:
        report.undecodable += 1
        return
    fresh = _fresh(storage, key, data, report)
    if fresh is None or dry_run:
        return
    ttl_ms = max(call(client, "PTTL", data_key), 0)  # -1: none; -2: gone (the script sees it)
    written = chunks.write(client, data_key, fresh, storage.chunk_size, ttl_ms)
    _count(report, [RESIGN(client, (data_key,), (manifest, written, ""))])


def _count(report: Resigned, replies: list[Any]) -> None:
    replaced = sum(1 for r in replies if r == 1)
    report.resigned += replaced
    report.changed += len(replies) - replaced
