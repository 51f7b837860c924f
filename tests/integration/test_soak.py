"""Eight processes hammer one namespace for a while; nobody sees a wrong value, the indexes stay sound.

Bounded by FLECHE_REDIS_SOAK_SECONDS (default 5 s of load); run longer by hand.
"""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from fleche_redis import CallRedis, ValueRedis

from . import soakworkers

SECONDS = float(os.environ.get("FLECHE_REDIS_SOAK_SECONDS", "5"))


@pytest.mark.slow
def test_soak(fresh_server, namespace, record_property, capsys):
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(8, mp_context=ctx) as pool:
        runs = list(
            pool.map(
                soakworkers.soak, [fresh_server.url] * 8, [namespace] * 8, [SECONDS] * 8, range(8)
            )
        )
    totals: dict[str, int] = {}
    for run in runs:
        for op, n in run["counts"].items():
            totals[op] = totals.get(op, 0) + n
    wrong = [w for run in runs for w in run["wrong"]]
    record_property("soak_operations", totals)
    with capsys.disabled():
        print(
            f"\nsoak: 8 processes x {SECONDS:g} s: {totals} ({sum(totals.values()):,} operations)"
        )
    assert wrong == []
    assert (
        totals["save"] > 100
        and totals["load"] > 100
        and totals["evict"] > 10
        and totals["lock"] > 10
    )
    client = fresh_server.client()
    counted = sum(int(client.get(f"{namespace}:counter:{j}") or 0) for j in range(3))
    assert counted == totals["lock"]  # no increment lost: the locks excluded each other
    for storage in (
        ValueRedis(url=fresh_server.url, namespace=namespace),
        CallRedis(url=fresh_server.url, namespace=namespace),
    ):
        report = storage.verify()
        assert report.ok, report.to_dict()
