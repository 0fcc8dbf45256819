"""A server whose online store is Redis: the threads that share the store, under mixed load."""
from __future__ import annotations

import shutil

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
