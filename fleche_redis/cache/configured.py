"""A ``fleche.toml`` section as a :class:`~.caches.RedisCache` (fleche itself builds a plain ``Cache``)."""

from __future__ import annotations

import logging
from typing import Any

from fleche.caches import Cache

from ..storage.backend import CallRedis, ValueRedis
from .caches import RedisCache

__all__ = ["configured_cache"]


def configured_cache(name: str | None = None, **options: Any) -> RedisCache:
    """fleche's configured cache *name* (``None``: the default one) as a :class:`RedisCache`.

    From a ``fleche.toml`` section fleche builds its plain ``Cache``, whatever
    the storages: with ``type = "redis"`` for values and calls that is a
    working shared cache, but one without single flight that spends 4 round
    trips on a miss.  This puts the section's storages in a ``RedisCache``;
    *options* are the cache's own (``single_flight``, ``write_behind``, ...).

    Raises ``ValueError`` when the section is not a plain ``Cache`` over a
    ``ValueRedis`` and a ``CallRedis`` (fleche falls back to a memory cache
    for a name it does not find, which lands here too).
    """
    import fleche.config

    with _FallbackHeard() as heard:
        cache = fleche.config.load_cache_config(name)
    if heard.reason is not None:
        raise ValueError(
            f"fleche's configuration has no cache {name or 'default'!r} ({heard.reason}; "
            "fleche fell back to a memory cache)"
        )
    values, calls = getattr(cache, "values", None), getattr(cache, "calls", None)
    if (
        type(cache) is not Cache
        or not isinstance(values, ValueRedis)
        or not isinstance(calls, CallRedis)
    ):
        raise ValueError(
            f"fleche's cache {name or 'default'!r} is {type(cache).__name__}"
            f"({type(values).__name__}, {type(calls).__name__}), not a Cache over"
            ' ValueRedis and CallRedis (type = "redis" for values and calls)'
        )
    return RedisCache(values, calls, **options)


class _FallbackHeard(logging.Handler):
    """Hears fleche say it fell back to a memory cache, and why (a name it did not find)."""

    PREFIX = "Using default memory cache: "

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.reason: str | None = None
        self._logger = logging.getLogger("fleche.config")
        self._level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self.PREFIX):
            self.reason = message[len(self.PREFIX) :]

    def __enter__(self) -> _FallbackHeard:
        self._logger.addHandler(self)
        if not self._logger.isEnabledFor(logging.INFO):
            self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)
