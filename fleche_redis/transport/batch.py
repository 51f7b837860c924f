"""Deferring a group of writes so they reach Redis in one request.

Inside a :func:`write_batch` block, storages' ``put`` only encode and queue
their writes; when the block ends they go out in order, one request per
client (so a record is never visible before its values), or are posted
(write-behind).  Details in ``docs/transport.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import NoScriptError, RedisError

from ..errors import NotReplicated
from . import request, wire
from .gather import Gather
from .redispy import Client
from .replicas import Replicas
from .scripts import LuaScript

if TYPE_CHECKING:
    from ..storage.backend import RedisBackend

__all__ = ["Step", "WriteBatch", "Behind", "Recorder", "Request", "write_batch", "active_batch"]

_active: ContextVar[WriteBatch | None] = ContextVar("fleche_redis.batch", default=None)


def active_batch() -> WriteBatch | None:
    """The batch of the innermost :func:`write_batch` block of this context, if any."""
    return _active.get()


Step = tuple["RedisBackend", Callable[[Any], Any], tuple[LuaScript, ...]]
"""``(storage, request(client), scripts the request may run)``."""


class Behind(Protocol):
    """What a write-behind batch reports to once its replies are read (see :func:`write_batch`)."""

    def failed(self, error: BaseException) -> None:
        """The writes were not (all) stored; *error* is the storage's usual exception for it."""


@dataclass
class WriteBatch:
    """Queued steps, each ``(storage, request(client), scripts the request may run)``."""

    steps: list[Step] = field(default_factory=list)
    encoded: dict[tuple[int, str], bytes | Gather] = field(default_factory=dict)
    """``(id(storage), key) -> encoded entry`` of every entry queued: a commit passes some on to waiters."""
    behind: Behind | None = None
    """Post the request and return without its reply (see :func:`write_batch`)."""

    def add(
        self,
        storage: RedisBackend,
        request: Callable[[Any], Any],
        scripts: tuple[LuaScript, ...] = (),
    ) -> None:
        self.steps.append((storage, request, scripts))

    def take(self, start: int = 0) -> list[Step]:
        """Remove and return the steps queued from *start* on, to send with a later batch.

        A prepared call keeps its argument writes this way until its commit
        (or abandon), which sends them in the same request as the result.
        """
        taken, self.steps[start:] = self.steps[start:], []
        return taken

    def resume(self, steps: list[Step]) -> None:
        """Queue *steps* taken from an earlier batch, ahead of what is queued after them."""
        self.steps.extend(steps)

    def flush(self) -> None:
        steps, self.steps = self.steps, []
        groups = []
        i = 0
        while i < len(steps):
            # Consecutive steps on one client share one request.
            client = steps[i][0].redis()
            j = i + 1
            while j < len(steps) and steps[j][0].redis() is client:
                j += 1
            groups.append(steps[i:j])
            i = j
        # Posting is for a batch of one request only: requests on two
        # connections could run in either order, and a record must never be
        # visible before the values it points to.
        behind = self.behind if len(groups) == 1 else None
        for group in groups:
            _send(group, behind)


def _send(group: list[Step], behind: Behind | None) -> None:
    owner = group[0][0]
    replicas = _strongest(group)
    if len(group) == 1 and behind is None and replicas is None:
        owner.channel.run("put", group[0][1])
        return
    recorder = Recorder(transactional=wire.single_server(owner.redis()))
    for _, step, _ in group:
        step(recorder)
    scripts = {s.sha: s for _, _, ss in group for s in ss}
    sent = Request(owner, recorder.commands, scripts, replicas)
    if behind is None or not owner.channel.run("put", sent.post, behind):
        owner.channel.run("put", sent.send)


def _strongest(group: list[Step]) -> Replicas | None:
    """The most replicas any storage of *group* wants its writes acknowledged by, if any."""
    asked = [s.channel.replicas for s, _, _ in group if s.channel.replicas is not None]
    return max(asked, key=lambda r: (r.count, r.timeout)) if asked else None


@dataclass
class Request:
    """Recorded commands, shaped for the client they go to.

    On one server, the scripts run as one bundled script, and any plain
    commands (an entry's bytes written with ``SET``, chunks) go first, the
    whole wrapped in ``MULTI``/``EXEC``: it all runs, or (refused while
    queued, e.g. ``OOM``) none of it does.  Elsewhere (Cluster) the commands
    run one by one, in order.  This is where every write that stores a
    save or a commit is sent, so where *replicas* (the storages'
    ``wait_replicas``) makes it end with ``WAIT`` (see :mod:`.replicas`).
    """

    owner: RedisBackend
    commands: list[tuple[Any, ...]]
    scripts: dict[str, LuaScript]
    replicas: Replicas | None = None

    def send(self, client: Client) -> list[Any]:
        return request.send(
            client, self.commands, scripts=self._scripts(), bundled=True, replicas=self.replicas
        )

    def post(self, client: Client, behind: Behind) -> bool:
        """Write the request without waiting; ``False`` where it cannot be posted (then send it)."""
        # _settle may send it again after the call returned (NOSCRIPT, a lost
        # reply), when the caller may have changed an array in place: the
        # buffers of an entry (a Gather, a chunk's view) are copied now.
        self.commands = [_owned(command) for command in self.commands]
        return request.post(
            client,
            self.commands,
            lambda outcome: self._settle(outcome, behind),
            scripts=self._scripts(),
            bundled=True,
            replicas=self.replicas,
        )

    def _scripts(self) -> list[LuaScript]:
        return list(self.scripts.values())

    def _settle(self, outcome: Any, behind: Behind) -> None:
        """The posted request's replies arrived (or could not be read)."""
        owner = self.owner
        if isinstance(outcome, BaseException) or any(isinstance(r, NoScriptError) for r in outcome):
            # Unknown whether it ran, or the server lacked a script: send it
            # again, waiting this time (every step is safe to repeat).
            try:
                owner.channel.run("put", self.send)
            except Exception as e:
                behind.failed(e)
            return
        for reply in outcome:
            if isinstance(reply, NotReplicated):
                owner.channel.metrics.errors += 1  # as Channel.run counts it
            if isinstance(reply, Exception):
                behind.failed(
                    owner.channel.failed("put", reply) if isinstance(reply, RedisError) else reply
                )
                return


def _owned(command: tuple[Any, ...]) -> tuple[Any, ...]:
    """*command* with arguments that are views of other objects' memory turned into ``bytes``."""
    for arg in command:
        kind = type(arg)
        if kind is Gather or kind is memoryview:
            return tuple(bytes(a) if isinstance(a, (Gather, memoryview)) else a for a in command)
    return command


class Recorder:
    """Stands in for a client while batch steps run: keeps their commands to send in one go.

    Lighter than a redis-py pipeline, which matters on a path that runs
    on every miss; the steps only ever call these two commands.
    ``transactional`` tells a step that its commands will reach one server
    in one ``MULTI``/``EXEC`` (see :class:`Request`), so it may write an
    entry's bytes with a plain ``SET`` ahead of the script that indexes it.
    """

    def __init__(self, transactional: bool = False) -> None:
        self.commands: list[tuple[Any, ...]] = []
        self.transactional = transactional

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        self.commands.append(("EVALSHA", sha, numkeys, *keys_and_args))

    def set(self, name: str, value: Any, px: int | None = None) -> None:
        self.commands.append(("SET", name, value, "PX", px) if px else ("SET", name, value))


class write_batch:  # noqa: N801 - used as a function: ``with write_batch() as batch``
    """Queue the writes of fleche-redis storages in this block; send them when it ends.

    Nested blocks join the outer batch.  If the block raises, nothing queued
    is sent.  A class rather than a generator: it runs twice on every miss.

    With *behind*, a batch that makes one request on a single server is
    *posted* (:func:`.wire.post`): the block ends as soon as the
    request is written, and its reply is read before this thread's next
    request to Redis.  A reply that is an error reaches ``behind.failed``
    then, as the storage's usual exception; a request whose reply could not
    be read, or that met a server without its scripts, is sent again first.
    Any other batch is sent and waited for as usual.
    """

    __slots__ = ("_batch", "_token", "_behind")

    def __init__(self, behind: Behind | None = None) -> None:
        self._behind = behind

    def __enter__(self) -> WriteBatch:
        outer = _active.get()
        if outer is not None:
            self._batch, self._token = outer, None
            return outer
        self._batch = WriteBatch(behind=self._behind)
        self._token = _active.set(self._batch)
        return self._batch

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._token is None:
            return
        _active.reset(self._token)
        if exc_type is None:
            self._batch.flush()
