"""A storage's invariants, checked (:func:`verify`) or restored (:func:`repair`), streaming.

What each invariant is and why it can break: ``docs/maintenance.md``.
Every group of commands goes through :func:`~fleche_redis.transport.request.send`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleche.call import DigestedCall
from fleche.digest import DIGEST_LENGTH, Digest
from fleche.storage.destructuring import DestructuringMixin

from ..errors import UndecodableEntry
from ..transport.request import send
from . import chunks, scan
from .calls import IndexedCallsMixin
from .codec import unsigned_by_ends
from .keys import SHARDS
from .keytypes import wrong_types
from .query import TERM_BYTES, record_terms
from .scan import Progress, Store, batches, shard_members

__all__ = ["Report", "verify", "repair"]


@dataclass
class Report:
    """What :func:`verify` found (or :func:`repair` fixed) in one storage.

    Every count is a number of problems; ``examples`` keeps up to five digests
    per kind (key names, for ``wrong_type``) so a person can look at them.
    """

    storage: str
    entries: int = 0
    dangling_index: int = 0
    """Index members whose data is gone (expired, evicted, or deleted behind our back)."""
    unindexed: int = 0
    """Data keys no index shard lists: invisible to expand, list and gc."""
    stale_terms: int = 0
    """Query-index members pointing at a record that is gone or no longer has that term."""
    missing_terms: int = 0
    """Terms a record has that the query index lacks (queries would miss it)."""
    stale_references: int = 0
    """Reference lists (for gc) of values that are gone."""
    orphan_chunks: int = 0
    """Chunks of big entries whose manifest is gone (a writer died mid-write): wasted memory."""
    undecodable: int = 0
    """Entries that fail signature verification or decoding (left in place)."""
    old_key: int = 0
    """Call records signed by a key after the first (before a rotation): not a problem, but
    ``resign`` must sign them with the first key before the old one is dropped."""
    unsigned: int = 0
    """Entries with no signature, where the storage has a key: misses to every reader of it.
    Counted only with a key; ``repair(drop_unsigned=True)`` deletes them."""
    wrong_type: int = 0
    """Keys of the layout holding another Redis type (a foreign key): every command on them fails."""
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (
            self.dangling_index
            or self.unindexed
            or self.stale_terms
            or self.missing_terms
            or self.stale_references
            or self.orphan_chunks
            or self.wrong_type
            or self.unsigned
        )

    def note(self, kind: str, digest: str, n: int = 1) -> None:
        setattr(self, kind, getattr(self, kind) + n)
        samples = self.examples.setdefault(kind, [])
        if digest not in samples and len(samples) < (1000 if kind == "wrong_type" else 5):
            samples.append(digest)  # foreign keys (wrong_type): every one

    def to_dict(self) -> dict[str, Any]:
        return {
            "storage": self.storage,
            "ok": self.ok,
            "entries": self.entries,
            "dangling_index": self.dangling_index,
            "unindexed": self.unindexed,
            "stale_terms": self.stale_terms,
            "missing_terms": self.missing_terms,
            "stale_references": self.stale_references,
            "orphan_chunks": self.orphan_chunks,
            "undecodable": self.undecodable,
            "old_key": self.old_key,
            "unsigned": self.unsigned,
            "wrong_type": self.wrong_type,
            "examples": self.examples,
        }


def verify(storage: Store, *, progress: Progress = scan.quiet) -> Report:
    """Check the storage's invariants without changing anything."""
    return _check(storage, fix=False, progress=progress)


def repair(
    storage: Store, *, progress: Progress = scan.quiet, drop_unsigned: bool = False
) -> Report:
    """Restore the invariants :func:`verify` checks; the report says what was fixed.

    Keys holding a foreign type are removed first (only keys of the
    storage's own layout, in its namespace), then dangling index members and
    stale index terms are removed, unindexed data is indexed again, and call
    records get their query terms back.
    Undecodable entries are counted, not deleted: they may be another
    deployment's (different secret key).  Unsigned ones too, unless
    *drop_unsigned*: then they are evicted as ``evict`` would (index, query
    terms and references with them).  That needs the storage's secret key,
    without which every entry is unsigned.
    """
    if drop_unsigned and not storage.codec.secret_key:
        raise ValueError(
            "drop_unsigned needs the secret key (FLECHE_SECRET_KEY): without one every entry "
            "is unsigned"
        )
    return _check(storage, fix=True, progress=progress, drop_unsigned=drop_unsigned)


def _check(storage: Store, *, fix: bool, progress: Progress, drop_unsigned: bool = False) -> Report:
    report = Report(
        storage=f"{type(storage).__name__}({storage.server}, namespace={storage.namespace!r})"
    )
    bad = _check_types(storage, report, fix=fix)
    _check_index(storage, report, fix=fix, progress=progress)
    _check_data(storage, report, bad, fix=fix, progress=progress)
    _check_chunks(storage, report, fix=fix)
    _check_signatures(storage, report, bad, drop=drop_unsigned, progress=progress)
    layout = storage.layout
    if isinstance(storage, IndexedCallsMixin):
        for i, shard in enumerate(SHARDS):
            if not {layout.index(shard), layout.terms(shard)} & bad:
                _check_terms(storage, shard, report, fix=fix)
            progress("terms", i + 1, len(SHARDS))
    if isinstance(storage, DestructuringMixin):
        _check_references(storage, report, bad, fix=fix, progress=progress)
    return report


def _check_types(storage: Store, report: Report, *, fix: bool) -> set[str]:
    """Keys of the layout that hold another type; removed when fixing, else returned to be skipped."""
    client = storage.redis()
    records = isinstance(storage, IndexedCallsMixin)
    bad = set()
    for key, held, wanted in wrong_types(client, storage.layout, records=records):
        report.note("wrong_type", f"{key} ({held}, not {wanted})")
        bad.add(key)
    if fix and bad:
        # Only names the layout gives this storage, in its own namespace.
        for chunk in batches(sorted(bad)):
            send(client, [("DEL", key) for key in chunk])
        return set()
    return bad


def _check_index(storage: Store, report: Report, *, fix: bool, progress: Progress) -> None:
    """Index members whose data key is gone."""
    total = storage.count()
    client, layout = storage.redis(), storage.layout
    done = 0
    for batch in batches(storage.list()):
        exists = send(client, [("EXISTS", layout.data(k)) for k in batch])
        dead = [k for k, e in zip(batch, exists, strict=True) if not e]
        for k in dead:
            report.note("dangling_index", k)
        report.entries += len(batch) - len(dead)
        if fix and dead:
            send(client, [("ZREM", layout.index_of(k), k) for k in dead])
        done += len(batch)
        progress("index", done, total)


def _check_data(
    storage: Store, report: Report, bad: set[str], *, fix: bool, progress: Progress
) -> None:
    """Data keys no index shard lists."""
    client, layout = storage.redis(), storage.layout
    seen = 0
    for batch in batches(scan.data_keys(storage)):
        batch = [k for k in batch if layout.index_of(k) not in bad]
        scores = send(client, [("ZSCORE", layout.index_of(k), k) for k in batch])
        lost = [k for k, score in zip(batch, scores, strict=True) if score is None]
        for k in lost:
            report.note("unindexed", k)
        if fix and lost:
            send(client, [("ZADD", layout.index_of(k), 0, k) for k in lost])
        seen += len(batch)
        progress("data", seen, None)


def _check_chunks(storage: Store, report: Report, *, fix: bool) -> None:
    """Chunk keys (``<data key>:<n>``) whose data key holds no manifest naming them."""
    client, layout = storage.redis(), storage.layout
    pattern = layout.data_prefix("??") + "?" * DIGEST_LENGTH + ":*"
    for batch in batches(client.scan_iter(match=pattern, count=1000)):
        owners = [raw.decode().rsplit(":", 1) for raw in batch]
        heads = send(
            client, [("GETRANGE", owner, 0, 200) for owner, _ in owners], raise_errors=False
        )
        heads = [b"" if isinstance(head, Exception) else head for head in heads]
        orphans = []
        for raw, (owner, index), head in zip(batch, owners, heads, strict=True):
            fields = head[len(chunks.MAGIC) :].split() if chunks.is_manifest(head) else []
            if not fields or not index.isdigit() or int(index) >= int(fields[0]):
                orphans.append(raw)
                report.note("orphan_chunks", owner.rsplit(":", 1)[1])
        if fix and orphans:
            send(client, [("DEL", k) for k in orphans])


def _check_signatures(
    storage: Store, report: Report, bad: set[str], *, drop: bool, progress: Progress
) -> None:
    """Entries with no signature, where the storage has a key; evicted when *drop*."""
    if not storage.codec.secret_key:
        return  # every entry is unsigned, and readable
    client, layout = storage.redis(), storage.layout
    find = _unsigned_records if isinstance(storage, IndexedCallsMixin) else _unsigned_values
    seen = 0
    for batch in batches(scan.data_keys(storage)):
        found = find(storage, client, [k for k in batch if layout.data(k) not in bad])
        for k in found:
            report.note("unsigned", k)
        if drop and found:
            storage.evict_many(found)
        seen += len(batch)
        progress("signatures", seen, None)


def _unsigned_records(storage: Store, client: Any, keys: list[Digest]) -> list[Digest]:
    fetched = send(client, [("HGET", storage.layout.data(k), "v") for k in keys])
    return [
        k for k, data in zip(keys, fetched, strict=True) if data and storage.codec.unsigned(data)
    ]


def _unsigned_values(storage: Store, client: Any, keys: list[Digest]) -> list[Digest]:
    """Told by an entry's ends where they say (no value is read whole), else by the whole entry."""
    layout = storage.layout
    ends = send(
        client,
        [
            command
            for k in keys
            for command in (
                ("GETRANGE", layout.data(k), 0, 2),
                ("GETRANGE", layout.data(k), -1, -1),
            )
        ],
    )
    found = []
    for i, key in enumerate(keys):
        verdict = unsigned_by_ends(ends[2 * i], ends[2 * i + 1])
        if verdict is None:  # compressed, or in chunks
            verdict = _whole_unsigned(storage, client, key)
        if verdict:
            found.append(key)
    return found


def _whole_unsigned(storage: Store, client: Any, key: Digest) -> bool:
    data_key = storage.layout.data(key)
    (data,) = send(client, [("GET", data_key)])
    if data is not None and chunks.is_manifest(data):
        try:
            data = chunks.read(client, data_key, data, key)
        except UndecodableEntry:
            return False  # a chunk is gone: not a question of signatures
    return data is not None and storage.codec.unsigned(data)


def _check_terms(storage: Store, shard: str, report: Report, *, fix: bool) -> None:
    """One shard's query index against the terms of the records it holds."""
    client, terms_key = storage.redis(), storage.layout.terms(shard)
    expected: set[bytes] = set()
    for batch in batches(shard_members(client, storage.layout.index(shard))):
        records = _record_terms(storage, batch, report, expected)
        for _, wanted, _ in records:
            expected.update(wanted)
        queried = [("ZMSCORE", terms_key, *wanted) for _, wanted, _ in records if wanted]
        scores = iter(send(client, queried))
        for key, wanted, listed_right in records:
            missing = (
                [m for m, sc in zip(wanted, next(scores), strict=True) if sc is None]
                if wanted
                else []
            )
            if missing or not listed_right:
                report.note("missing_terms", key, max(1, len(missing)))
                if fix:
                    terms = b"".join(m[:TERM_BYTES] for m in wanted)
                    send(client, [("HSET", storage.layout.data(key), "t", terms)])
                    if missing:
                        send(client, [("ZADD", terms_key, *_scored(missing))])
    stale = [m for m in shard_members(client, terms_key, raw=True) if m not in expected]
    for m in stale:
        report.note("stale_terms", m[TERM_BYTES:].hex())
    if fix and stale:
        for chunk in batches(stale):
            send(client, [("ZREM", terms_key, *chunk)])


def _record_terms(
    storage: Store, keys: list[Digest], report: Report, unread: set[bytes]
) -> list[tuple[Digest, list[bytes], bool]]:
    """``(key, index members it should have, whether its stored terms are right)`` per record.

    A record this storage cannot read (unsigned, another key's, corrupt) is
    not judged: the index members its writer stored (field ``t``) go to
    *unread*, kept as they are, so a repair run with the wrong key never
    strips the query index of records it could not read.
    """
    layout = storage.layout
    fetched = send(
        storage.redis(), [("HMGET", layout.data(k), "v", "t") for k in keys], raise_errors=False
    )
    records: list[tuple[Digest, list[bytes], bool]] = []
    for key, reply in zip(keys, fetched, strict=True):
        if isinstance(reply, Exception):
            continue  # a foreign type at the record's key: reported by the type check
        data, stored = reply
        member = bytes.fromhex(key)
        if data is None:
            continue
        if storage.codec.secret_key and storage.codec.unsigned(data):
            unread.update(_stored_members(stored, member))  # counted by the signature check
            continue
        try:
            record = storage.codec.decode(data, key=key)
            if storage.codec.signed_by(data, key=key):
                report.old_key += 1  # an HMAC or two more, and no read
        except UndecodableEntry:
            report.undecodable += 1
            unread.update(_stored_members(stored, member))
            continue
        terms = record_terms(record) if isinstance(record, DigestedCall) else []
        wanted = [t + member for t in terms]
        records.append((key, wanted, (stored or b"") == b"".join(terms)))
    return records


def _stored_members(stored: bytes | None, member: bytes) -> list[bytes]:
    """The index members a record's stored terms (field ``t``, 12 bytes each) name."""
    stored = stored or b""
    return [stored[i : i + TERM_BYTES] + member for i in range(0, len(stored), TERM_BYTES)]


def _scored(members: list[bytes]) -> list[Any]:
    """``ZADD`` arguments giving every member score 0."""
    return [part for m in members for part in (0, m)]


def _check_references(
    storage: Store, report: Report, bad: set[str], *, fix: bool, progress: Progress
) -> None:
    """Reference lists (kept for gc) of values whose data is gone."""
    client, layout = storage.redis(), storage.layout
    for i, shard in enumerate(SHARDS):
        refs_key = layout.references(shard)
        if refs_key in bad:
            continue
        for batch in batches(client.hscan_iter(refs_key, count=scan.BATCH)):
            owners = [owner.decode() for owner, _ in batch]
            exists = send(client, [("EXISTS", layout.data(o)) for o in owners])
            gone = [o for o, e in zip(owners, exists, strict=True) if not e]
            for o in gone:
                report.note("stale_references", o)
            if fix and gone:
                send(client, [("HDEL", refs_key, *gone)])
        progress("references", i + 1, len(SHARDS))
