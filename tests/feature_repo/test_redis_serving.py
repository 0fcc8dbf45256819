"""A server whose online store is Redis: the threads that share the store under mixed load,
and Redis going down under a running server and coming back."""
from __future__ import annotations

import shutil
import time

import pytest

pytestmark = pytest.mark.slow
DB_SERVING = 5  # test_redis_store.py uses databases 0-4 of the session's redis-server


def test_a_server_on_redis_never_fails_or_degrades_under_mixed_calls(trained_workspace, redis_url, tmp_path,
                                                                     shared_store_load):
    import redis

    from feature_repo.store import apply, materialize, open_store
    from feature_repo.workspace import Workspace
    from serving.recommender import Recommender
    from serving.server import start

    shutil.copytree(trained_workspace.root, tmp_path / "ws")
    ws = Workspace.at(tmp_path / "ws")
    url = f"{redis_url.rsplit('/', 1)[0]}/{DB_SERVING}"
    redis.Redis.from_url(url).flushdb()
    store = open_store(ws, url)
    apply(store, ws)
    materialize(store, ws)
    running = start(Recommender(ws, feature_store=store), port=0)
    try:
        assert "redis" in type(running._servicer.recommender.store._get_provider().online_store).__name__.lower()
        shared_store_load(running)
    finally:
        running.stop()


def test_redis_going_down_degrades_over_grpc_and_the_server_recovers_when_it_is_back(trained_workspace, tmp_path,
                                                                                     private_redis):
    """The online-store-down path end to end: a real Redis stops under a running gRPC server.
    Recommend keeps answering (popular items, degraded=true); the calls that would mislead or
    lose data fail loudly with UNAVAILABLE; once Redis is back (and refilled: it keeps nothing
    on disk) the next Recommend after the retry pause is personal again, with no restart."""
    import grpc

    from prometheus_client import REGISTRY

    from feature_repo.store import apply, materialize, open_store
    from feature_repo.workspace import Workspace
    from serving.client import RecommenderClient
    from serving.recommender import Recommender
    from serving.server import start

    def store_down() -> float:  # what /metrics would show (this process's values)
        return REGISTRY.get_sample_value("shoprec_online_store_down")

    shutil.copytree(trained_workspace.root, tmp_path / "ws")
    ws = Workspace.at(tmp_path / "ws")
    store = open_store(ws, private_redis.url)
    apply(store, ws)
    materialize(store, ws)
    running = start(Recommender(ws, feature_store=store, store_retry_seconds=1.0), port=0)
    user, item = "u000001", "i000001"
    try:
        with RecommenderClient(running.address, timeout=15) as client:
            client.wait_ready()
            up = client.recommend(user, k=5)
            assert up.personalized and not up.degraded

            private_redis.stop()
            for _ in range(2):  # the failed read, then the retry pause: both answer
                down = client.recommend(user, k=5)
                assert down.degraded and not down.personalized and len(down.items) == 5
            assert store_down() == 1
            for call in (lambda: client.record_events([{"user_id": user, "item_id": item, "event_type": "view"}]),
                         lambda: client.user_insights(user)):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()

            private_redis.start_again()
            materialize(store, ws)
            time.sleep(1.2)  # past store_retry_seconds: the background read has found it again
            back = client.recommend(user, k=5)
            assert back.personalized and not back.degraded and store_down() == 0
            assert client.record_events([{"user_id": user, "item_id": item, "event_type": "view"}]).accepted == 1
    finally:
        running.stop()


def test_a_hung_redis_holds_a_served_request_for_the_read_timeout_not_the_push_timeout(trained_workspace, tmp_path,
                                                                                      private_redis):
    """A Redis that stops answering (frozen, connections still accepted) under a server started
    from its config, as `shoprec serve` starts one. The request that meets it waits at most
    ``store_read_timeout_seconds``, not the 2 s socket timeout that pushes get: a read is on the
    event loop, so that wait holds every call of the process. Later requests skip the store;
    once Redis answers again, the background read finds it and requests are personal again."""
    from feature_repo.store import REDIS_SOCKET_TIMEOUT, apply, materialize, open_store
    from feature_repo.workspace import Workspace
    from serving.client import RecommenderClient
    from serving.config import ServingConfig
    from serving.launcher import _load_and_start

    shutil.copytree(trained_workspace.root, tmp_path / "ws")
    ws = Workspace.at(tmp_path / "ws")
    store = open_store(ws, private_redis.url)
    apply(store, ws)
    materialize(store, ws)
    cfg = ServingConfig(port=0, online_store=private_redis.url, store_read_timeout_seconds=0.2,
                        store_retry_seconds=0.5)
    running = _load_and_start(cfg, ws.root, reuse_port=False)
    user = "u000001"
    try:
        with RecommenderClient(running.address, timeout=15) as client:
            client.wait_ready()
            assert client.recommend(user, k=5).personalized

            private_redis.hang()
            took = []
            for _ in range(3):  # the read that meets the frozen store, then skipped reads
                start = time.monotonic()
                down = client.recommend(user, k=5)
                took.append(time.monotonic() - start)
                assert down.degraded and len(down.items) == 5
            assert took[0] < REDIS_SOCKET_TIMEOUT / 2, f"the first request waited {took[0]:.2f} s (read timeout 0.2 s)"
            assert max(took[1:]) < 0.2, f"later requests waited {took[1:]} s: they should skip the store"

            private_redis.resume()
            deadline = time.monotonic() + 10
            while (back := client.recommend(user, k=5)).degraded and time.monotonic() < deadline:
                time.sleep(0.1)  # the background read retries every 0.5 s
            assert back.personalized and not back.degraded
    finally:
        private_redis.resume()
        running.stop()
