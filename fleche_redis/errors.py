"""The exceptions fleche-redis raises, in one place.

A miss is a ``KeyError``, a refusal to store a :class:`fleche.storage.SaveError`
(as fleche's contract wants); anything that goes wrong in Redis is a
:class:`RedisStorageError` naming operation and server, with redis-py's
exception as ``__cause__``.  :class:`LockError` is a ``SaveError`` too.
"""

from __future__ import annotations

from fleche.storage import SaveError

__all__ = [
    "FlecheRedisError",
    "RedisStorageError",
    "StorageUnavailable",
    "ServerTooOld",
    "UnavailableMiss",
    "SaveRefused",
    "NotReplicated",
    "InvalidDigestError",
    "UndecodableEntry",
    "SaveError",
    "LockError",
    "LockTimeout",
    "LockUnavailable",
    "LockNotOwned",
    "LockLost",
]


class FlecheRedisError(Exception):
    """Base class of the errors fleche-redis raises on its own account."""


# -- misses ----------------------------------------------------------------------


class InvalidDigestError(KeyError):
    """A key that is not a (prefix of a) lowercase hex SHA-256 digest.

    A ``KeyError`` so that every fleche code path treats it as a miss.
    """


class UndecodableEntry(KeyError):
    """Stored bytes that fail verification or decoding; fleche treats it as a miss."""


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


class ServerTooOld(RedisStorageError):
    """The server is older than fleche-redis needs (Redis 6.2) and refused a command it lacks.

    The message names the server's version, the command and the version it
    needs.  Never turned into a miss or a refused write, whatever
    ``on_error`` says: no retry or fallback helps until the server is
    upgraded.  ``version`` is what the server reported, ``needed`` the
    version the command needs, ``command`` the command refused.
    """

    # Defaults keep the exception picklable (see RedisStorageError).
    def __init__(
        self,
        message: str,
        *,
        version: str = "?",
        needed: str = "?",
        command: str = "?",
        server: str = "?",
    ) -> None:
        super().__init__(message, operation=command, server=server)
        self.version = version
        self.needed = needed
        self.command = command


class UnavailableMiss(KeyError):
    """With ``on_error="miss"``: a read that failed in Redis, reported as a miss.

    ``__cause__`` is the :class:`RedisStorageError`.
    """


class SaveRefused(SaveError, FlecheRedisError):
    """A write the storage refused; fleche returns the result uncached.

    With ``on_error="miss"`` every write that fails in Redis is one
    (``__cause__`` is the :class:`RedisStorageError`).
    """


class NotReplicated(SaveError, FlecheRedisError):
    """Fewer replicas than ``wait_replicas`` acknowledged a write within its timeout.

    The write is on the primary and readers see it, but a failover before
    the replicas catch up may lose it: it is not durable as asked.  Never
    turned into a miss or a silent success, whatever ``on_error`` says.
    ``acknowledged`` and ``wanted`` are the replica counts (``WAIT``'s reply
    and the setting); ``server`` is the primary that took the write.
    """

    # Defaults keep the exception picklable (see RedisStorageError).
    def __init__(
        self, message: str, *, acknowledged: int = 0, wanted: int = 0, server: str = "?"
    ) -> None:
        super().__init__(message)
        self.acknowledged = acknowledged
        self.wanted = wanted
        self.server = server


# -- locks ---------------------------------------------------------------------


class LockError(FlecheRedisError, SaveError):
    """A distributed lock could not be taken, kept or released.

    ``name`` is the Redis key of the lock, so a log line says which entry or
    namespace was contended.
    """

    def __init__(self, message: str, *, name: str = "?") -> None:
        super().__init__(message)
        self.name = name


class LockTimeout(LockError):
    """The blocking timeout ran out while another holder kept the lock."""


class LockUnavailable(LockError):
    """Fewer than a quorum of the lock's Redis servers answered.

    Raised by ``acquire`` when the timeout runs out in that state, and by
    ``release`` when some server could not confirm: the lock keeps its token,
    so calling ``release`` again finishes the job.
    """


class LockNotOwned(LockError):
    """``release`` or ``extend`` on a lock this object does not hold."""


class LockLost(LockError):
    """The lock expired or passed to someone else while this holder believed it held it.

    Whatever the holder did after the loss was not protected; a resource
    guarded with fencing tokens has already refused its stale writes.
    """
