"""What each storage did in this process: counters, as a dict, a debug log line, or an export.

Every storage owns one :class:`StorageMetrics` (``storage.metrics()``);
counters are process-local and lock-free.  :func:`add_exporter` and
:func:`prometheus_collector` export snapshots; docs/observability.md
shows the fields.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "StorageMetrics",
    "COUNTERS",
    "NEAR_COUNTERS",
    "add_exporter",
    "remove_exporter",
    "export",
    "snapshots",
    "prometheus_collector",
]

logger = logging.getLogger("fleche_redis.metrics")

COUNTERS: tuple[str, ...] = (
    "requests",
    "errors",
    "short_circuited",
    "retries",
    "hits",
    "misses",
    "saves",
    "bytes_in",
    "bytes_out",
    "lock_acquires",
    "lock_waits",
    "lock_wait_seconds",
    "lock_failures",
    "unsigned_refused",
    "restricted_refused",
)
"""Every counter of a snapshot, in order; each only ever grows."""

NEAR_COUNTERS: tuple[str, ...] = (
    "near_hits",
    "near_misses",
    "near_evictions",
    "near_invalidations",
)
"""The near cache's counters, in a snapshot beside ``near_bytes``, ``near_entries`` and
``near_records`` (``tracked``, ``waiting``, ``untracked``, ``off`` or ``values``)."""

_HELP = {
    "requests": "Requests sent to Redis (one per command, pipeline or script)",
    "errors": "Requests that failed in Redis (connection, timeout, refusal)",
    "short_circuited": "Operations refused at once because the circuit breaker was open",
    "retries": "Requests sent again while a failover or slot migration was ridden through",
    "hits": "Reads that found their entry",
    "misses": "Reads that found no entry",
    "saves": "Entries written",
    "bytes_in": "Bytes of entries read",
    "bytes_out": "Bytes of entries written",
    "lock_acquires": "Distributed locks acquired",
    "lock_waits": "Acquisitions that had to wait for another holder",
    "lock_wait_seconds": "Seconds spent acquiring the locks that had to wait",
    "lock_failures": "Locks that could not be acquired (timeout, no quorum)",
    "unsigned_refused": "Entries read without a signature where a secret key wants one (misses)",
    "restricted_refused": "Entries the restricted reader refused to unpickle (misses)",
    "near_hits": "Reads served by the near cache, without a request",
    "near_misses": "Reads the near cache could not serve",
    "near_evictions": "Near-cache entries dropped to stay within near_cache_bytes",
    "near_invalidations": "Near-cache entries dropped because they changed (or tracking stopped)",
}

interval: float = 10.0
"""Seconds between two periodic reports (debug log line and exporters) of one storage."""

CHECK_EVERY = 256
"""Requests between two looks at the clock; keeps the periodic report off the hot path."""

_live: weakref.WeakSet[StorageMetrics] = weakref.WeakSet()
_exporters: list[Callable[[dict[str, Any]], None]] = []
_registry_lock = threading.Lock()


class StorageMetrics:
    """The counters of one storage in one process (see the module docstring)."""

    __slots__ = (
        "storage",
        "server",
        "namespace",
        *COUNTERS,
        "next_check",
        "unsigned_network",
        "_breaker",
        "_near",
        "_last_report",
        "__weakref__",
    )

    def __init__(
        self, storage: str, server: str, namespace: str, breaker: Any = None, near: Any = None
    ) -> None:
        self.storage = storage
        self.server = server
        self.namespace = namespace
        self._breaker = breaker
        self._near = near
        self.requests = self.errors = self.short_circuited = self.retries = 0
        self.hits = self.misses = self.saves = self.bytes_in = self.bytes_out = 0
        self.lock_acquires = self.lock_waits = self.lock_failures = 0
        self.unsigned_refused = self.restricted_refused = 0
        self.lock_wait_seconds = 0.0
        self.next_check = CHECK_EVERY
        # Entries unsigned on a server beyond this host (see storage/exposure.py).
        self.unsigned_network = False
        self._last_report = time.monotonic()
        with _registry_lock:
            _live.add(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # Counters belong to the process that counted them.
        return (StorageMetrics, (self.storage, self.server, self.namespace))

    def snapshot(self) -> dict[str, Any]:
        """The counters now, with labels and the circuit breaker's state, as a plain dict."""
        snap: dict[str, Any] = {
            "storage": self.storage,
            "server": self.server,
            "namespace": self.namespace,
            "pid": os.getpid(),
            "unsigned_network": self.unsigned_network,
        }
        for name in COUNTERS:
            snap[name] = getattr(self, name)
        breaker = self._breaker
        if breaker is not None:
            snap["breaker_state"] = breaker.state
            snap["breaker_failures"] = breaker.failures
            snap["breaker_opened"] = breaker.opened
        near = self._near
        if near is not None:
            snap.update(near.stats())
        return snap

    def lock_acquired(self, seconds: float, waited: bool) -> None:
        """Record one acquisition and how long it took (counted as a wait if it had to queue)."""
        self.lock_acquires += 1
        if waited:
            self.lock_waits += 1
            self.lock_wait_seconds += seconds

    def check(self) -> None:
        """Called by the storage when ``requests`` reaches ``next_check``: report if one is due."""
        self.next_check = self.requests + CHECK_EVERY
        now = time.monotonic()
        if now - self._last_report < interval:
            return
        self._last_report = now
        if _exporters or logger.isEnabledFor(logging.DEBUG):
            _report(self.snapshot())


def _report(snap: dict[str, Any]) -> None:
    logger.debug("%s", snap)
    for exporter in list(_exporters):
        try:
            exporter(snap)
        except Exception:
            # An exporter's failure must never fail a cache operation.
            logger.warning("metrics exporter %r failed", exporter, exc_info=True)


def add_exporter(exporter: Callable[[dict[str, Any]], None]) -> None:
    """Call ``exporter(snapshot)`` for every storage on each periodic report and on :func:`export`."""
    with _registry_lock:
        if exporter not in _exporters:
            _exporters.append(exporter)


def remove_exporter(exporter: Callable[[dict[str, Any]], None]) -> None:
    with _registry_lock:
        if exporter in _exporters:
            _exporters.remove(exporter)


def snapshots() -> list[dict[str, Any]]:
    """Snapshots of every storage alive in this process."""
    with _registry_lock:
        live = list(_live)
    return [m.snapshot() for m in live]


def export() -> list[dict[str, Any]]:
    """Report every live storage now (debug log and exporters); returns the snapshots."""
    snaps = snapshots()
    for snap in snaps:
        _report(snap)
    return snaps


_LABELS = ("storage", "server", "namespace")


class _PrometheusCollector:
    """A ``prometheus_client`` custom collector reading :func:`snapshots` at scrape time."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def describe(self) -> list[Any]:
        return []  # unchecked collector: families depend on the live storages

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snaps = snapshots()
        for name in COUNTERS:
            family = CounterMetricFamily(f"{self.prefix}_{name}", _HELP[name], labels=_LABELS)
            for s in snaps:
                family.add_metric([s[k] for k in _LABELS], s[name])
            yield family
        for name in NEAR_COUNTERS:
            family = CounterMetricFamily(f"{self.prefix}_{name}", _HELP[name], labels=_LABELS)
            for s in snaps:
                if name in s:
                    family.add_metric([s[k] for k in _LABELS], s[name])
            yield family
        held = GaugeMetricFamily(
            f"{self.prefix}_near_bytes", "Bytes the near cache holds now", labels=_LABELS
        )
        for s in snaps:
            if "near_bytes" in s:
                held.add_metric([s[k] for k in _LABELS], s["near_bytes"])
        yield held
        state = GaugeMetricFamily(
            f"{self.prefix}_breaker_open",
            "Circuit breaker state: 0 closed, 1 open, 0.5 half-open",
            labels=_LABELS,
        )
        for s in snaps:
            if "breaker_state" in s:
                value = {"closed": 0.0, "open": 1.0, "half-open": 0.5}[s["breaker_state"]]
                state.add_metric([s[k] for k in _LABELS], value)
        yield state


def prometheus_collector(prefix: str = "fleche_redis") -> Any:
    """A collector to register with ``prometheus_client``; needs that package installed::

        from prometheus_client import REGISTRY, start_http_server
        REGISTRY.register(fleche_redis.metrics.prometheus_collector())
        start_http_server(9100)

    Each counter becomes ``<prefix>_<counter>_total`` labelled by storage,
    server and namespace, read from the live storages at scrape time.
    """
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ImportError(
            "prometheus_collector() needs prometheus_client: pip install prometheus_client"
        ) from None
    return _PrometheusCollector(prefix)
