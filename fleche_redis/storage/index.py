"""Reading the sorted-set prefix index: listing, counting, expanding and shrinking digests.

One shard answers a prefix of four or more characters in one request,
however large the store; see ``docs/storage.md`` (Prefix index).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, ClassVar

from fleche.digest import DIGEST_LENGTH, Digest

from ..errors import UnavailableMiss
from ..transport.redispy import Client
from ..transport.request import call, send
from ..transport.scripts import LuaScript
from .keys import SHARD_CHARS, SHARDS, InvalidDigestError, check_digest, check_prefix

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from ..transport.channel import Channel
    from .keys import KeyLayout

__all__ = ["PrefixIndexMixin"]

logger = logging.getLogger("fleche_redis.index")


class PrefixIndexMixin:
    """The index-reading half of :class:`~fleche_redis.backend.RedisBackend`.

    Needs the backend's ``layout`` and ``channel`` (requests under the error
    policy); writes to the index happen in the backend's write scripts,
    together with the data.
    """

    if TYPE_CHECKING:  # provided by RedisBackend and fleche's KeyManagement
        layout: KeyLayout
        channel: Channel

        def _operation_context(self, key: Any) -> AbstractContextManager[Any]: ...
        def _shrink_one(self, key: Any, sorted_all: Any) -> Digest: ...

    LIST_PAGE: ClassVar[int] = 1000
    """Digests fetched per round trip while :meth:`list` streams an index shard."""

    LIST_BATCH: ClassVar[int] = 16
    """Shards whose first page :meth:`list` fetches in one pipelined round trip."""
    EXPAND: ClassVar[LuaScript] = LuaScript(
        """
        -- KEYS[1] index shard
        -- ARGV[1] hex prefix, ARGV[2] data key prefix of the shard ('<ns>:{v.ab}:')
        -- Returns the (at most) two smallest indexed digests starting with
        -- ARGV[1] whose data still exists.  Members whose data expired (ttl) or
        -- was evicted under maxmemory are removed on the way, so a dead entry
        -- never makes a prefix ambiguous or expands to a key that cannot load.
        local low, high = '[' .. ARGV[1], '[' .. ARGV[1] .. '\\255'
        local found = {}
        while #found < 2 do
          local batch = redis.call('ZRANGEBYLEX', KEYS[1], low, high, 'LIMIT', 0, 2 - #found)
          if #batch == 0 then break end
          for _, member in ipairs(batch) do
            if redis.call('EXISTS', ARGV[2] .. member) == 1 then
              found[#found + 1] = member
            else
              redis.call('ZREM', KEYS[1], member)
            end
            low = '(' .. member
          end
        end
        return found
        """
    )

    def list(self) -> Iterator[Digest]:
        """Every stored digest, in sorted order, streamed page by page.

        Holds at most ``LIST_BATCH * LIST_PAGE`` digests at a time.  Entries
        written or evicted while the listing runs may or may not appear.
        """
        layout, page_size = self.layout, self.LIST_PAGE

        def first_pages(client: Client, shards: tuple[str, ...]) -> list[Any]:
            return send(
                client,
                [("ZRANGEBYLEX", layout.index(s), "-", "+", "LIMIT", 0, page_size) for s in shards],
                raise_errors=False,
            )

        def next_page(client: Client, shard: str, after: bytes) -> list[bytes]:
            # A lexicographic cursor stays correct while members come and go.
            return call(
                client, "ZRANGEBYLEX", layout.index(shard), b"(" + after, "+", "LIMIT", 0, page_size
            )

        try:
            for start in range(0, len(SHARDS), self.LIST_BATCH):
                batch = SHARDS[start : start + self.LIST_BATCH]
                for shard, page in zip(
                    batch, self.channel.run("list", first_pages, batch), strict=True
                ):
                    if isinstance(page, Exception):
                        self._skip_shard(layout.index(shard), page)
                        continue
                    while True:
                        for member in page:
                            yield Digest(member.decode())
                        if len(page) < page_size:
                            break
                        page = self.channel.run("list", next_page, shard, page[-1])
        except UnavailableMiss:
            return  # failing open: what could not be listed is not there

    def count(self) -> int:
        """Number of indexed entries, from one pipelined ``ZCARD`` per shard."""

        def cards(client: Client) -> int:
            keys = [self.layout.index(shard) for shard in SHARDS]
            replies = send(client, [("ZCARD", key) for key in keys], raise_errors=False)
            for key, reply in zip(keys, replies, strict=True):
                if isinstance(reply, Exception):
                    self._skip_shard(key, reply)
            return sum(r for r in replies if not isinstance(r, Exception))

        try:
            return self.channel.run("count", cards)
        except UnavailableMiss:
            return 0

    def _skip_shard(self, key: str, error: Exception) -> None:
        """Go on without a shard a foreign key took over; say so once per burst.

        Any other error reply (``NOPERM``, ``OOM``) is raised: only a foreign
        type is the shard's own trouble.
        """
        if not str(error).startswith("WRONGTYPE"):
            raise self.channel.failed("list", error)  # type: ignore[arg-type]
        level, _ = self.channel.breaker.bursts.level(f"shard {type(error).__name__}")
        logger.log(
            level,
            "index shard %s is unreadable (%s); listing and counting go on without it: run repair",
            key,
            error,
        )

    # -- prefixes -----------------------------------------------------------

    def expand(self, key: Digest | str) -> Digest:
        # fleche returns any string of 64+ characters unchanged and measures
        # any other with len(); a storage keyed by hex digests refuses what
        # cannot be a digest or a prefix of one, as a miss.
        if isinstance(key, str) and len(key) >= DIGEST_LENGTH:
            check_digest(key)
        else:
            check_prefix(key)
        return super().expand(key)  # type: ignore[misc]  # fleche's KeyManagement, after us

    def _normalize_key(self, key: Any) -> Digest:
        if not isinstance(key, str):  # None, a number: fleche would fail on len()
            raise InvalidDigestError(key)
        return super()._normalize_key(key)  # type: ignore[misc]  # fleche's KeyManagement

    def _prefix_candidates(self, prefix: str) -> builtins.list[Digest]:
        """The two smallest live digests starting with *prefix*.

        A prefix of a shard's width or more is one script on one shard;
        a shorter one (fleche never asks, but the contract holds for any
        prefix) reads the shards it spans in order, a group per request,
        until it has two.
        """
        try:
            prefix = check_prefix(prefix) if prefix != "" else ""
        except InvalidDigestError:
            return []
        layout, script = self.layout, self.EXPAND
        shards = (
            [prefix[:SHARD_CHARS]]
            if len(prefix) >= SHARD_CHARS
            else [s for s in SHARDS if s.startswith(prefix)]
        )
        found: builtins.list[Digest] = []
        for start in range(0, len(shards), self.LIST_BATCH):
            commands = [
                ("EVALSHA", script.sha, 1, layout.index(shard), prefix, layout.data_prefix(shard))
                for shard in shards[start : start + self.LIST_BATCH]
            ]
            replies = self.channel.run(
                "expand", lambda client, batch=commands: send(client, batch, scripts=(script,))
            )
            found += [Digest(m.decode()) for members in replies for m in members]
            if len(found) >= 2:
                break
        return found[:2]

    def _shrink(self, *keys: Digest | str) -> tuple[Digest, ...]:
        """Shortest unambiguous prefixes from each key's sorted-set neighbours.

        Only a key's immediate neighbours in the index can share a longer
        prefix with it, and they live in its own shard (keys in other shards
        differ within the first two characters, below the 4-character
        minimum).  All lookups go out in one pipeline.
        """
        with ExitStack() as stack:
            for k in keys:
                stack.enter_context(self._operation_context(k))
            digests = [check_digest(k) for k in keys]

            def neighbours(client: Client) -> list[Any]:
                commands: builtins.list[tuple[Any, ...]] = []
                for d in digests:
                    index, member = self.layout.index_of(d), d.encode()
                    commands += [
                        ("ZSCORE", index, member),
                        ("ZREVRANGEBYLEX", index, b"(" + member, "-", "LIMIT", 0, 1),
                        ("ZRANGEBYLEX", index, b"(" + member, "+", "LIMIT", 0, 1),
                    ]
                return send(client, commands)

            replies = self.channel.run("shrink", neighbours)
            out = []
            for i, d in enumerate(digests):
                score, left, right = replies[3 * i : 3 * i + 3]
                if score is None:
                    raise KeyError(d)
                neighbourhood = [m.decode() for m in left] + [d] + [m.decode() for m in right]
                out.append(self._shrink_one(d, neighbourhood))
            return tuple(out)
