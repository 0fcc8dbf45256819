"""A failing online store degrades to popular items with a flag, instead of failing requests."""
from __future__ import annotations

import socket

import pytest

pytestmark = pytest.mark.slow


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_online_store_down_degrades(trained_workspace):
    from feature_repo.store import open_store
    from serving.recommender import Recommender

    # A real Feast redis online store pointed at a port where no Redis listens.
    store = open_store(trained_workspace, f"redis://127.0.0.1:{_closed_port()}")
    rec = Recommender(trained_workspace, feature_store=store)
    for _ in range(3):  # after the first failure the store is skipped: later calls are fast
        result = rec.recommend("u000001", 5)
        assert result.degraded and not result.personalized
        assert len(result.items) == 5
        assert not {s for r in result.items for s in r.source.split("+")} & {"two_tower", "cooccurrence"}
    # A churn risk from no features would look like a real answer: that one fails loudly instead.
    from serving.errors import StoreUnavailable

    with pytest.raises(StoreUnavailable, match="retry"):
        rec.insights("u000001")


def test_missing_models_fail_loudly(tmp_path):
    from feature_repo.workspace import Workspace
    from serving.errors import ModelNotLoaded
    from serving.recommender import Recommender

    with pytest.raises(ModelNotLoaded, match="shoprec train"):
        Recommender(Workspace.at(tmp_path))


def test_a_hanging_store_holds_up_one_request_not_every_retry(trained_workspace):
    """A store that accepts connections and never answers (a hung Redis) costs the first
    request its read timeout; after that, requests skip it while a background read retries, so
    no later request waits for the timeout again."""
    import time

    from feature_repo.store import open_store
    from serving.recommender import Recommender

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)  # the kernel completes the handshakes; nothing ever reads or answers
        store = open_store(trained_workspace, f"redis://127.0.0.1:{hung.getsockname()[1]}")
        rec = Recommender(trained_workspace, feature_store=store, store_retry_seconds=0.2)
        try:  # the warm-up's read has already met the hung store
            assert rec.store_down
            slowest, deadline = 0.0, time.monotonic() + 2.5  # past several retries of 0.2 s
            while time.monotonic() < deadline:
                start = time.monotonic()
                result = rec.recommend("u000001", 5)
                slowest = max(slowest, time.monotonic() - start)
                assert result.degraded and len(result.items) == 5
                time.sleep(0.05)
            assert slowest < 1.0, f"a request waited {slowest:.2f} s for the hung store (its read timeout is 2 s)"
        finally:
            rec.close()
