"""Whole-store work at scale: verify, repair, garbage-collect, transform, redigest, resign.

The public face of maintenance (``fleche_redis.maintenance``).  The work is
done in the storage layer, where the storages' own ``verify``, ``repair``
and ``transform`` methods and :class:`~fleche_redis.RedisCache` reach it
too; how it streams and what it checks: ``docs/maintenance.md``.
"""

from __future__ import annotations

from ..storage.check import Report, repair, verify
from ..storage.collect import GcAlreadyRunning, gc, redigest
from ..storage.resign import Resigned, resign
from ..storage.scan import Progress
from ..storage.snapshot import transform

__all__ = [
    "Report",
    "verify",
    "repair",
    "gc",
    "transform",
    "redigest",
    "resign",
    "Resigned",
    "Progress",
    "GcAlreadyRunning",
]
