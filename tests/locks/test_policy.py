"""The pure decisions of a lock acquisition: no server, no clock."""

from __future__ import annotations

import pytest

from fleche_redis.errors import LockTimeout, LockUnavailable
from fleche_redis.locks import policy

DOWN = ConnectionError("master down")


def test_a_quorum_wins_with_the_greatest_fence():
    r = policy.tally({0: [1, 7, 0], 1: [1, 9, 0], 2: [0, 0, 800]}, quorum=2)
    assert r.fence == 9
    assert r.won == [0, 1]
    assert not r.split


def test_fences_compare_as_numbers():
    r = policy.tally({0: [1, b"10", 0], 1: [1, b"9", 0]}, quorum=2)
    assert r.fence == 10


def test_a_minority_of_wins_is_a_split_vote():
    r = policy.tally({0: [1, 7, 0], 1: [0, 0, 500], 2: DOWN}, quorum=2)
    assert r.fence is None
    assert r.won == [0]
    assert r.split
    assert set(r.answered) == {0, 1}


def test_failed_masters_neither_win_nor_answer():
    r = policy.tally({0: DOWN, 1: DOWN, 2: [1, 3, 0]}, quorum=2)
    assert r.fence is None and r.won == [2] and list(r.answered) == [2]


def test_one_master_is_its_own_quorum():
    assert policy.tally({0: [1, 4, 0]}, quorum=1).fence == 4
    lost = policy.tally({0: [0, 0, 1500]}, quorum=1)
    assert lost.fence is None and not lost.split and lost.won == []


def test_leases_are_the_refusing_holders_remaining_seconds():
    r = policy.tally({0: [0, 0, 1500], 1: [0, 0, 0], 2: [1, 5, 0], 3: [0, 0, -1]}, quorum=3)
    assert r.leases == [1.5]


@pytest.mark.parametrize(
    ("value", "fence"),
    [(None, None), (b"0", None), (b"12", 12), (b"1", 1)],
)
def test_a_signal_carries_a_fence_or_is_only_a_wakeup(value, fence):
    assert policy.fence_of(value) == fence


def test_a_pipelined_win_carries_its_own_fence_and_ignores_the_signal():
    assert policy.pipelined([1, 8, 0], None) == (False, 8)
    assert policy.pipelined([1, 8, 0], b"99") == (False, 8)


def test_a_pipelined_wait_is_won_only_by_a_pushed_fence():
    assert policy.pipelined([0, 0, 700], b"11") == (True, 11)
    assert policy.pipelined([0, 0, 700], b"0") == (True, None)
    assert policy.pipelined([0, 0, 700], None) == (True, None)


def test_the_first_wait_is_bounded_by_recheck_and_deadline():
    assert policy.first_wait(0.2, now=10.0, deadline=None) == 0.2
    assert policy.first_wait(0.2, now=10.0, deadline=10.05) == pytest.approx(0.05)
    assert policy.first_wait(0.2, now=10.0, deadline=9.0) == 0.0


def _never(a: float, b: float) -> float:
    raise AssertionError("no random backoff without a split vote")


def test_the_next_wait_is_at_most_the_recheck():
    r = policy.tally({0: [0, 0, 0]}, quorum=1)
    wait = policy.next_wait(
        r, recheck=0.2, split_backoff=0.02, now=0.0, deadline=None, uniform=_never
    )
    assert wait == 0.2


def test_the_next_wait_ends_just_after_the_shortest_lease():
    r = policy.tally({0: [0, 0, 50], 1: [0, 0, 120], 2: [0, 0, 0]}, quorum=2)
    wait = policy.next_wait(
        r, recheck=0.2, split_backoff=0.02, now=0.0, deadline=None, uniform=_never
    )
    assert wait == pytest.approx(0.051)


def test_a_split_vote_backs_off_randomly_below_the_bound():
    calls = []

    def uniform(a: float, b: float) -> float:
        calls.append((a, b))
        return 0.013

    r = policy.tally({0: [1, 3, 0], 1: [0, 0, 900], 2: DOWN}, quorum=2)
    wait = policy.next_wait(
        r, recheck=0.2, split_backoff=0.02, now=0.0, deadline=None, uniform=uniform
    )
    assert wait == 0.013
    assert calls == [(0.001, 0.02)]


def test_the_next_wait_never_passes_the_deadline():
    r = policy.tally({0: [0, 0, 900]}, quorum=1)
    wait = policy.next_wait(
        r, recheck=0.2, split_backoff=0.02, now=5.0, deadline=5.03, uniform=_never
    )
    assert wait == pytest.approx(0.03)


def test_the_home_master_stays_while_it_answers():
    assert policy.home(None, {}) is None
    assert policy.home(2, {}) == 2
    assert policy.home(None, {1: [0, 0, 0], 2: [0, 0, 0]}) == 1
    assert policy.home(2, {1: [0, 0, 0], 2: [0, 0, 0]}) == 2
    assert policy.home(0, {1: [0, 0, 0], 2: [0, 0, 0]}) == 1


def test_a_timeout_with_a_quorum_answering_means_held_by_another():
    e = policy.timeout_error("ns:{t}:x", answered=2, masters=3, quorum=2)
    assert type(e) is LockTimeout
    assert e.name == "ns:{t}:x"
    assert "held by another holder" in str(e)


def test_a_timeout_without_a_quorum_answering_means_unavailable():
    e = policy.timeout_error("ns:{t}:x", answered=1, masters=3, quorum=2)
    assert type(e) is LockUnavailable
    assert e.name == "ns:{t}:x"
    assert "only 1 of 3 master(s) answered" in str(e)
