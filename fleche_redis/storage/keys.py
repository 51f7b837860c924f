"""Key layout: which Redis key holds what, and which digests are acceptable.

Everything lives under ``<namespace>:``, in hash-tagged shards so a data key
and its index shard share a slot; a digest that is not 64 lowercase hex
characters never reaches Redis.  The layout: ``docs/storage.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleche.digest import DIGEST_LENGTH, Digest

from ..errors import InvalidDigestError

__all__ = [
    "InvalidDigestError",
    "KeyLayout",
    "SHARDS",
    "check_digest",
    "check_prefix",
    "check_namespace",
    "lock_key",
    "lock_tag_end",
]

_HEX = re.compile(r"[0-9a-f]+")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.@/-]+(?::[A-Za-z0-9_.@/-]+)*")

SHARD_CHARS = 2
"""Leading digest characters that pick an index shard (256 shards)."""

SHARDS: tuple[str, ...] = tuple(f"{i:02x}" for i in range(16**SHARD_CHARS))
"""Every shard name, in lexicographic (= digest) order."""


def check_digest(key: object) -> Digest:
    """Return *key* as a :class:`~fleche.digest.Digest` or raise :class:`InvalidDigestError`."""
    if isinstance(key, str) and len(key) == DIGEST_LENGTH and _HEX.fullmatch(key):
        return Digest(key)
    raise InvalidDigestError(key)


def check_prefix(prefix: object) -> str:
    """Return *prefix* if it is a non-empty lowercase hex string of at most 64 characters."""
    if isinstance(prefix, str) and 0 < len(prefix) <= DIGEST_LENGTH and _HEX.fullmatch(prefix):
        return str(prefix)
    raise InvalidDigestError(prefix)


def check_namespace(namespace: object) -> str:
    """Refuse namespaces that would break confinement or hash tags.

    Braces would start a hash tag, glob characters would turn an ACL pattern
    or a user's ``SCAN MATCH`` into a wildcard, and whitespace or an empty
    segment would make keys ambiguous.
    """
    if isinstance(namespace, str) and _NAMESPACE.fullmatch(namespace):
        return namespace
    raise ValueError(
        f"invalid namespace {namespace!r}: use letters, digits and _ . @ / - "
        "(segments may be joined by ':'); braces, glob characters and spaces are not allowed"
    )


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Key names for one keyspace (``v``, ``c``, ...) of one namespace."""

    namespace: str
    keyspace: str

    def tag(self, shard: str) -> str:
        return f"{{{self.keyspace}.{shard}}}"

    def data(self, digest: str) -> str:
        """Key of the entry stored under *digest* (already validated)."""
        # Spelled out rather than through data_prefix(): it runs on every read.
        return f"{self.namespace}:{{{self.keyspace}.{digest[:SHARD_CHARS]}}}:{digest}"

    def data_template(self) -> tuple[str, str]:
        """``(head, middle)`` with ``data(d) == head + d[:SHARD_CHARS] + middle + d``.

        For a script that builds the key of a digest it read on the server
        (the cache's lookup reads a record's result this way).
        """
        return f"{self.namespace}:{{{self.keyspace}.", "}:"

    def data_prefix(self, shard: str) -> str:
        """What every data key of *shard* starts with (the digest follows)."""
        return f"{self.namespace}:{self.tag(shard)}:"

    def index(self, shard: str) -> str:
        """Sorted set listing every stored digest that starts with *shard*."""
        return f"{self.namespace}:{self.tag(shard)}:index"

    def index_of(self, digest: str) -> str:
        return self.index(digest[:SHARD_CHARS])

    def references(self, shard: str) -> str:
        """Hash: digest -> digests that entry refers to (destructured values), for GC."""
        return f"{self.namespace}:{self.tag(shard)}:refs"

    def references_of(self, digest: str) -> str:
        return self.references(digest[:SHARD_CHARS])

    def gc_flag(self, shard: str) -> str:
        """String naming the garbage collection running now (if any); its mark set is ``<flag>:<run>``."""
        return f"{self.namespace}:{self.tag(shard)}:gc"

    def terms(self, shard: str) -> str:
        """Sorted set of ``term id + record digest`` for the call records of *shard*."""
        return f"{self.namespace}:{self.tag(shard)}:terms"

    def terms_of(self, digest: str) -> str:
        return self.terms(digest[:SHARD_CHARS])

    def key(self, digest: str, suffix: str) -> str:
        """A per-entry helper key (lock, lease, channel) in the entry's own slot."""
        return f"{self.namespace}:{self.tag(digest[:SHARD_CHARS])}:{suffix}:{digest}"


# -- locks ---------------------------------------------------------------------


def lock_key(name: str, namespace: str = "fleche") -> str:
    """The Redis key of an application lock called *name*: ``<namespace>:{<name>}``."""
    check_namespace(namespace)
    if not name or "{" in name or "}" in name:
        raise ValueError(f"lock name {name!r} must be non-empty and free of braces")
    return f"{namespace}:{{{name}}}"


def lock_tag_end(name: str) -> int:
    """Index just past the hash tag that follows the namespace, or raise ``ValueError``."""
    start = name.find(":{")
    end = name.find("}", start + 2)
    if start <= 0 or end == -1 or end == start + 2:
        raise ValueError(
            f"lock key {name!r} needs the form '<namespace>:{{<tag>}}...': keys must start with "
            "the namespace (ACL confinement) and carry a hash tag (Redis Cluster); see lock_key()"
        )
    return end + 1
