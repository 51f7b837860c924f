"""``fleche-redis acl``: a Redis user confined to one namespace, its generated password, and its URL.

The user may touch only keys and channels under ``<namespace>:`` and may
run every command but the dangerous ones (``KEYS``, ``FLUSH*``, ``CONFIG``,
``DEBUG``, ...): everything a storage, a cache, their locks, the near
cache's tracking and the maintenance commands need, and nothing that
reaches another namespace.  Without ``--apply`` it prints the ``ACL
SETUSER`` line for an administrator to run; with it, the command's own
``--url`` (an administrator's) creates the user on every node and checks
that it can log in.  Either way the URL to use follows, password included:
it is printed once, and not kept anywhere.
"""

from __future__ import annotations

import argparse
import secrets
import shlex
import sys
from typing import Any

import redis

from ..errors import ServerTooOld
from ..transport import compat
from ..transport.connection import check_url, client_from_url, redact_url
from .connect import bad_url, namespace_of, url_of
from .errors import EXIT_OK, CliError, explain

__all__ = ["acl_command", "rules", "user_url"]

DENIED = ("-@dangerous", "-keys", "-flushdb", "-flushall", "-config")
"""What the user may not run, on top of ``+@all`` (none of it is used by fleche-redis)."""


def rules(namespace: str, password: str) -> list[str]:
    """The ``ACL SETUSER`` rules of the namespace's user (``reset`` first: no rule survives)."""
    return ["reset", "on", f">{password}", f"~{namespace}:*", f"&{namespace}:*", "+@all", *DENIED]


def user_url(url: str, user: str, password: str) -> str:
    """*url* (any scheme) with *user* and *password* in place of whatever credentials it had."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    hosts = netloc.rpartition("@")[2]
    return f"{scheme}{sep}{user}:{password}@{hosts}{slash}{tail}"


def acl_command(args: argparse.Namespace) -> int:
    namespace = namespace_of(args)
    user = args.user or namespace
    if any(c.isspace() for c in user):
        raise CliError(f"a user name cannot hold spaces: {user!r}")
    url = url_of(args)
    try:
        check_url(url)  # printed with the user in it: it must be one a storage takes
    except ValueError as e:
        raise bad_url(url, e) from None
    password = secrets.token_urlsafe(24)  # URL-safe: no escaping in the URL below
    setuser = ["ACL", "SETUSER", user, *rules(namespace, password)]
    if args.apply:
        _apply(url, user, password, setuser)
        print(
            f"created user {user!r} on {redact_url(url)}, confined to {namespace}:*; "
            "keep it across restarts with ACL SAVE (an aclfile) or CONFIG REWRITE",
            file=sys.stderr,
        )
    else:
        print(shlex.join(setuser))
    print(user_url(url, user, password))
    return EXIT_OK


def _apply(url: str, user: str, password: str, setuser: list[str]) -> None:
    client: Any = None
    try:
        client = client_from_url(url)
        if isinstance(client, redis.RedisCluster):
            client.execute_command(*setuser, target_nodes=redis.RedisCluster.ALL_NODES)
        else:
            client.execute_command(*setuser)
        client.execute_command("AUTH", user, password)  # the user exists and can log in
    except (ValueError, TypeError, IndexError) as e:
        raise bad_url(url, e) from None
    except redis.RedisError as e:
        refused = compat.explained(client, e, "ACL") if client is not None else e
        if isinstance(refused, ServerTooOld):
            raise CliError(str(refused)) from None
        raise CliError(explain(e, redact_url(url))) from None
    finally:
        if client is not None:
            client.close()
