"""RecordEvents over gRPC: per-event validation, and the next Recommend reacts."""
from __future__ import annotations

import grpc
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture()
def events_client(private_server):
    from serving.client import RecommenderClient

    with RecommenderClient(private_server.address) as c:
        c.wait_ready()
        yield c


def test_a_purchase_disappears_from_the_next_recommendation(events_client):
    user = "u000003"
    first = events_client.recommend(user, k=5)
    bought = first.items[0].item_id
    response = events_client.record_events([
        {"user_id": user, "item_id": bought, "event_type": "add_to_cart"},
        {"user_id": user, "item_id": bought, "event_type": "purchase", "price": 12.5}])
    assert response.accepted == 2 and all(r.accepted for r in response.results)
    after = events_client.recommend(user, k=20)
    assert bought not in [r.item_id for r in after.items]


def test_a_new_user_becomes_personalized_after_one_event(events_client):
    assert not events_client.recommend("walk-in-42", k=5).personalized
    events_client.record_events([{"user_id": "walk-in-42", "item_id": "i000010", "event_type": "view"}])
    assert events_client.recommend("walk-in-42", k=5).personalized


def test_each_event_is_judged_on_its_own(events_client):
    response = events_client.record_events([
        {"user_id": "u000004", "item_id": "i000001", "event_type": "view"},
        {"user_id": "u000004", "item_id": "i000001", "event_type": "like"},
        {"user_id": "", "item_id": "i000001", "event_type": "view"},
        {"user_id": "u000004", "item_id": "not-an-item", "event_type": "view"},
        {"user_id": "u000004", "item_id": "i000001", "event_type": "view", "timestamp": 4e9},
        {"user_id": "u000004", "item_id": "i000001", "event_type": "purchase", "price": -1},
        # Not numbers: NaN passes every comparison, and an unchecked one failed the whole push
        {"user_id": "u000004", "item_id": "i000001", "event_type": "view", "timestamp": float("nan")},
        {"user_id": "u000004", "item_id": "i000001", "event_type": "view", "timestamp": float("inf")},
        {"user_id": "u000004", "item_id": "i000001", "event_type": "purchase", "price": float("inf")},
        {"user_id": "u000004", "item_id": "i000001", "event_type": "purchase", "price": float("nan")},
        {"user_id": "u000004", "item_id": "", "event_type": "view"},
        {"user_id": "u" * 129, "item_id": "i000001", "event_type": "view"},
        {"user_id": "u000004", "item_id": "i000001", "event_type": "view", "timestamp": -5},
    ])
    assert [r.accepted for r in response.results] == [True] + [False] * 12
    assert [r.error.split(":")[0] for r in response.results[1:]] == [
        "event_type", "user_id", "item_id", "timestamp", "price", "timestamp", "timestamp", "price", "price",
        "item_id", "user_id", "timestamp"]
    assert response.accepted == 1


def test_too_many_events_is_invalid_argument(events_client):
    with pytest.raises(grpc.RpcError) as err:
        events_client.record_events([{"user_id": "u1", "item_id": "i000001", "event_type": "view"}] * 1001)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("events:")


def test_concurrent_calls_are_pushed_together_and_acknowledged_each(private_server, events_client):
    """RecordEvents calls that queue up share one push (serving/batching.py): every call still
    gets its own per-event results, a bad event rejects only itself, and every user's features
    have every accepted event."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.recommender import Recommender

    rec: Recommender = private_server._servicer.recommender
    items = [str(i) for i in rec.models.items.item_ids[:40]]
    batcher = private_server._servicer.events_batcher
    calls_before, batches_before = batcher.calls, batcher.batches

    def call(n: int):
        events = [{"user_id": f"batch-user-{n}", "item_id": items[n], "event_type": "view"},
                  {"user_id": f"batch-user-{n}", "item_id": items[n + 1], "event_type": "add_to_cart"}]
        if n % 4 == 0:
            events.append({"user_id": f"batch-user-{n}", "item_id": "no-such-item", "event_type": "view"})
        return events_client.record_events(events)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, range(24)))
    for n, response in enumerate(responses):
        assert response.accepted == 2
        assert [r.accepted for r in response.results] == [True, True] + ([False] if n % 4 == 0 else [])
        if n % 4 == 0:
            assert response.results[2].error.startswith("item_id:")
    rows = rec.user_reader.read_many([f"batch-user-{n}" for n in range(24)])
    assert [r["recent_items"][-2:] for r in rows] == [[items[n], items[n + 1]] for n in range(24)]
    assert [r["recent_event_types"][-1] for r in rows] == ["add_to_cart"] * 24
    assert batcher.calls - calls_before == 24 and batcher.batches - batches_before < 24  # some were shared


@pytest.mark.parametrize("max_batch", [1, 8])
def test_the_threads_sharing_the_store_never_fail_or_degrade(private_server, shared_store_load, max_batch):
    """On sqlite: Feast's one connection, used by the loop and the events thread, and with
    ``max_batch > 1`` by the pipeline thread too (see the fixture)."""
    from serving.server import start

    running = start(private_server._servicer.recommender, port=0, max_batch=max_batch)
    try:
        assert (running._servicer.recommend_batcher is None) == (max_batch == 1)
        shared_store_load(running)
    finally:
        running.stop()


def test_a_store_failure_fails_only_the_calls_that_wrote(trained_workspace, recommender):
    """One push for several calls: if it fails, each call that had accepted events is told to
    retry; a call whose events were all rejected gets its rejections."""
    import socket

    from feature_repo.store import open_store
    from serving.errors import StoreUnavailable
    from serving.events import record_event_calls
    from serving.proto import recommender_pb2 as pb

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = open_store(trained_workspace, f"redis://127.0.0.1:{port}")
    item = str(recommender.models.items.item_ids[0])
    good = [pb.Event(user_id="u1", item_id=item, event_type="view")]
    bad = [pb.Event(user_id="u2", item_id="nope", event_type="view")]
    answers = record_event_calls(down, [good, bad, good], recommender.models.items.position)
    assert isinstance(answers[0], StoreUnavailable) and isinstance(answers[2], StoreUnavailable)
    assert "retry the call" in str(answers[0])
    assert [r.accepted for r in answers[1]] == [False] and answers[1][0].error.startswith("item_id:")


def test_the_push_path_is_prepared_when_the_server_starts(trained_workspace, recommender, monkeypatch):
    """What a push needs from the registry is looked up when the servicer is made, not by the
    first RecordEvents call (~50 ms of Feast's registry parsing on the events thread)."""
    from types import SimpleNamespace

    import pandas as pd

    from feature_repo.realtime import apply_events
    from feature_repo.store import open_store
    from serving.server import Limits, RecommenderServicer

    store = open_store(trained_workspace)  # a store no push has used yet
    servicer = RecommenderServicer(SimpleNamespace(store=store), Limits(), workers=0, max_batch=1,
                                   max_event_batch=8, process=(1, 1))

    def registry_read(*args, **kwargs):
        raise AssertionError("a push read the registry")

    for name in ("get_feature_view", "_fvs_for_push_source_or_raise", "get_feature_service"):
        monkeypatch.setattr(store, name, registry_read)
    item = str(recommender.models.items.item_ids[0])
    pushed = apply_events(store, pd.DataFrame([{"user_id": "prepared-user", "item_id": item, "event_type": "view",
                                                "timestamp": pd.Timestamp.now(tz="UTC"), "price": None}]))
    assert list(pushed["user_recent"]["recent_items"].iloc[0])[-1] == item
    servicer.events_batcher.close()
