"""Server-side Lua scripts, run by SHA with one fallback round trip, and bundles of them.

A :class:`LuaScript` sends ``EVALSHA`` and, on ``NOSCRIPT``, one ``EVAL``
(redis-py's ``Script`` takes three trips); :func:`bundle` runs several calls
as one script.  Details in ``docs/transport.md``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from redis.exceptions import NoScriptError

from . import wire
from .redispy import Client

__all__ = ["LuaScript", "bundle"]


class Recording(Protocol):
    """A stand-in for a client that keeps script calls to send later (:class:`.batch.Recorder`)."""

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None: ...


@dataclass(frozen=True)
class LuaScript:
    source: str
    sha: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def __call__(
        self, client: Client | Recording, keys: Sequence[Any] = (), args: Sequence[Any] = ()
    ) -> Any:
        if not hasattr(client, "execute_command"):  # a recorder standing in for a client
            return client.evalsha(self.sha, len(keys), *keys, *args)
        # One command: EVALSHA, and EVAL where the server lacks the script (which
        # also caches it there): request.send(..., reload="eval") for a group of
        # one, written out here so that request may build on this module.
        try:
            return wire.call(cast(Client, client), "EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return wire.call(cast(Client, client), "EVAL", self.source, len(keys), *keys, *args)


@functools.lru_cache(maxsize=64)
def _bundled(scripts: tuple[LuaScript, ...]) -> LuaScript:
    bodies = ",\n".join(f"function(KEYS, ARGV)\n{script.source}\nend" for script in scripts)
    return LuaScript(
        f"""
        -- Runs calls of the scripts below in order, as one script.
        -- ARGV[1] number of calls n; ARGV[3c-1 .. 3c+1] call c's script (index
        -- into bodies), key count and argument count; then every call's
        -- arguments in order.  KEYS: every call's keys in order.  Returns the
        -- replies, in order (false where a script returned nothing).
        local bodies = {{
        {bodies}
        }}
        local n, out = tonumber(ARGV[1]), {{}}
        local k, a = 0, 1 + 3 * n
        for c = 1, n do
          local which = tonumber(ARGV[3 * c - 1])
          local nkeys, nargs = tonumber(ARGV[3 * c]), tonumber(ARGV[3 * c + 1])
          local keys, args = {{}}, {{}}
          for i = 1, nkeys do keys[i] = KEYS[k + i] end
          for i = 1, nargs do args[i] = ARGV[a + i] end
          k, a = k + nkeys, a + nargs
          local reply = bodies[which](keys, args)
          if reply == nil then reply = false end
          -- A call that refused (an error reply) stops the ones after it, as one that failed does.
          if type(reply) == 'table' and reply['err'] then return reply end
          out[c] = reply
        end
        return out
        """
    )


def bundle(
    calls: Sequence[tuple[LuaScript, Sequence[Any], Sequence[Any]]],
) -> tuple[LuaScript, list[Any], list[Any]]:
    """One script call that runs *calls* (``(script, keys, args)``) in order: ``(script, keys, args)``.

    Every script call costs Redis a fixed price (a Lua call set up, its
    arguments copied, a reply built) that on a busy machine dwarfs what a
    small script does; a batch of them pays it once this way.  The bundle
    runs atomically, and an error in one call stops the ones after it.  Keys
    of different hash slots are fine on a single server; never send a
    bundle to Redis Cluster.
    """
    scripts = tuple(
        sorted({script.sha: script for script, _, _ in calls}.values(), key=lambda s: s.sha)
    )
    index = {script.sha: i + 1 for i, script in enumerate(scripts)}
    header: list[Any] = [len(calls)]
    keys: list[Any] = []
    args: list[Any] = []
    for script, call_keys, call_args in calls:
        header += [index[script.sha], len(call_keys), len(call_args)]
        keys.extend(call_keys)
        args.extend(call_args)
    return _bundled(scripts), keys, header + args
