"""fleche caches that know their storages are Redis.

:class:`RedisCache` is a :class:`fleche.caches.Cache` whose whole-store
operations (``gc``, ``redigest``) stream with bounded memory through
:mod:`fleche_redis.maintenance` instead of fleche's load-everything loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleche.caches import Cache

from . import maintenance

__all__ = ["RedisCache"]


@dataclass(frozen=True)
class RedisCache(Cache):
    """A fleche ``Cache`` over a :class:`~fleche_redis.ValueRedis` and a :class:`~fleche_redis.CallRedis`.

    Everything fleche's ``Cache`` does works unchanged; :meth:`gc` and
    :meth:`redigest` run at scale.
    """

    def gc(self, *, progress: maintenance.Progress | None = None) -> int:  # type: ignore[override]
        """Evict unreachable values, streaming; returns how many were evicted.

        Unlike fleche's ``Cache.gc`` (which returns the set of evicted digests,
        as large as the garbage), this returns a count: the point is to run on
        stores of millions of entries.
        """
        return maintenance.gc(self, **_progress(progress))

    def redigest(self, *, progress: maintenance.Progress | None = None) -> int:  # type: ignore[override]
        """Re-key records whose digest changed, streaming; returns how many moved."""
        return maintenance.redigest(self, **_progress(progress))


def _progress(progress: Any) -> dict[str, Any]:
    return {"progress": progress} if progress is not None else {}
