"""Scripts on a slot that is moving: stopped before they write anything, then sent again.

Seen once in the slot-move test of ``test_cluster_faults.py``: RELEASE
deleted the lock, then touched the queue key, which was not on the node
("Script attempted to access a non local key"; only the lock and its fence
counter are declared keys).  The lock was free, yet ``release()`` raised
``LockUnavailable`` and a locked save was refused.  The scripts now touch
every key before they write one, so a script stopped this way wrote nothing,
and the lock sends it again until the move is over.  EVICT of a chunked
entry had the same flaw with its chunks, which only the manifest names.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from redis.crc import key_slot

from fleche_redis import Redlock, ValueRedis
from fleche_redis.locks import lua
from fleche_redis.storage import chunks
from fleche_redis.storage import lua as entry_lua
from fleche_redis.testing import RedisClusterProcesses
from fleche_redis.transport.health import NOT_HERE_YET

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster():
    with RedisClusterProcesses.start(3) as group:
        yield group


def _other_primary(cluster, slot):
    owner = cluster.owner(slot)
    return next(p for p in cluster.primaries() if p.port != owner.port)


def _slot_contents(node, slot):
    client = node.client()
    try:
        keys = client.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
        return {k: client.dump(k) for k in keys}
    finally:
        client.close()


@pytest.mark.parametrize(
    "script, mode",
    [
        ("RELEASE", "f"),  # the holder lets go: the queue key is not on the node
        ("RELEASE", "fc"),  # a waiter gives up
        ("ACQUIRE", "fqc"),  # a waiter asks again while the lock is held
        ("SETTLE", None),
    ],
)
def test_a_lock_script_stopped_by_a_split_slot_wrote_nothing(cluster, namespace, script, mode):
    tag = f"{namespace}-{script}-{mode}"
    name = f"{namespace}:{{{tag}}}"
    slot = key_slot(tag.encode())
    lock = Redlock(name, cluster.url, ttl=30)
    assert lock.acquire()
    token = lock._token
    keys = (name, f"{name.split('}')[0]}}}:fence")
    args = {
        "RELEASE": (token, mode),
        "ACQUIRE": ("another-token", 30000, 30000, mode),
        "SETTLE": (token, 1),
    }[script]
    with cluster.slot_split(slot, _other_primary(cluster, slot)) as source:
        before = _slot_contents(source, slot)
        client = source.client()
        try:
            with pytest.raises(redis.ResponseError, match=NOT_HERE_YET):
                client.eval(getattr(lua, script).source, 2, *keys, *args)
        finally:
            client.close()
        assert _slot_contents(source, slot) == before
    lock.release()


def test_release_while_the_slot_is_split_rides_through_the_move(cluster, namespace):
    name = f"{namespace}:{{job}}"
    slot = key_slot(b"job")
    lock = Redlock(name, cluster.url, ttl=30)
    assert lock.acquire()
    outcome: list = []

    def release():
        started = time.monotonic()
        try:
            lock.release()
            outcome.append(("released", time.monotonic() - started))
        except Exception as e:  # the test wants none
            outcome.append((repr(e), time.monotonic() - started))

    releaser = threading.Thread(target=release)
    with cluster.slot_split(slot, _other_primary(cluster, slot)):
        releaser.start()
        time.sleep(0.5)  # the release meets the split slot, and waits
        assert outcome == []
    releaser.join(10)
    assert [what for what, _ in outcome] == ["released"]
    assert cluster.client().exists(name) == 0
    again = Redlock(name, cluster.url, ttl=30)
    assert again.acquire(timeout=1)  # free for the next holder
    again.release()


def _chunked(cluster, namespace):
    """A value storage on the cluster and the key of an entry stored as 3 chunks.

    Every key EVICT declares exists (a references hash too), so the server
    runs the script rather than refusing it with ``TRYAGAIN`` up front.
    """
    values = ValueRedis(url=cluster.url, namespace=namespace, chunk_size=1000)
    key = values.save(namespace.encode() * (2500 // len(namespace) + 1))
    cluster.client().hset(values.layout.references_of(key), "other", b"")
    data_key = values.layout.data(key)
    return values, key, data_key, key_slot(data_key.encode())


def _migrate(source, target, *keys):
    client = source.client()
    try:
        client.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
    finally:
        client.close()


def test_evict_of_a_chunked_entry_stopped_by_a_split_slot_wrote_nothing(cluster, namespace):
    values, key, data_key, slot = _chunked(cluster, namespace)
    target = _other_primary(cluster, slot)
    with cluster.slot_split(slot, target) as source:
        _migrate(source, target, f"{data_key}:1")  # one chunk is over there already
        before = _slot_contents(source, slot)
        keys = (data_key, values.layout.index_of(key), values.layout.references_of(key))
        client = source.client()
        try:
            with pytest.raises(redis.ResponseError, match=NOT_HERE_YET):
                client.eval(entry_lua.EVICT.source, 3, *keys, key, chunks.MAGIC)
        finally:
            client.close()
        assert _slot_contents(source, slot) == before


def test_evict_while_the_slot_is_split_rides_through_the_move(cluster, namespace):
    values, key, data_key, slot = _chunked(cluster, namespace)
    target = _other_primary(cluster, slot)
    outcome: list = []

    def evict():
        try:
            outcome.append(values.evict(key))
        except Exception as e:  # the test wants none
            outcome.append(repr(e))

    evicter = threading.Thread(target=evict)
    with cluster.slot_split(slot, target) as source:
        _migrate(source, target, f"{data_key}:1")
        evicter.start()
        time.sleep(0.5)  # the evict meets the split slot, and waits
        assert outcome == []
    evicter.join(10)
    assert outcome and not isinstance(outcome[0], str), outcome
    with pytest.raises(KeyError):
        values.load(key)
    cluster.client().hdel(values.layout.references_of(key), "other")  # ours, planted above
    assert values.verify().ok  # no chunk, index member or reference left behind
