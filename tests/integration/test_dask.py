"""Two Dask clients submit the same inputs concurrently to a 2-process LocalCluster: each input runs once."""

import threading

import fleche
import pytest

from fleche_redis import redis_cache

from . import taskworkers

distributed = pytest.importorskip("distributed")


@pytest.mark.parametrize("single_flight", [True, False])
def test_two_clients_same_inputs_each_computed_once(
    redis_server, namespace, monkeypatch, single_flight
):
    monkeypatch.setenv("FLECHE_REDIS_TEST_COUNTER", f"{redis_server.url} {namespace}:runs")
    cache = redis_cache(url=redis_server.url, namespace=namespace, single_flight=single_flight)
    with fleche.cache(cache), fleche.meta():
        task = fleche.BoundWrapper.bind(taskworkers.slow_square)
    inputs = list(range(50))
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=4, processes=True, dashboard_address=None, silence_logs=40
    ) as cluster:
        results: dict[int, list] = {}
        # Both clients connected before either submits: connecting takes long
        # enough that a late second client could find every result stored,
        # and the control below would then see no race to prevent.
        ready = threading.Barrier(2)

        def submit(i: int) -> None:
            with distributed.Client(cluster, set_as_default=False) as client:
                ready.wait(60)
                futures = client.map(task, inputs, pure=False)
                results[i] = client.gather(futures)

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        counts = redis_server.client()
        runs = [int(counts.get(f"{namespace}:runs:{x}") or 0) for x in inputs]
        if not single_flight:  # the control: the duplicates do race
            assert sum(runs) > 50
            return
        assert runs == [1] * 50  # every input computed exactly once across both clients
        expected = [{"x": x, "square": x * x} for x in inputs]
        assert results[0] == expected and results[1] == expected

        with distributed.Client(
            cluster, set_as_default=False
        ) as client:  # a second round: all hits
            assert client.gather(client.map(task, inputs, pure=False)) == expected
        assert [int(counts.get(f"{namespace}:runs:{x}") or 0) for x in inputs] == [1] * 50
