"""One way to send a group of commands to a storage's Redis, whatever the client.

:func:`send` takes commands as tuples (``("ZCARD", key)``) and returns their
replies in order; :func:`post` writes them now and reads the replies later
(write-behind).  How a request is shaped for single servers and Cluster,
bundled and reloaded is told in ``docs/transport.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from redis.exceptions import (
    ConnectionError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeout

from . import compat, redispy, wire
from . import scripts as _scripts
from .redispy import Client
from .replicas import Replicas

__all__ = ["send", "call", "post", "Command"]

Command = tuple[Any, ...]
"""A command and its arguments, as Redis takes them: ``("HGET", key, "v")``."""

Reload = Literal["load", "eval"]


def send(
    client: Client,
    commands: Sequence[Command],
    *,
    scripts: Sequence[_scripts.LuaScript] = (),
    atomic: bool = False,
    ordered: bool = False,
    bundled: bool = False,
    reload: Reload = "load",
    raise_errors: bool = True,
    replicas: Replicas | None = None,
) -> list[Any]:
    """Send *commands* as one request; their replies in order, the first error reply raised.

    With ``raise_errors=False`` an error reply stays in its place, as an exception
    object (a shard holding a foreign key must not hide the others).

    *atomic* wraps them in ``MULTI``/``EXEC`` on a single server (a command
    refused while queued, such as ``OOM``, stores none of them).  *bundled*
    runs their ``EVALSHA`` calls as one script after the plain commands, the
    whole one ``MULTI``/``EXEC`` when there are plain commands (the replies are
    then those of that shaped request; on Cluster, one command at a time).  A reply ``NOSCRIPT`` loads *scripts*
    (``reload="load"``) or sends ``EVAL`` in place of ``EVALSHA``
    (``reload="eval"``), and sends everything again, so the commands must be
    safe to repeat.  On Redis Cluster, *ordered* (or any ``EVALSHA``) sends them
    one by one, in order; otherwise one pipeline, nodes in parallel.  Replies
    are raw on a single server; on Cluster redis-py's reply callbacks apply.

    With *replicas*, the request ends with ``WAIT`` (on Cluster: each primary's
    share of it, in order, on one of its connections) and raises
    :class:`~fleche_redis.errors.NotReplicated` when too few replicas
    acknowledged in time: a durable write costs no request of its own.
    """
    if not commands:
        return []
    if not wire.single_server(client):
        if replicas is not None:
            return _cluster_acknowledged(client, commands, scripts, replicas)
        if not bundled:
            return _cluster(client, commands, scripts, ordered, raise_errors)
        # A batch's writes: one by one, in order, each routed to its node.
        bundled = atomic = False
    sent, load, atomic = _shape(commands, scripts, atomic, bundled, replicas)
    replies, unacknowledged = _outcome(wire.request(client, sent), atomic, replicas, client)
    if load and any(isinstance(r, NoScriptError) for r in replies):
        # A server without our scripts (fresh, restarted, flushed).
        if reload == "eval":
            sent = _evaluated(sent, load)
        else:
            for script in load:
                client.script_load(script.source)
        replies, unacknowledged = _outcome(wire.request(client, sent), atomic, replicas, client)
    if raise_errors:
        aligned = not atomic and len(replies) == len(commands)
        for i, reply in enumerate(replies):
            if isinstance(reply, Exception):
                raise compat.explained(client, reply, commands[i][0] if aligned else None)
    if unacknowledged is not None:
        raise unacknowledged
    return replies


def call(client: Client, *command: Any, scripts: Sequence[_scripts.LuaScript] = ()) -> Any:
    """The reply to one command (an error reply raised): :func:`send` of a group of one."""
    return send(client, [command], scripts=scripts, reload="eval")[0]


def post(
    client: Client,
    commands: Sequence[Command],
    settle: Callable[[Any], None],
    *,
    scripts: Sequence[_scripts.LuaScript] = (),
    atomic: bool = False,
    bundled: bool = False,
    replicas: Replicas | None = None,
) -> bool:
    """Write *commands* shaped as :func:`send` would, without waiting (:func:`.wire.post`).

    *settle* gets the replies (error replies, ``NOSCRIPT`` included, as
    exception objects; never reloaded here) or the exception that made them
    unreadable; with *replicas*, a ``NotReplicated`` (or ``WAIT``'s error
    reply) follows them when too few replicas acknowledged.  ``False``:
    nothing was posted (Cluster, no kept connection); send the request instead.
    """
    if not wire.single_server(client):
        return False
    sent, _, atomic = _shape(commands, scripts, atomic, bundled, replicas)

    def settled(outcome: Any) -> None:
        if isinstance(outcome, BaseException):
            settle(outcome)
            return
        replies, unacknowledged = _outcome(outcome, atomic, replicas, client)
        settle(replies if unacknowledged is None else [*replies, unacknowledged])

    return wire.post(client, sent, settled)


def _shape(
    commands: Sequence[Command],
    scripts: Sequence[_scripts.LuaScript],
    atomic: bool,
    bundled: bool,
    replicas: Replicas | None = None,
) -> tuple[list[Command], list[_scripts.LuaScript], bool]:
    """``(commands to send, scripts they may need loaded, whether they are one MULTI/EXEC)``.

    With *replicas*, ``WAIT`` ends the request, after ``EXEC`` (within a
    transaction it would not block).
    """
    sent, load, atomic = _shaped(commands, scripts, atomic, bundled)
    if replicas is not None:
        sent.append(replicas.command())
    return sent, load, atomic


def _shaped(
    commands: Sequence[Command],
    scripts: Sequence[_scripts.LuaScript],
    atomic: bool,
    bundled: bool,
) -> tuple[list[Command], list[_scripts.LuaScript], bool]:
    if not bundled:
        sent = [("MULTI",), *commands, ("EXEC",)] if atomic else list(commands)
        return sent, list(scripts), atomic
    by_sha = {script.sha: script for script in scripts}
    evals = [cmd for cmd in commands if cmd[0] == "EVALSHA"]
    plain = [cmd for cmd in commands if cmd[0] != "EVALSHA"]
    load = list(by_sha.values())
    if len(evals) > 1:
        # One script call instead of one per step (see scripts.bundle).
        together, keys, args = _scripts.bundle(
            [(by_sha[sha], rest[:n], rest[n:]) for _, sha, n, *rest in evals]
        )
        evals, load = [("EVALSHA", together.sha, len(keys), *keys, *args)], [together]
    if not plain and not atomic:
        return evals, load, False
    return [("MULTI",), *plain, *evals, ("EXEC",)], load, True


def _evaluated(commands: list[Command], scripts: Sequence[_scripts.LuaScript]) -> list[Command]:
    """*commands* with ``EVAL source`` in place of ``EVALSHA`` for each of *scripts*."""
    by_sha = {script.sha: script for script in scripts}
    return [
        ("EVAL", by_sha[cmd[1]].source, *cmd[2:])
        if cmd[0] == "EVALSHA" and cmd[1] in by_sha
        else cmd
        for cmd in commands
    ]


def _outcome(
    replies: list[Any], atomic: bool, replicas: Replicas | None, client: Client
) -> tuple[list[Any], Exception | None]:
    """The commands' own replies (for a transaction, what ``EXEC`` returned), and what
    ``WAIT`` refused, if the request ended with one."""
    unacknowledged = None
    if replicas is not None:
        *replies, acknowledged = replies
        unacknowledged = replicas.refusal(acknowledged, _where(client))
    if not atomic:
        return replies, unacknowledged
    executed = replies[-1]
    if isinstance(executed, Exception):
        # EXECABORT: a command was refused while queued, and that refusal says why.
        return [next((r for r in replies[1:-1] if isinstance(r, Exception)), executed)], None
    return list(executed), unacknowledged


def _where(client: Client) -> str:
    """*client*'s server as ``host:port`` (or its socket's path), for an error message."""
    kwargs = redispy.connection_kwargs(redispy.pool_of(client))
    return str(kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}")


_REROUTES = 3
"""Times a primary's share of a durable request is sent again after its slot map was stale."""


def _cluster_acknowledged(
    client: Client,
    commands: Sequence[Command],
    scripts: Sequence[_scripts.LuaScript],
    replicas: Replicas,
) -> list[Any]:
    """*commands* on Redis Cluster, each run of consecutive ones for one primary sent to it
    as one request that ends with ``WAIT``, on one of its connections; runs in order.

    ``WAIT`` counts what its own connection wrote, so a run cannot go through
    the cluster client, which takes a connection per command; an error reply
    is raised (a write's outcome must be known before the next run).
    """
    runs: list[list[Command]] = []
    last = None
    for command in commands:
        node = redispy.primary_client(client, command)
        if node is last:
            runs[-1].append(command)
        else:
            runs.append([command])
        last = node
    replies: list[Any] = []
    for run in runs:
        replies += _on_primary(client, run, scripts, replicas)
    return replies


def _on_primary(
    client: Client,
    run: list[Command],
    scripts: Sequence[_scripts.LuaScript],
    replicas: Replicas,
) -> list[Any]:
    """*run* and its ``WAIT`` on the primary that serves it (see :func:`_cluster_acknowledged`)."""
    for _ in range(_REROUTES):
        node = redispy.primary_client(client, run[0])
        try:
            return send(node, run, scripts=scripts, reload="eval", replicas=replicas)
        except (ConnectionError, RedisTimeout, MovedError):
            # The slot map is stale (a primary gone, a slot moved): the cluster
            # client learns the new one by routing a command itself (raising
            # while no primary serves the slot: the channel rides that out);
            # every write is safe to repeat.  That routed write goes without
            # WAIT, so the run is sent again with it: each script of a commit
            # writes (and so replicates) again when repeated, and a replica
            # that acknowledges the repeat has everything before it on that
            # primary, the routed write included.  Other errors (ASK and
            # TRYAGAIN while a slot migrates) are the channel's to ride out.
            _cluster(client, run[:1], scripts, ordered=True)
    raise TryAgainError(f"the slot of a {run[0][0]} moved {_REROUTES} times while it was written")


def _cluster(
    client: Client,
    commands: Sequence[Command],
    scripts: Sequence[_scripts.LuaScript],
    ordered: bool,
    raise_errors: bool = True,
) -> list[Any]:
    if ordered or len(commands) == 1 or any(command[0] == "EVALSHA" for command in commands):
        by_sha = {script.sha: script for script in scripts}
        replies = []
        for command in commands:
            try:
                try:
                    replies.append(client.execute_command(*command))
                except NoScriptError:
                    script = by_sha.get(command[1])
                    if script is None:
                        raise
                    replies.append(client.execute_command("EVAL", script.source, *command[2:]))
            except ResponseError as e:
                if raise_errors:
                    compat.check(client, e, command[0])
                    raise
                replies.append(e)
        return replies
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    try:
        return pipe.execute(raise_on_error=raise_errors)
    except ResponseError as e:
        compat.check(client, e)
        raise
