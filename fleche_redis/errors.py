"""The exceptions fleche-redis raises, in one place.

fleche's contract decides the shape: a miss is a ``KeyError`` (so invalid
digests and entries that fail verification are ``KeyError`` subclasses,
defined next to the code that detects them and re-exported here), a refusal
to store is a :class:`fleche.storage.SaveError`.  Everything that goes wrong
*in Redis* is a :class:`RedisStorageError` naming the operation and the
server (password redacted), with the redis-py exception as ``__cause__``.
"""

from __future__ import annotations

from fleche.storage import SaveError

from .codec import UndecodableEntry
from .keys import InvalidDigestError

__all__ = [
    "FlecheRedisError",
    "RedisStorageError",
    "StorageUnavailable",
    "UnavailableMiss",
    "SaveRefused",
    "InvalidDigestError",
    "UndecodableEntry",
    "SaveError",
]


class FlecheRedisError(Exception):
    """Base class of the errors fleche-redis raises on its own account."""


class RedisStorageError(FlecheRedisError):
    """Redis refused or failed an operation (``NOPERM``, ``OOM``, a script error, ...)."""

    # Defaults keep the exception picklable: worker processes send it back to
    # the parent, and unpickling calls the class with the message alone.
    def __init__(self, message: str, *, operation: str = "?", server: str = "?") -> None:
        super().__init__(message)
        self.operation = operation
        self.server = server


class StorageUnavailable(RedisStorageError):
    """Redis could not be reached: connection refused or reset, a timeout, or an open circuit."""


class UnavailableMiss(KeyError):
    """With ``on_error="miss"``: a read that failed in Redis, reported as a miss.

    ``__cause__`` is the :class:`RedisStorageError`.
    """


class SaveRefused(SaveError, FlecheRedisError):
    """A write the storage refused; fleche returns the result uncached.

    With ``on_error="miss"`` every write that fails in Redis is one
    (``__cause__`` is the :class:`RedisStorageError`).
    """
