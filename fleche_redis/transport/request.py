"""One way to send a group of commands to a storage's Redis, whatever the client.

:func:`send` takes commands as tuples (``("ZCARD", key)``) and returns
their replies in order.  On one server they go out in one write on the
thread's kept connection (:mod:`.wire`); on Redis Cluster they go through a
redis-py cluster pipeline (each routed to its node), or one by one when
their order matters or they run scripts (cluster pipelines refuse them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from . import wire
from .scripts import LuaScript

__all__ = ["send", "call", "Command"]

Command = tuple[Any, ...]
"""A command and its arguments, as Redis takes them: ``("HGET", key, "v")``."""


def send(
    client: Any,
    commands: Sequence[Command],
    *,
    scripts: Sequence[LuaScript] = (),
    atomic: bool = False,
    ordered: bool = False,
) -> list[Any]:
    """Send *commands* as one request; their replies in order, the first error reply raised.

    *atomic* wraps them in ``MULTI``/``EXEC`` on a single server (a command
    refused while queued, such as ``OOM``, stores none of them).  A reply
    ``NOSCRIPT`` (a server that lost our scripts: restart, ``SCRIPT FLUSH``,
    failover) sends a lone script call again as ``EVAL``, which also caches
    it there, and otherwise loads *scripts* and sends everything again, so
    the commands must be safe to repeat.  On Redis Cluster, *ordered* (or any
    ``EVALSHA``) sends them one by one, in order; otherwise one pipeline,
    nodes in parallel.
    """
    if not commands:
        return []
    if not wire.single_server(client):
        return _cluster(client, commands, scripts, ordered)
    sent = [("MULTI",), *commands, ("EXEC",)] if atomic else list(commands)
    replies = _outcome(wire.request(client, sent), atomic)
    if scripts and any(isinstance(r, NoScriptError) for r in replies):
        if len(sent) == 1:
            replies = wire.request(client, [_as_eval(sent[0], scripts)])
        else:
            for script in scripts:
                client.script_load(script.source)
            replies = _outcome(wire.request(client, sent), atomic)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def call(client: Any, *command: Any, scripts: Sequence[LuaScript] = ()) -> Any:
    """The reply to one command (an error reply raised): :func:`send` of a group of one."""
    return send(client, [command], scripts=scripts)[0]


def _as_eval(command: Command, scripts: Sequence[LuaScript]) -> Command:
    """``EVALSHA sha ...`` as ``EVAL source ...`` (one round trip where loading first costs two)."""
    source = next(script.source for script in scripts if script.sha == command[1])
    return ("EVAL", source, *command[2:])


def _outcome(replies: list[Any], atomic: bool) -> list[Any]:
    """The commands' own replies: for a transaction, what ``EXEC`` returned."""
    if not atomic:
        return replies
    executed = replies[-1]
    if isinstance(executed, Exception):
        # EXECABORT: a command was refused while queued, and that refusal says why.
        return [next((r for r in replies[1:-1] if isinstance(r, Exception)), executed)]
    return list(executed)


def _cluster(
    client: Any, commands: Sequence[Command], scripts: Sequence[LuaScript], ordered: bool
) -> list[Any]:
    if ordered or len(commands) == 1 or any(command[0] == "EVALSHA" for command in commands):
        # One by one, each routed to its node (cluster pipelines refuse scripts).
        replies = []
        for command in commands:
            try:
                replies.append(client.execute_command(*command))
            except NoScriptError:
                if not scripts:
                    raise
                replies.append(client.execute_command(*_as_eval(command, scripts)))
        return replies
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute()
