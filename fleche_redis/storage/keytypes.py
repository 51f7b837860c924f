"""Which Redis type each kind of key in a storage's keyspace must hold, and finding keys that don't.

A foreign key (``SET <ns>:{c.02}:index garbage``) makes every command on it
fail with ``WRONGTYPE``.  Writes refuse before they touch anything (see
:data:`.lua.GUARD`), reads go on without the shard, and :func:`.check.repair`
removes the key after :func:`.check.verify` names it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..transport.redispy import Client
from ..transport.request import send
from .keys import KeyLayout
from .scan import batches

__all__ = ["expected_type", "wrong_types"]

_DIGEST = "[0-9a-f]{64}"
_HEX = "[0-9a-f]+"


def _kinds(layout: KeyLayout, records: bool) -> list[tuple[re.Pattern[str], str]]:
    tag = re.escape(f"{layout.namespace}:{{{layout.keyspace}.") + "[0-9a-f]{2}" + re.escape("}:")
    lock = f"lock:{_DIGEST}"
    kinds = [
        (_DIGEST, "hash" if records else "string"),  # an entry (a record is a hash)
        (rf"{_DIGEST}:\d+", "string"),  # a chunk of a big entry
        (rf"{_DIGEST}:w", "string"),  # bytes staged for INDEX
        ("index", "zset"),
        ("refs", "hash"),
        ("terms", "zset"),
        ("gc", "string"),
        (f"gc:{_HEX}", "set"),
        (f"snapshot:{_HEX}", "zset"),
        (f"lease:{_DIGEST}", "string"),
        (f"waiters:{_DIGEST}", "list"),
        (f"wake:{_HEX}", "list"),
        (lock, "string"),
        (f"{lock}:q", "list"),
        (f"{lock}:a:{_HEX}", "string"),
        (f"{lock}:s:{_HEX}", "list"),
        ("fence", "string"),
    ]
    return [(re.compile(f"{tag}{rest}"), kind) for rest, kind in kinds]


def expected_type(layout: KeyLayout, key: str, *, records: bool) -> str | None:
    """The type *key* must hold, or ``None`` for a name the layout does not use."""
    for pattern, kind in _kinds(layout, records):
        if pattern.fullmatch(key):
            return kind
    return None


def wrong_types(
    client: Client, layout: KeyLayout, *, records: bool
) -> Iterator[tuple[str, str, str]]:
    """``(key, type it holds, type it must hold)`` for every key of the keyspace that breaks the layout.

    ``SCAN``s the keyspace's shards (maintenance only) and asks ``TYPE`` in batches.
    """
    kinds = _kinds(layout, records)
    pattern = layout.data_prefix("??") + "*"
    for batch in batches(client.scan_iter(match=pattern, count=1000)):
        names = [raw.decode() for raw in batch]
        wanted = [next((k for p, k in kinds if p.fullmatch(n)), None) for n in names]
        checked = [(n, w) for n, w in zip(names, wanted, strict=True) if w is not None]
        held = send(client, [("TYPE", n) for n, _ in checked])
        for (name, want), kind in zip(checked, held, strict=True):
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            if kind not in (want, "none"):
                yield name, kind, want
