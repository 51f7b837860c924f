"""Call records with a query index kept beside them, and the queries it serves.

A record, its prefix-index member and its query terms share a hash slot, so
one script writes or removes them together; queries intersect terms on the
server and check candidates with fleche's own ``matches``.  See
``docs/storage.md`` (Call records and queries).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from fleche.call import Call, DigestedCall, QueryCall
from fleche.digest import Digest
from redis.exceptions import ResponseError

from .. import runtime
from ..errors import LockLost, UnavailableMiss
from ..transport import request
from ..transport.redispy import Client
from ..transport.request import send
from ..transport.scripts import LuaScript
from .codec import Encoded, UndecodableEntry
from .keys import SHARDS, InvalidDigestError, check_digest
from .lua import GUARD
from .query import TERM_BYTES, record_terms, template_terms

if TYPE_CHECKING:
    from .codec import Codec
    from .index import PrefixIndexMixin as _Host
else:
    _Host = object

__all__ = ["IndexedCallsMixin", "write_fences", "stale_write"]


class _WriteFences(threading.local):
    """Per thread: digest -> fencing token of the per-key lock this thread holds on it."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}


def write_fences() -> _WriteFences:
    """This thread's fences: what its record writes carry (``.held``, digest -> token).

    Set by the lock's holder (``fleche_redis.locks.holds``), read by the
    record write: a record written under the lock carries the token, and the
    server refuses it if the record was written under a newer one (see
    ``docs/locks.md``, Fencing).  Per thread rather than an argument, so a
    record written by a storage that is not itself locked (the ``calls`` of
    a locked cache) still carries the fence of the lock around it; per
    process, so a forked child never writes with its parent's locks.
    """
    return runtime.per_process("write-fences", _WriteFences)


def stale_write(error: BaseException, digest: str) -> LockLost | None:
    """*error* as :class:`LockLost` if it is the server's refusal of a stale fence, else ``None``.

    Named by the record's digest: the write that was refused may not know
    which lock (a locked cache's) it was made under.
    """
    if isinstance(error, ResponseError) and str(error).startswith("FENCED"):
        return LockLost(f"record {digest} not written: {error}", name=digest)
    return None


class IndexedCallsMixin(_Host):
    """Record layout and queries for :class:`~fleche_redis.backend.CallRedis`.

    Overrides the storage-layout hooks of
    :class:`~fleche_redis.backend.RedisBackend`; it has no state of its own.
    """

    if TYPE_CHECKING:  # provided by RedisBackend (layout, channel and list by _Host)
        codec: Codec

        def _ttl_ms(self) -> int: ...

    FETCH_BATCH: ClassVar[int] = 500
    """Candidate records fetched per pipelined round trip while a query runs."""

    PUT_RECORD: ClassVar[LuaScript] = LuaScript(
        """
        -- KEYS[1] record hash, KEYS[2] index shard, KEYS[3] the shard's term set
        -- ARGV[1] encoded record, ARGV[2] digest (hex), ARGV[3] ttl in ms (0: none),
        -- ARGV[4] digest (32 raw bytes), ARGV[5] term ids (12 bytes each),
        -- ARGV[6] the result's digest (hex; '' for a record without one),
        -- ARGV[7] the writer's fencing token ('': written under no lock)
        -- Replaces the record and its index entries together; returns 1, or a
        -- FENCED error (nothing written) if the record remembers (field 'f') a
        -- fencing token above ARGV[7]: a newer lock holder wrote it.  Term
        -- members go in and out a thousand per command (one command for any
        -- real record): a command per term cost more than all the rest.  The
        -- result's digest, beside the pickled record (field 'r'), is what lets
        -- the cache's lookup return record and result in one request.
        """
        + GUARD
        + """
        local function by_thousands(command, ids)
          local args, n = {}, 0
          for i = 1, #ids, 12 do
            if command == 'ZADD' then args[#args + 1] = 0 end
            args[#args + 1] = string.sub(ids, i, i + 11) .. ARGV[4]
            n = n + 1
            if n == 1000 then
              redis.call(command, KEYS[3], unpack(args))
              args, n = {}, 0
            end
          end
          if n > 0 then redis.call(command, KEYS[3], unpack(args)) end
        end
        local bad = wrong(KEYS[1], 'hash') or wrong(KEYS[2], 'zset') or wrong(KEYS[3], 'zset')
        if bad then return refuse(bad) end
        local fence = ARGV[7]
        if fence ~= '' then
          local seen = redis.call('HGET', KEYS[1], 'f')
          if seen and tonumber(seen) > tonumber(fence) then
            return redis.error_reply('FENCED the record was written under fencing token ' .. seen
              .. ', above this write of token ' .. fence .. ' (its lock expired meanwhile)')
          end
        end
        local old = redis.call('HGET', KEYS[1], 't')
        if old and old ~= ARGV[5] then by_thousands('ZREM', old) end
        local fields = {'v', ARGV[1], 't', ARGV[5]}
        if ARGV[6] ~= '' then
          fields[5], fields[6] = 'r', ARGV[6]
        elseif old then
          redis.call('HDEL', KEYS[1], 'r')
        end
        if fence ~= '' then
          fields[#fields + 1] = 'f'
          fields[#fields + 1] = fence
        end
        -- HSET counts the fields it added: all of them means a new hash, with no ttl to drop.
        local added = redis.call('HSET', KEYS[1], unpack(fields))
        if tonumber(ARGV[3]) > 0 then
          redis.call('PEXPIRE', KEYS[1], ARGV[3])
        elseif added < #fields / 2 then
          redis.call('PERSIST', KEYS[1])
        end
        redis.call('ZADD', KEYS[2], 0, ARGV[2])
        by_thousands('ZADD', ARGV[5])
        return 1
        """
    )

    EVICT_RECORD: ClassVar[LuaScript] = LuaScript(
        """
        -- KEYS[1] record hash, KEYS[2] index shard, KEYS[3] the shard's term set
        -- ARGV[1] digest (hex), ARGV[2] digest (32 raw bytes)
        -- Removes the record and every index entry of it; returns 1 if it existed.
        """
        + GUARD
        + """
        local bad = wrong(KEYS[1], 'hash') or wrong(KEYS[2], 'zset') or wrong(KEYS[3], 'zset')
        if bad then return refuse(bad) end
        local old = redis.call('HGET', KEYS[1], 't')
        if old then
          local members = {}
          for i = 1, #old, 12 do
            members[#members + 1] = string.sub(old, i, i + 11) .. ARGV[2]
            if #members == 1000 then
              redis.call('ZREM', KEYS[3], unpack(members))
              members = {}
            end
          end
          if #members > 0 then redis.call('ZREM', KEYS[3], unpack(members)) end
        end
        redis.call('ZREM', KEYS[2], ARGV[1])
        return redis.call('DEL', KEYS[1])
        """
    )

    FORGET_DEAD: ClassVar[LuaScript] = LuaScript(
        """
        -- KEYS[1] record hash, KEYS[2] the shard's term set, KEYS[3] index shard
        -- ARGV[1] digest (32 raw bytes), ARGV[2] digest (hex), ARGV[3..n] term ids
        -- A query found index entries of a record that no longer exists (its
        -- ttl ran out or Redis evicted it): drop those entries, but only if the
        -- record is still absent now.  Returns 1 if anything was dropped.
        if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        for i = 3, #ARGV do
          redis.call('ZREM', KEYS[2], ARGV[i] .. ARGV[1])
        end
        redis.call('ZREM', KEYS[3], ARGV[2])
        return 1
        """
    )

    # -- layout hooks ---------------------------------------------------------

    def _write(self, client: Client, key: Digest, data: Encoded, value: Any) -> None:
        layout = self.layout
        fence = write_fences().held.get(key)
        try:
            self.PUT_RECORD(
                client,
                (layout.data(key), layout.index_of(key), layout.terms_of(key)),
                (
                    bytes(data),
                    key,
                    self._ttl_ms(),
                    bytes.fromhex(key),
                    _terms_of(value),
                    _result_of(value),
                    "" if fence is None else fence,
                ),
            )
        except ResponseError as e:
            # Before the transport sees it: a stale holder's write is the
            # lock's refusal, not a failure of Redis (no breaker, no retry).
            stale = stale_write(e, key)
            if stale is None:
                raise
            raise stale from e

    def _read(self, client: Client, key: Digest) -> bytes | None:
        return request.call(client, "HGET", self.layout.data(key), "v")

    def _delete(self, client: Client, key: Digest) -> None:
        layout = self.layout
        self.EVICT_RECORD(
            client,
            (layout.data(key), layout.index_of(key), layout.terms_of(key)),
            (key, bytes.fromhex(key)),
        )

    def _scripts(self) -> tuple[LuaScript, ...]:
        return (self.PUT_RECORD, self.EVICT_RECORD)

    # -- queries ------------------------------------------------------------

    def query(self, template: QueryCall) -> Iterator[DigestedCall]:
        """Records matching *template*, with fleche's semantics (``None`` is a wildcard).

        Reads only the records that carry every indexed term of the template
        (name, module, version, code digest, argument and result digests,
        metadata names and keys); metadata values are then checked on the
        client like everything else, by ``template.matches``.
        """
        terms = template_terms(template)
        try:
            candidates = (
                self.channel.run("query", self._candidates, terms) if terms else self.list()
            )
            for call in self._fetch(candidates, terms):
                # Unbound, so a plain Call template works too (as with fleche's Sql).
                if QueryCall.matches(template, call):
                    yield call
        except UnavailableMiss:
            return  # failing open (on_error="miss"): nothing could be read

    def _candidates(self, client: Client, terms: list[bytes]) -> list[Digest]:
        """Digests of the records that carry every term, shard by shard, in order.

        Plain commands in at most three pipelined requests (Redis Cluster
        pipelines refuse scripts): count each term's members, list the rarest
        term's records in every shard, then probe the other terms for just
        those records.
        """
        layout = self.layout
        # Members are term id + 32 digest bytes, so "term id + 33 x 0xff" is
        # above every member of the term, whatever its digest.
        ranges = [(b"[" + t, b"(" + t + b"\xff" * 33) for t in terms]
        rarest = 0
        if len(terms) > 1:
            counts = self._readable(
                send(
                    client,
                    [("ZLEXCOUNT", layout.terms(s), lo, hi) for s in SHARDS for lo, hi in ranges],
                    raise_errors=False,
                ),
                0,
            )
            totals = [sum(counts[i :: len(terms)]) for i in range(len(terms))]
            rarest = min(range(len(terms)), key=totals.__getitem__)
        lo, hi = ranges[rarest]
        listed = self._readable(
            send(
                client,
                [("ZRANGEBYLEX", layout.terms(s), lo, hi) for s in SHARDS],
                raise_errors=False,
            ),
            [],
        )
        records = [[m[TERM_BYTES:] for m in members] for members in listed]
        others = [t for i, t in enumerate(terms) if i != rarest]
        if others:
            records = self._probe(client, records, others)
        return [Digest(raw.hex()) for shard_records in records for raw in sorted(shard_records)]

    def _readable(self, replies: list[Any], instead: Any) -> list[Any]:
        """*replies* with *instead* for the error replies of keys a foreign type took over."""
        for reply in replies:
            if isinstance(reply, Exception):
                self._skip_shard("of the query index", reply)
        return [instead if isinstance(r, Exception) else r for r in replies]

    def _probe(
        self, client: Client, records: list[list[bytes]], terms: list[bytes]
    ) -> list[list[bytes]]:
        """Keep the records (per shard) that also carry every one of *terms*: one ZMSCORE per shard."""
        layout, width = self.layout, len(terms)
        busy = [i for i, recs in enumerate(records) if recs]
        if not busy:
            return records
        scores = send(
            client,
            [
                ("ZMSCORE", layout.terms(SHARDS[i]), *[t + r for r in records[i] for t in terms])
                for i in busy
            ],
        )
        kept: list[list[bytes]] = [[] for _ in records]
        for i, shard_scores in zip(busy, scores, strict=True):
            for j, record in enumerate(records[i]):
                if all(score is not None for score in shard_scores[j * width : (j + 1) * width]):
                    kept[i].append(record)
        return kept

    def _fetch(self, keys: Iterable[Digest], terms: list[bytes]) -> Iterator[DigestedCall]:
        """Load records in pipelined batches; forget index entries of records that are gone."""
        batch: list[Digest] = []
        for key in keys:
            batch.append(key)
            if len(batch) == self.FETCH_BATCH:
                yield from self._fetch_batch(batch, terms)
                batch = []
        if batch:
            yield from self._fetch_batch(batch, terms)

    def _fetch_batch(self, keys: list[Digest], terms: list[bytes]) -> Iterator[DigestedCall]:
        layout = self.layout

        def load_and_forget_dead(client: Client) -> list[bytes | None]:
            found = self._readable(
                send(client, [("HGET", layout.data(k), "v") for k in keys], raise_errors=False),
                None,
            )
            # Records that expired or were evicted: rare, and cluster
            # pipelines refuse scripts, so one request each.
            for key, data in zip(keys, found, strict=True):
                if data is None and terms:
                    self.FORGET_DEAD(
                        client,
                        (layout.data(key), layout.terms_of(key), layout.index_of(key)),
                        (bytes.fromhex(key), key, *terms),
                    )
            return found

        found = self.channel.run("query", load_and_forget_dead)
        for key, data in zip(keys, found, strict=True):
            if data is None:
                continue
            try:
                yield self.codec.decode(data, key=key)
            except UndecodableEntry:
                continue  # logged by the codec; a record we cannot read matches nothing


def _result_of(value: Any) -> str:
    # A DigestedCall's result is a digest; a Call's is the live value, never read on the server.
    try:
        return check_digest(value.result) if isinstance(value, DigestedCall) else ""
    except InvalidDigestError:
        return ""


def _terms_of(value: Any) -> bytes:
    # Records are DigestedCalls (or Calls, when saved directly); anything else
    # put here is stored but not queryable.
    return b"".join(record_terms(value)) if isinstance(value, (DigestedCall, Call)) else b""
