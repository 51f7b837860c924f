"""Redis storage, distributed locks and shared caches for fleche.

Importing this package registers storage type ``"redis"`` for values and
calls, so ``fleche.toml`` files and :func:`fleche.config.cache_from_config`
can name it.
"""

from . import maintenance
from .backend import DEFAULT_URL, CallRedis, RedisBackend, ValueRedis
from .caches import RedisCache
from .errors import (
    FlecheRedisError,
    InvalidDigestError,
    RedisStorageError,
    StorageUnavailable,
    UndecodableEntry,
)
from .keys import KeyLayout

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "RedisBackend",
    "ValueRedis",
    "CallRedis",
    "RedisCache",
    "maintenance",
    "KeyLayout",
    "FlecheRedisError",
    "RedisStorageError",
    "StorageUnavailable",
    "InvalidDigestError",
    "UndecodableEntry",
]
