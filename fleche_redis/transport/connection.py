"""Building Redis clients from URLs, lazily and once per process.

A :class:`ClientSlot` builds a storage's client on first use and again after
``fork()``.  URLs are redis-py's plus ``redis+cluster://`` and
``redis+sentinel://`` (see ``docs/transport.md``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis

from .. import runtime
from . import redispy

__all__ = [
    "ClientSlot",
    "shared_slot",
    "client_from_url",
    "check_url",
    "parse_cluster_url",
    "parse_sentinel_url",
    "url_from_client",
    "redact_url",
    "fails_over",
]

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_SENTINEL_SCHEMES = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}


def redact_url(url: str) -> str:
    """*url* with its password replaced by ``***`` (for repr, logs and errors)."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{hosts}{slash}{tail}"


URL_SCHEMES = "redis://, rediss://, unix://, redis+cluster://, redis+sentinel://"
"""The URL forms a storage takes (and ``rediss+cluster://``, ``rediss+sentinel://``)."""

_SCHEMES = {"redis", "rediss", "unix", *_CLUSTER_SCHEMES, *_SENTINEL_SCHEMES}


def check_url(url: str) -> str:
    """Return *url*, or raise ``ValueError`` for a URL no storage can use.

    A missing or unknown scheme names the forms there are.  redis-py reads
    ``redis://host/abc`` as database 0 without a word; a cache silently
    shared with whatever lives in database 0 is worse than an error at
    construction.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a string such as 'redis://host:6379/0', not {url!r}")
    if "://" not in url:
        guess = f"redis://{url}" if "/" in url else f"redis://{url}/0"
        raise ValueError(
            f"invalid Redis URL {redact_url(url)!r}: it has no scheme "
            f"(did you mean {redact_url(guess)!r}? use {URL_SCHEMES})"
        )
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"invalid Redis URL {redact_url(url)!r}: unknown scheme {parts.scheme!r} "
            f"(use {URL_SCHEMES})"
        )
    segments = [s for s in parts.path.split("/") if s]
    if parts.scheme in _SENTINEL_SCHEMES:
        segments = segments[1:]  # the service name comes first
    elif parts.scheme == "unix":
        segments = []  # the path is the socket
    database = [q.partition("=")[2] for q in parts.query.split("&") if q.startswith("db=")]
    for db in segments[:1] + database:
        if not db.isdigit():
            raise ValueError(
                f"invalid Redis URL {redact_url(url)!r}: database {db!r} is not a number "
                "(use .../0 for the first database)"
            )
    if len(segments) > 1:
        raise ValueError(
            f"invalid Redis URL {redact_url(url)!r}: the path names one database, "
            f"not {'/'.join(segments)!r}"
        )
    if parts.scheme in _CLUSTER_SCHEMES and segments and segments[0] != "0":
        raise ValueError(
            f"invalid Redis URL {redact_url(url)!r}: Redis Cluster has database 0 only"
        )
    return url


def client_from_url(url: str, **options: Any) -> redis.Redis | redis.RedisCluster:
    """A client for *url*; *options* go to the redis-py constructor.

    Responses are always bytes (``decode_responses`` is forced off): stored
    entries are binary.
    """
    check_url(url)
    options = {**options, "decode_responses": False}
    # redis-py lets URL query options override keyword arguments.  Cut by
    # hand: urlunsplit would write unix:///path back as unix:/path.
    base, _, query = url.partition("?")
    kept = "&".join(q for q in query.split("&") if q and not q.startswith("decode_responses="))
    url = f"{base}?{kept}" if kept else base
    scheme = urlsplit(url).scheme
    if scheme in _CLUSTER_SCHEMES:
        return _cluster_from_url(url, **options)
    if scheme in _SENTINEL_SCHEMES:
        return _sentinel_from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Split ``redis+cluster://[user:pw@]h1:p1,h2:p2[?opts]`` into nodes and client options.

    Also parses the host list and options of a ``redis+sentinel://`` URL.
    """
    parts = urlsplit(url)
    base_scheme = {**_CLUSTER_SCHEMES, **_SENTINEL_SCHEMES}[parts.scheme]
    auth, _, hosts = parts.netloc.rpartition("@")
    nodes = []
    for hostport in filter(None, hosts.split(",")):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            host, port = hostport, "6379"
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError(f"cluster URL names no nodes: {redact_url(url)}")
    # Let redis-py parse credentials and query options from an ordinary URL
    # naming the first node, then drop what names that single node.
    single = urlunsplit(
        (base_scheme, (auth + "@" if auth else "") + "localhost", "", parts.query, "")
    )
    options = redispy.parse_url(single)
    for name in ("host", "port", "db", "connection_class", "path"):
        options.pop(name, None)
    if base_scheme == "rediss":
        options["ssl"] = True
    return nodes, options


def _cluster_from_url(url: str, **options: Any) -> redis.RedisCluster:
    from redis.cluster import ClusterNode

    nodes, parsed = parse_cluster_url(url)
    return redis.RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in nodes], **{**parsed, **options}
    )


def parse_sentinel_url(
    url: str,
) -> tuple[list[tuple[str, int]], str, dict[str, Any], dict[str, Any]]:
    """Split a ``redis+sentinel://`` URL into sentinels, service name, primary and sentinel options."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        raise ValueError(
            f"sentinel URL names no service: {redact_url(url)} (use .../service_name[/db])"
        )
    service = segments[0]
    nodes, options = parse_cluster_url(urlunsplit(parts._replace(path="")))
    if len(segments) > 1:
        options["db"] = int(segments[1])
    sentinel_options = {
        name: options.pop(f"sentinel_{name}")
        for name in ("password", "username")
        if f"sentinel_{name}" in options
    }
    return nodes, service, options, sentinel_options


def _sentinel_from_url(url: str, **options: Any) -> redis.Redis:
    from redis.sentinel import Sentinel

    nodes, service, parsed, sentinel_options = parse_sentinel_url(url)
    timeout = {
        k: v
        for k, v in {**parsed, **options}.items()
        if k in ("socket_timeout", "socket_connect_timeout")
    }
    sentinel = Sentinel(nodes, sentinel_kwargs={**sentinel_options, **timeout})
    return sentinel.master_for(service, **{**parsed, **options})


def fails_over(client: Any) -> bool:
    """Whether another server takes over when *client*'s server fails: Redis Cluster, Sentinel."""
    if isinstance(client, redis.RedisCluster):
        return True
    from redis.sentinel import SentinelConnectionPool

    return isinstance(getattr(client, "connection_pool", None), SentinelConnectionPool)


def url_from_client(client: Any, *, with_password: bool = True) -> str | None:
    """A URL that reaches the same server as *client*, or ``None`` if there is none.

    Used to pickle a storage that was given a ready client: the receiving
    process connects to the same server by URL.  In-process fakes
    (fakeredis) have no address and give ``None``.  With
    ``with_password=False`` the credentials are left out (for display and
    configuration).
    """

    def auth(kw: dict[str, Any]) -> str:
        return _auth(kw) if with_password else ""

    if isinstance(client, redis.RedisCluster):
        nodes = client.get_nodes()
        if not nodes:
            return None
        kw = nodes[0].redis_connection.connection_pool.connection_kwargs
        scheme = "rediss+cluster" if kw.get("ssl") or "ssl_certfile" in kw else "redis+cluster"
        hosts = ",".join(f"{n.host}:{n.port}" for n in nodes)
        return f"{scheme}://{auth(kw)}{hosts}"
    pool = getattr(client, "connection_pool", None)
    if pool is None or "server" in pool.connection_kwargs:  # fakeredis
        return None
    manager = getattr(pool, "sentinel_manager", None)
    if manager is not None:
        kw = pool.connection_kwargs
        hosts = ",".join(
            f"{s.connection_pool.connection_kwargs['host']}:{s.connection_pool.connection_kwargs['port']}"
            for s in manager.sentinels
        )
        scheme = "rediss+sentinel" if kw.get("ssl") else "redis+sentinel"
        return f"{scheme}://{auth(kw)}{hosts}/{pool.service_name}/{kw.get('db', 0)}"
    kw = pool.connection_kwargs
    conn_cls = pool.connection_class
    if issubclass(conn_cls, redis.UnixDomainSocketConnection):
        return f"unix://{auth(kw)}{kw['path']}?db={kw.get('db', 0)}"
    if "host" not in kw:
        return None
    scheme = "rediss" if issubclass(conn_cls, redis.SSLConnection) else "redis"
    return f"{scheme}://{auth(kw)}{kw['host']}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def _auth(kw: dict[str, Any]) -> str:
    user, password = kw.get("username"), kw.get("password")
    if not user and not password:
        return ""
    return f"{quote(user or '', safe='')}:{quote(password or '', safe='')}@"


class ClientSlot:
    """Process-local home of one storage's client.

    ``get()`` returns the client, building it on first use and again after a
    fork.  A client handed in by the user is returned as is (redis-py's pools
    already drop inherited connections after a fork).
    """

    __slots__ = ("_factory", "_client", "_generation", "_lock", "_given")

    def __init__(self, factory: Callable[[], Any], given: Any = None) -> None:
        self._factory = factory
        self._given = given
        self._client: Any = None
        self._generation = -1
        self._lock = threading.Lock()

    def get(self) -> Any:
        if self._given is not None:
            return self._given
        generation = runtime.fork_generation()
        if self._generation != generation:
            with self._lock:
                if self._generation != generation:
                    self._client = self._factory()
                    self._generation = generation
        return self._client

    def close(self) -> None:
        """Close the client this slot built (never one the user handed in)."""
        with self._lock:
            if self._client is not None and self._generation == runtime.fork_generation():
                self._client.close()
            self._client = None
            self._generation = -1


_shared_slots: dict[tuple[Any, ...], ClientSlot] = {}
_shared_lock = threading.Lock()


def shared_slot(url: str, options: dict[str, Any], key: tuple[Any, ...]) -> ClientSlot:
    """The process's one slot for a server and client *key* (the options that matter).

    Storages that talk to the same server with the same settings share a
    client, so they share a connection pool, and one pipeline can carry the
    writes of a value storage and a call storage together (see
    :mod:`.batch`).
    """
    with _shared_lock:
        slot = _shared_slots.get(key)
        if slot is None:
            slot = _shared_slots[key] = ClientSlot(lambda: client_from_url(url, **options))
        return slot
