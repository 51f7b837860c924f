"""Compute leases for missing call records: one worker computes, the others wait for its record.

:data:`LOOKUP` returns a record (and, on one server, its result) or claims
its lease (or enlists a waiter) in one atomic request; :data:`FINISH`, sent
with the commit, drops the lease and wakes the waiters with the record.  The
protocol: ``docs/cache.md``.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import runtime
from ..locks import watchdog as _watchdog
from ..locks.lua import EXTEND  # a lease is renewed like a lock: one script for both
from ..storage.keys import SHARD_CHARS
from ..transport.redispy import Client
from ..transport.request import send
from ..transport.scripts import LuaScript

if TYPE_CHECKING:
    from ..storage.backend import CallRedis

__all__ = [
    "LOOKUP",
    "FINISH",
    "EXTEND",
    "Lease",
    "HIT",
    "CLAIMED",
    "WAIT",
    "pack",
    "unpack",
]

logger = logging.getLogger("fleche_redis.singleflight")

HIT, CLAIMED, WAIT = 1, 2, 3

UNCACHEABLE = b"\x00"
"""FINISH's message when the function raised or returned ``None``: nothing will be stored, so
the waiters compute at once, side by side (``b""`` means "look again": one takes over)."""

LOOKUP = LuaScript(
    """
    -- KEYS[1] record hash, KEYS[2] its lease, KEYS[3] its waiters list
    -- ARGV[1] caller's token, ARGV[2] claim ttl ms, ARGV[3] waiter registration ttl ms,
    -- ARGV[4] the value data key's head and ARGV[5] its middle (KeyLayout.data_template;
    -- ARGV[4] '' when the values live elsewhere), ARGV[6] largest result sent whole
    -- Returns {1, record}: stored; {1, record, result digest, result bytes}: stored,
    -- with the result read from the value storage on the same server (an entry
    -- larger than ARGV[6] bytes comes as its size instead, for the caller to fetch
    -- unless it holds it); {2, ''}: the caller now holds the lease and computes;
    -- {3, ms}: another worker computes (lease ends in ms unless renewed) and the
    -- caller is enlisted to be woken.
    -- The result's key is not in KEYS (its digest is read here): never on Cluster.
    -- A foreign key there (a wrong type) is "no result": the caller's value
    -- storage then reads it and reports it.
    local found = redis.call('HMGET', KEYS[1], 'v', 'r')
    local record, digest = found[1], found[2]
    if record then
      if not digest or ARGV[4] == '' then return {1, record} end
      local key = ARGV[4] .. string.sub(digest, 1, SHARD_CHARS) .. ARGV[5] .. digest
      -- At most one byte more than the limit: the whole of a small entry in one call.
      local data = redis.pcall('GETRANGE', key, 0, ARGV[6])
      if type(data) ~= 'string' or data == '' then return {1, record} end
      if #data <= tonumber(ARGV[6]) then return {1, record, digest, data} end
      return {1, record, digest, redis.call('STRLEN', key)}
    end
    local holder = redis.call('GET', KEYS[2])
    if not holder or holder == ARGV[1] then
      redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
      return {2, ''}
    end
    redis.call('RPUSH', KEYS[3], ARGV[1])
    redis.call('PEXPIRE', KEYS[3], ARGV[3])
    return {3, redis.call('PTTL', KEYS[2])}
    """.replace("SHARD_CHARS", str(SHARD_CHARS))
)

FINISH = LuaScript(
    """
    -- KEYS[1] lease, KEYS[2] waiters list
    -- ARGV[1] the finishing worker's token, ARGV[2] message for the waiters
    -- (see pack(); '' means "look again"), ARGV[3] signal key prefix
    -- ('<ns>:{c.3f}:wake:'), ARGV[4] signal ttl ms
    -- Drops the lease if the caller still holds it and wakes every waiter.
    -- Returns how many waiters were woken.
    if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
    local waiters = redis.call('LRANGE', KEYS[2], 0, -1)
    if #waiters > 0 then redis.call('DEL', KEYS[2]) end
    for _, token in ipairs(waiters) do
      local signal = ARGV[3] .. token
      redis.call('RPUSH', signal, ARGV[2])
      redis.call('PEXPIRE', signal, ARGV[4])
    end
    return #waiters
    """
)


def new_token() -> str:
    """A token no other lookup anywhere uses: this process's random prefix and a counter.

    Drawing fresh random bytes for every lookup costs a system call on the
    hit path; a 64-bit prefix per process (new in every forked child) keeps
    tokens of different processes apart just as well.
    """
    prefix, counter = runtime.per_process("singleflight.tokens", _token_source)
    return f"{prefix}{next(counter):08x}"


def _token_source() -> tuple[str, itertools.count]:
    return secrets.token_hex(8), itertools.count()


@dataclass(eq=False)
class Lease:
    """This worker's right to compute one record, renewed while it computes.

    Created by a claim in ``load``, which lives ``claim_ttl``; ``watch`` hands
    it to the process's watchdog, whose first renewal (before the claim runs
    out) extends it to *ttl*; ``finish`` (in the commit's request, or the
    abandon's) drops it and wakes the waiters.  A computation shorter than
    the first renewal never sends a renewal at all.
    """

    calls: CallRedis
    key: str
    token: str
    ttl: float
    finished: bool = False
    lost: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def redis_keys(self) -> tuple[str, str]:
        layout = self.calls.layout
        return layout.key(self.key, "lease"), layout.key(self.key, "waiters")

    def watch(self, first: float) -> None:
        """Keep the lease alive in the background while the function runs, renewing it first in *first* seconds."""
        _watchdog.shared().watch(self, first)

    def _extend(self) -> bool:
        lease, _ = self.redis_keys()
        kept = self.calls.channel.run("lease", EXTEND, (lease,), (self.token, int(self.ttl * 1000)))
        return bool(kept)

    def _renew(self) -> float | None:
        """The watchdog's call while the function runs."""
        with self._lock:
            if self.finished:
                return None
        try:
            kept = self._extend()
        except Exception:  # Redis down: try again soon; the lease may still live
            return max(0.05, self.ttl / 10)
        if kept:
            return self.ttl / 3
        with self._lock:
            if self.finished:
                # The commit (or abandon) dropped the lease while this renewal
                # was on its way: finished, not lost.
                return None
            self.lost = True
        logger.warning(
            "compute lease of %s ran out while computing; waiters may compute it too", self.key
        )
        return None

    def finish_request(self, message: bytes = b"") -> Any:
        """A batch step: ``request(client)`` that drops the lease and wakes the waiters with *message*.

        Queued right after the record's write (see :func:`pack`), so the waiters
        wake holding the record and, when it is small, the result.
        """
        self._stop()
        lease, waiters = self.redis_keys()
        prefix = self.calls.layout.key(self.key, "wake")[: -len(self.key)]

        def request(client: Client) -> Any:
            return FINISH(client, (lease, waiters), (self.token, message, prefix, 60_000))

        return request

    def finish(self) -> None:
        """Drop the lease and wake the waiters now (an abandoned computation: they look again)."""
        if not self.finished:
            self.calls.channel.run("lease", self.finish_request())

    def _stop(self) -> bool:
        with self._lock:
            if self.finished:
                return False
            self.finished = True
        _watchdog.shared().unwatch(self)
        return True


MAX_PUSHED_RESULT = 64 * 1024
"""Results up to this size travel with the record (to the waiters, and in a hit's reply); bigger
ones are fetched (or found in this process's near cache) by digest."""


def pack(record: bytes, result: bytes | None) -> bytes:
    """The waiters' message: the encoded record and, optionally, the encoded result."""
    if result is None or len(result) > MAX_PUSHED_RESULT:
        result = b""
    return len(record).to_bytes(4, "big") + record + result


def unpack(message: bytes) -> tuple[bytes, bytes | None]:
    size = int.from_bytes(message[:4], "big")
    result = message[4 + size :]
    return message[4 : 4 + size], result or None


def wait_for_record(
    calls: CallRedis, key: str, token: str, lease_ms: int, deadline: float
) -> bytes | None:
    """Block until the computing worker's message arrives; ``None`` means "look again".

    Returns its message (see :func:`unpack`), or ``None`` when the computation was abandoned,
    the lease ran out, or *deadline* passed; the caller then looks again (or
    gives up waiting).  The wait is a ``BLPOP`` on the caller's own signal list,
    cut into slices no longer than the lease's remaining time (a dead worker
    is noticed then) or a second (a lost wakeup costs at most that).
    """
    signal = calls.layout.key(key, "wake")[: -len(key)] + token
    socket_timeout = calls.socket_timeout
    slice_cap = 1.0 if socket_timeout is None else max(0.05, min(1.0, socket_timeout / 2))
    remaining = deadline - runtime.clock()
    if remaining <= 0:
        return None
    wait = min(slice_cap, remaining, max(0.05, lease_ms / 1000 + 0.05))
    reply = calls.channel.run(
        "wait", lambda client: send(client, [("BLPOP", signal, wait)], ordered=True)[0]
    )
    if reply is None:
        return None
    message = reply[1]
    return message or None
