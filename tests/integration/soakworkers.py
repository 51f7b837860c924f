"""The soak test's worker: mixed storage operations for a fixed time, checking every answer."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from fleche.digest import digest
from fleche.storage import AmbiguousDigestError

from fleche_redis import CallRedis, PerKeyLockMixin, ValueRedis


@dataclass(frozen=True)
class LockedValueRedis(PerKeyLockMixin, ValueRedis): ...


def locked_increment(url: str, namespace: str):
    """A lock operation for the soak: a non-atomic increment under a per-key distributed lock."""
    storage = LockedValueRedis(url=url, namespace=namespace, lock_ttl=5.0, lock_timeout=30.0)
    client = storage.redis()

    def lock(i: int) -> None:
        key = digest(f"counter-{i % 3}")
        with storage._operation_context(key):
            counter = f"{namespace}:counter:{i % 3}"
            client.set(counter, int(client.get(counter) or 0) + 1)

    return lock


def value_for(i: int) -> dict:
    """What key i must hold, if anything: values are content-addressed, so never anything else."""
    return {"i": i, "payload": "p" * (i % 200), "nested": [i, [i % 7]]}


def soak(
    url: str, namespace: str, seconds: float, seed: int, lock_factory=locked_increment
) -> dict:
    rng = random.Random(seed)
    values = ValueRedis(url=url, namespace=namespace)
    calls = CallRedis(url=url, namespace=namespace)
    counts = {
        "save": 0,
        "load": 0,
        "miss": 0,
        "evict": 0,
        "expand": 0,
        "ambiguous": 0,
        "query": 0,
        "lock": 0,
    }
    wrong: list[str] = []
    lock = lock_factory(url, namespace) if lock_factory else None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        i = rng.randrange(300)
        key = digest(value_for(i))
        op = rng.random()
        if op < 0.35:
            assert values.save(value_for(i)) == key
            counts["save"] += 1
        elif op < 0.65:
            try:
                got = values.load(key)
                counts["load"] += 1
                if got != value_for(i):
                    wrong.append(f"load {key}: {got!r}")
            except KeyError:
                counts["miss"] += 1
        elif op < 0.75:
            values.evict(key)
            counts["evict"] += 1
        elif op < 0.88:
            try:
                expanded = values.expand(key[:5])
                if not key.startswith(expanded[:5]):
                    wrong.append(f"expand {key[:5]} -> {expanded}")
                counts["expand"] += 1
            except AmbiguousDigestError:
                counts["ambiguous"] += 1
            except KeyError:
                counts["miss"] += 1
        elif op < 0.95:
            from fleche.call import DigestedCall, QueryCall

            calls.save(DigestedCall(name=f"f{i % 5}", arguments={"i": digest(i)}, result=key))
            for record in calls.query(QueryCall(name=f"f{i % 5}", arguments={"i": i})):
                if record.result != key:
                    wrong.append(f"query f{i % 5}({i}) -> {record.result}")
            counts["query"] += 1
        elif lock is not None:
            lock(i)
            counts["lock"] += 1
    return {"counts": counts, "wrong": wrong}
