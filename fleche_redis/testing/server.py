"""Private ``redis-server`` processes for tests, benchmarks and the demo (the public names).

A single server lives in :mod:`.process`, the cluster in :mod:`.cluster`, the
sentinel group in :mod:`.groups`, certificates in :mod:`.tls`; usage is in docs/testing.md.
"""

from __future__ import annotations

from .cluster import RedisClusterProcesses
from .groups import RedisSentinelProcesses
from .process import RedisServer, ServerStartError, free_port, redis_server_binary
from .tls import TlsFiles

__all__ = [
    "TlsFiles",
    "RedisServer",
    "RedisClusterProcesses",
    "RedisSentinelProcesses",
    "redis_server_binary",
    "free_port",
    "ServerStartError",
]
