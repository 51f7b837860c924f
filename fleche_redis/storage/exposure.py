"""Whether a storage keeps unsigned pickles on a server others can reach, and the one warning that says so.

Entries are pickles: without a secret key, whoever can write to the Redis
runs code in every process that reads the cache.  On loopback or a unix
socket that is this host's users; on a network it is anyone who reaches
the server, and many servers on a cluster's network have no password.  So
a storage with no key on a network server says so once per process and
server, when it is built (in a worker, that is when it is unpickled: its
first use there), and its ``metrics()`` carry ``unsigned_network``.
See ``docs/security.md``.
"""

from __future__ import annotations

import ipaddress
import logging

from .. import runtime

__all__ = ["on_network", "check"]

logger = logging.getLogger("fleche_redis.security")


def on_network(url: str) -> bool:
    """Whether *url* names a server that is not on this host (not loopback, not a unix socket)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme == "unix":
        return False
    netloc = rest.partition("/")[0].rpartition("@")[2]
    return any(not _loopback(host) for host in netloc.split(",") if host)


def _loopback(hostport: str) -> bool:
    if hostport.startswith("["):  # [::1]:6379
        host = hostport[1:].partition("]")[0]
    else:
        host = hostport.rpartition(":")[0] if hostport.count(":") == 1 else hostport
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume the network
        return False


def check(url: str, server: str, namespace: str, signed: bool, *, restricted: bool = False) -> bool:
    """Whether a storage on *url* is exposed (unsigned, on a network); warn once per process and server.

    With the *restricted* reader the warning stays (anyone who can write can
    still change every result) but says that what their pickles can run is limited.
    """
    exposed = not signed and on_network(url)
    if exposed:
        warned: set[str] = runtime.per_process("exposure.warned", set)
        if server not in warned:
            warned.add(server)
            logger.warning(
                "fleche-redis: entries on %s (namespace %r) are unsigned pickles on a network "
                "server: anyone who can write to it %s. Set FLECHE_SECRET_KEY (`fleche-redis "
                "keygen` makes one) or pass secret_key=...; see docs/security.md",
                server,
                namespace,
                _RESTRICTED_RISK if restricted else _RISK,
            )
    return exposed


_RISK = "can run code in every process that reads the cache"
_RESTRICTED_RISK = (
    "can change the results every process reads (the restricted reader limits what their "
    "pickles can run to its allow-list, not what they return)"
)
