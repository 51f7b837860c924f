"""Helpers for testing code that uses fleche-redis: private servers and fixtures."""

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
