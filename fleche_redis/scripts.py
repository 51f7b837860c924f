"""Server-side Lua scripts, run by SHA with one fallback round trip.

A :class:`LuaScript` is a module or class constant: it knows its SHA1 and is
called with the client to run on, so one object serves every server and every
process.  The common path is one ``EVALSHA``; a server that does not know the
script yet (fresh start, ``SCRIPT FLUSH``, failover) answers ``NOSCRIPT`` and
gets one ``EVAL``, which also caches the script there.  redis-py's own
``Script`` needs three round trips for that case (``EVALSHA``, ``SCRIPT LOAD``,
``EVALSHA``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError

from . import wire

__all__ = ["LuaScript", "pipelined"]


@dataclass(frozen=True)
class LuaScript:
    source: str
    sha: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def __call__(self, client: Any, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        if not hasattr(client, "execute_command"):  # a recorder standing in for a client
            return client.evalsha(self.sha, len(keys), *keys, *args)
        try:
            return wire.call(client, "EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return wire.call(client, "EVAL", self.source, len(keys), *keys, *args)


def pipelined(
    client: Any, build: Callable[[Any], object], scripts: Sequence[LuaScript] = ()
) -> list[Any]:
    """Queue commands with *build* on a fresh pipeline and run it in one round trip.

    A pipeline cannot retry a single ``EVALSHA`` that met ``NOSCRIPT``, so if a
    server lacked one of *scripts* they are loaded (``SCRIPT LOAD``, on every
    primary of a cluster) and the whole pipeline runs once more; its commands
    must therefore be safe to repeat.
    """
    for attempt in (0, 1):
        pipe = client.pipeline(transaction=False)
        build(pipe)
        try:
            return pipe.execute()
        except NoScriptError:
            if attempt or not scripts:
                raise
            for script in scripts:
                client.script_load(script.source)
    raise AssertionError("unreachable")
