"""Helpers for testing code that uses fleche-redis: servers, round trips, conformance, fixtures, network faults.

The testing package may import the library, never the other way round:
nothing imports it except the CLI's demo (through ``embedded``).  See
docs/testing.md.
"""

from .server import (
    RedisClusterProcesses,
    RedisSentinelProcesses,
    RedisServer,
    ServerStartError,
    free_port,
    redis_server_binary,
)

__all__ = [
    "RedisServer",
    "RedisClusterProcesses",
    "RedisSentinelProcesses",
    "ServerStartError",
    "free_port",
    "redis_server_binary",
]
