"""What a lock's Redis replies mean, apart from sending them.

Pure functions of replies, clock readings and settings: who won a round,
which fencing token a signal carries, how long to wait next, which error a
timeout is.  :mod:`.redlock` does the I/O and asks these; they need no
server to test.  See ``docs/locks.md`` for the algorithm.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import LockError, LockTimeout, LockUnavailable

__all__ = [
    "Round",
    "tally",
    "fence_of",
    "pipelined",
    "first_wait",
    "next_wait",
    "home",
    "timeout_error",
]


@dataclass(frozen=True)
class Round:
    """One ``ACQUIRE`` on every master, read.

    ``answered``: the replies that are not exceptions, by master index;
    ``won``: the masters that made us the holder; ``fence``: the fencing
    token when a quorum did (the greatest any of them gave), else ``None``.
    """

    answered: Mapping[int, Any]
    won: list[int]
    fence: int | None

    @property
    def split(self) -> bool:
        """Some masters but no quorum made us the holder: release those, back off."""
        return bool(self.won) and self.fence is None

    @property
    def leases(self) -> list[float]:
        """Seconds left of the holder's lease on each master that refused us and said."""
        return [r[2] / 1000 for r in self.answered.values() if r[0] == 0 and r[2] > 0]


def tally(replies: Mapping[int, Any], quorum: int) -> Round:
    """Read the replies (``[won, fence, holder's pttl]`` or an exception) of one round."""
    answered = {i: r for i, r in replies.items() if not isinstance(r, Exception)}
    won = [i for i, r in answered.items() if r[0] == 1]
    fence = max(int(answered[i][1]) for i in won) if len(won) >= quorum else None
    return Round(answered, won, fence)


def fence_of(value: Any) -> int | None:
    """The fencing token a releaser pushed to our signal list (``None``/``b"0"``: just a wakeup)."""
    if value is None or value == b"0":
        return None
    return int(value)


def pipelined(attempt: Any, signal: bytes | None) -> tuple[bool, int | None]:
    """Read an ``ACQUIRE`` sent together with a ``BLPOP``: (whether we queued, fence or ``None``).

    A won attempt carries its fence; a queued one is ours only if the
    ``BLPOP`` brought a fence (the releaser made us the holder).
    """
    waited = attempt[0] == 0
    return waited, fence_of(signal if waited else attempt[1])


def first_wait(recheck: float, now: float, deadline: float | None) -> float:
    """How long the pipelined attempt's ``BLPOP`` may block."""
    return recheck if deadline is None else min(recheck, max(0.0, deadline - now))


def next_wait(
    round_: Round,
    *,
    recheck: float,
    split_backoff: float,
    now: float,
    deadline: float | None,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """How long to block on our signal after a round that did not make us the holder.

    At most ``recheck``; no longer than the shortest holder's lease (plus
    1 ms); a random pause under ``split_backoff`` after a split vote; never
    past the deadline.
    """
    wait = recheck
    leases = round_.leases
    if leases:
        wait = min(wait, min(leases) + 0.001)
    if round_.won:
        wait = min(wait, uniform(0.001, split_backoff))
    if deadline is not None:
        wait = min(wait, deadline - now)
    return wait


def home(previous: int | None, answered: Mapping[int, Any]) -> int | None:
    """The master whose signal list we block on: the previous one while it answers."""
    if not answered:
        return previous
    return previous if previous in answered else min(answered)


def timeout_error(name: str, answered: int, masters: int, quorum: int) -> LockError:
    """The error of an acquisition whose deadline passed with *answered* masters replying."""
    if answered >= quorum:
        return LockTimeout(
            f"{name}: not acquired within the timeout (held by another holder)", name=name
        )
    return LockUnavailable(
        f"{name}: not acquired within the timeout "
        f"(only {answered} of {masters} master(s) answered)",
        name=name,
    )
