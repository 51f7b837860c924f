"""Redis storage, distributed locks and shared caches for fleche.

Importing this package registers storage type ``"redis"`` for values and
calls, so ``fleche.toml`` files and :func:`fleche.config.cache_from_config`
can name it.  :class:`Redlock` is a distributed lock, and
:class:`PerKeyLockMixin` / :class:`SerializingMixin` put it in front of any
fleche storage or cache (see :mod:`fleche_redis.locks`).
"""

from . import metrics
from .admin import maintenance
from .cache.caches import RedisCache, redis_cache
from .cache.configured import configured_cache
from .errors import (
    FlecheRedisError,
    InvalidDigestError,
    LockError,
    LockLost,
    LockNotOwned,
    LockTimeout,
    LockUnavailable,
    NotReplicated,
    RedisStorageError,
    ServerTooOld,
    StorageUnavailable,
    UndecodableEntry,
)
from .locks.mixins import PerKeyLockMixin, SerializingMixin
from .locks.redlock import Redlock
from .storage.backend import DEFAULT_URL, CallRedis, RedisBackend, ValueRedis
from .storage.keys import KeyLayout, lock_key

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "RedisBackend",
    "ValueRedis",
    "CallRedis",
    "RedisCache",
    "redis_cache",
    "configured_cache",
    "maintenance",
    "metrics",
    "KeyLayout",
    "FlecheRedisError",
    "RedisStorageError",
    "StorageUnavailable",
    "ServerTooOld",
    "NotReplicated",
    "InvalidDigestError",
    "UndecodableEntry",
    "Redlock",
    "lock_key",
    "PerKeyLockMixin",
    "SerializingMixin",
    "LockError",
    "LockTimeout",
    "LockUnavailable",
    "LockNotOwned",
    "LockLost",
]
