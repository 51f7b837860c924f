"""One round trip to many Redis servers, without threads.

:func:`run_script` writes a script call to every server first and reads the
replies after, so the servers work in parallel (a Redlock's N masters);
replies and errors come back per server.  Details in ``docs/transport.md``.
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
