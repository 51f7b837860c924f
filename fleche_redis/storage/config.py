"""A storage's configuration: the options its client connects with, and what ``to_config`` writes.

Kept apart from :mod:`.backend` so the storage class reads as its operations.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..transport import replicas
from ..transport.health import POLICIES

__all__ = [
    "NO_ADDRESS",
    "TUNING",
    "check",
    "client_options",
    "refuse_decoding_client",
    "describe",
]

NO_ADDRESS = "client://"
"""The ``url`` of a storage built on a client that has no address (in-process fakeredis)."""

TUNING = (
    "compress_min_size",
    "chunk_size",
    "ttl",
    "on_error",
    "socket_timeout",
    "connect_timeout",
    "retries",
    "breaker_threshold",
    "breaker_cooldown",
    "failover_wait",
    "near_cache_bytes",
    "wait_replicas",
    "wait_replicas_timeout",
    "require_signature",
    "restricted",
)
"""Fields written by ``to_config`` only when they differ from their default."""


def check(storage: Any) -> None:
    """Raise ``ValueError`` for a storage option out of its range."""
    ttl, failover_wait, on_error = storage.ttl, storage.failover_wait, storage.on_error
    if ttl is not None and not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds or None, not {ttl!r}")
    if not failover_wait >= 0:
        raise ValueError(f"failover_wait must be >= 0 seconds, not {failover_wait!r}")
    for name in ("socket_timeout", "connect_timeout"):
        seconds = getattr(storage, name)
        if seconds is not None and not seconds > 0:
            raise ValueError(
                f"{name} must be a positive number of seconds or None, not {seconds!r}"
            )
    if on_error not in POLICIES:
        raise ValueError(f"on_error must be one of {POLICIES}, not {on_error!r}")
    replicas.check(storage.wait_replicas, storage.wait_replicas_timeout, storage.socket_timeout)


def client_options(
    socket_timeout: float | None, connect_timeout: float | None, retries: int
) -> dict[str, Any]:
    """Keyword arguments for the redis-py client a storage builds from its URL."""
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
    }
    if retries:
        # Every command the storages send is idempotent (content-addressed
        # writes, deletes, reads), so retrying after a dropped connection
        # is safe.
        options["retry"] = Retry(ExponentialBackoff(cap=0.5, base=0.01), retries)
    return options


def refuse_decoding_client(client: Any) -> None:
    """Raise ``ValueError`` for a client that decodes replies to ``str`` (entries are binary)."""
    if isinstance(client, redis.RedisCluster):
        decode = client.get_encoder().decode_responses
    else:
        pool = getattr(client, "connection_pool", None)
        decode = pool is not None and pool.connection_kwargs.get("decode_responses", False)
    if decode:
        raise ValueError(
            "the Redis client decodes responses to str; fleche-redis stores binary entries, "
            "so build the client with decode_responses=False"
        )


def describe(storage: Any, *, secret_explicit: bool) -> dict[str, Any]:
    """The storage's configuration as fleche's ``to_config`` writes it."""
    if storage.url == NO_ADDRESS:
        raise TypeError(
            f"{type(storage).__name__} was built on an in-process client (fakeredis?) that has "
            "no address, so it cannot be written as configuration"
        )
    config: dict[str, Any] = {
        "type": "redis",
        "url": storage.url,
        "namespace": storage.namespace,
        "serializer": storage.serializer,
        "compress": storage.compress,
    }
    # Keys taken from FLECHE_SECRET_KEY stay in the environment.
    if secret_explicit:
        config["secret_key"] = [k.hex() for k in storage.secret_key]
    # Tuning options only when changed, so configs stay short; None has no
    # TOML form and is left out.
    for f in fields(storage):
        if f.name in TUNING:
            value = getattr(storage, f.name)
            if value != f.default and value is not None:
                config[f.name] = value
    if storage.allowed_modules:
        config["allowed_modules"] = list(storage.allowed_modules)  # TOML has no tuples
    return config
