"""Where a command works (URL and namespace from options or environment), and connecting there."""

from __future__ import annotations

import argparse
import os
from typing import Any

import redis

from ..errors import FlecheRedisError
from ..storage.keys import check_namespace
from ..transport.connection import URL_SCHEMES
from .errors import EXIT_FOUND, CliError, explain

__all__ = [
    "DEFAULT_NAMESPACE",
    "SCHEMES",
    "url_of",
    "namespace_of",
    "storages",
    "open_cache",
    "redacted",
]

DEFAULT_NAMESPACE = "fleche"
SCHEMES = URL_SCHEMES


def url_of(args: argparse.Namespace) -> str:
    from ..storage.backend import DEFAULT_URL

    return getattr(args, "url", None) or os.environ.get("REDIS_URL") or DEFAULT_URL


def namespace_of(args: argparse.Namespace) -> str:
    namespace = (
        getattr(args, "namespace", None)
        or os.environ.get("FLECHE_REDIS_NAMESPACE")
        or DEFAULT_NAMESPACE
    )
    try:
        return check_namespace(namespace)
    except ValueError as e:
        raise CliError(str(e)) from None


def bad_url(url: str, error: Exception) -> CliError:
    """The command line's one-line error for a URL *error* refused (ours, redis-py's or urllib's)."""
    from ..transport.connection import redact_url

    message = str(error)
    if not message.startswith("invalid Redis URL"):
        message = f"invalid Redis URL {redact_url(url)!r}: {message} (use {SCHEMES})"
    return CliError(message)


def storages(url: str, namespace: str, *, restricted: bool = False) -> tuple[Any, Any]:
    from ..storage.backend import CallRedis, ValueRedis
    from ..transport.connection import client_from_url, redact_url

    try:
        client_from_url(url).close()  # parses the URL; connects lazily, so nothing is sent
    except (ValueError, TypeError, IndexError) as e:
        raise bad_url(url, e) from None
    except redis.RedisError as e:
        raise CliError(explain(e, redact_url(url))) from None
    # A command line fails fast: no retry, and a breaker that never opens.
    # FLECHE_SECRET_KEY and FLECHE_REDIS_REQUIRE_SIGNATURE apply as to any storage.
    options: dict[str, Any] = {"retries": 0, "breaker_threshold": 10**9, "restricted": restricted}
    try:
        values = ValueRedis(url=url, namespace=namespace, **options)
        calls = CallRedis(url=url, namespace=namespace, **options)
    except ValueError as e:  # FLECHE_REDIS_REQUIRE_SIGNATURE without a key, say
        raise CliError(str(e)) from None
    calls.channel.run("ping", lambda client: client.ping())
    return values, calls


def open_cache(args: argparse.Namespace, *, need_entries: bool = True) -> Any:
    """The namespace's cache; a :class:`CliError` (exit 1) when it holds nothing.

    An empty namespace is nearly always a misspelled one: the error names
    the namespaces that do exist, where the server lets us list them.
    """
    from ..cache.caches import RedisCache

    restricted = getattr(args, "restricted", False)
    values, calls = storages(url_of(args), namespace_of(args), restricted=restricted)
    if need_entries and calls.count() == 0 and values.count() == 0:
        raise CliError(_holds_nothing(calls), EXIT_FOUND)
    return RedisCache(values=values, calls=calls)


def _holds_nothing(calls: Any) -> str:
    from ..admin.inspection import namespaces

    said = f"namespace {calls.namespace!r} holds nothing at {calls.server}"
    try:
        others = [ns for ns in namespaces(calls) if ns != calls.namespace]
    except FlecheRedisError:
        return f"{said} (this user may not list the other namespaces)"
    if not others:
        return f"{said}, and no other namespace of fleche-redis is there"
    return f"{said}; namespaces there: {', '.join(others)} (choose one with --namespace)"


def redacted(url: str) -> str:
    from ..transport.connection import redact_url

    return redact_url(url)
