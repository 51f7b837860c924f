"""One round trip to many Redis servers, without threads.

A Redlock asks N independent masters the same question.  Asking them one
after another costs N round trips; a thread pool costs threads.  Here the
request is written to every server first and the replies are read after, so
the servers work in parallel and the caller waits about one round trip.  The
same split lets one connection carry a script and a blocking ``BLPOP`` in a
single write.

Replies come back as values, and an error reply as its exception object, so
a caller counts answers per server instead of handling exceptions.  The
write and the read are :func:`fleche_redis.wire.send` and
:func:`~fleche_redis.wire.receive`, on each thread's kept connection.
:class:`~fleche_redis.scripts.LuaScript` called with a client is the
one-server, one-command form of :func:`run_script`; this one splits its
``EVALSHA`` (and ``EVAL`` fallback) into a write and a read so servers overlap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from .connection import ClientSlot
from .scripts import LuaScript
from .wire import Pending, receive, send

__all__ = ["send", "receive", "run_script"]


def run_script(
    slots: Mapping[int, ClientSlot], script: LuaScript, keys: Sequence[str], args: Sequence[Any]
) -> dict[int, Any]:
    """Run *script* on every server of *slots* at once: reply or exception per key of *slots*.

    A server that lost the script (restart, ``SCRIPT FLUSH``) gets it by
    ``EVAL`` in a second round trip of its own.
    """
    command = ("EVALSHA", script.sha, len(keys), *keys, *args)
    out: dict[int, Any] = {}
    sent: dict[int, Pending] = {}
    for i, slot in slots.items():
        try:
            sent[i] = send(slot.get(), [command])
        except redis.RedisError as e:
            out[i] = e
    for i, pending in sent.items():
        try:
            reply = receive(pending)[0]
            if isinstance(reply, NoScriptError):
                reply = receive(send(pending[0], [("EVAL", script.source, *command[2:])]))[0]
        except redis.RedisError as e:
            reply = e
        out[i] = reply
    return out
