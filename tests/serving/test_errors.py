"""Every status code of the error table, end to end over real gRPC where a client can see it."""
from __future__ import annotations

import socket

import grpc
import pytest

from feature_repo.errors import ArtifactError
from serving.errors import InvalidArgument, ModelNotLoaded, StoreUnavailable, UnknownItem, status_for


@pytest.mark.parametrize("error, code", [
    (InvalidArgument("k", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownItem("item_id: nope"), grpc.StatusCode.NOT_FOUND),
    (ModelNotLoaded("run shoprec train"), grpc.StatusCode.FAILED_PRECONDITION),
    (ArtifactError("bad manifest"), grpc.StatusCode.FAILED_PRECONDITION),
    (StoreUnavailable("redis down"), grpc.StatusCode.UNAVAILABLE),
    (TimeoutError("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (KeyError("secret"), grpc.StatusCode.INTERNAL),
])
def test_the_table_maps_each_error_class(error, code):
    got, message = status_for(error)
    assert got == code
    assert ("secret" not in message) if code == grpc.StatusCode.INTERNAL else message == str(error)


@pytest.mark.parametrize("error, code", [
    (ModelNotLoaded("no live ranking version; run `shoprec train`"), grpc.StatusCode.FAILED_PRECONDITION),
    (StoreUnavailable("online store: down"), grpc.StatusCode.UNAVAILABLE),
    (TimeoutError("deadline"), grpc.StatusCode.DEADLINE_EXCEEDED),
])
def test_pipeline_errors_reach_the_client_with_their_status(grpc_server, recommender, monkeypatch, error, code):
    from serving.client import RecommenderClient

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(recommender, "_recommend", fail)  # the pipeline, alone or batched
    with RecommenderClient(grpc_server.address) as c, pytest.raises(grpc.RpcError) as err:
        c.recommend("u000001")
    assert err.value.code() == code and err.value.details() == str(error)


def test_expired_deadline_is_deadline_exceeded(client):
    from serving.proto import recommender_pb2 as pb

    with pytest.raises(grpc.RpcError) as err:
        client.stub.Recommend(pb.RecommendRequest(user_id="u000001", k=5), timeout=1e-6)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("max_batch", [1, 4])
def test_a_call_whose_deadline_passed_while_queued_is_not_computed(recommender, monkeypatch, max_batch):
    """The server does not spend a request's work on a caller that has given up: a call that
    waited behind a slow one past its deadline never reaches the pipeline, whether calls queue
    for the event loop (max_batch 1) or for the batching thread (serving/batching.py)."""
    import threading
    import time

    from serving.client import RecommenderClient
    from serving.proto import recommender_pb2 as pb
    from serving.server import start

    pipeline, started = recommender._recommend, []

    def slow_for_one_user(live, requests):
        started.extend(r.user_id for r in requests)
        if requests[0].user_id == "slow-shopper":
            time.sleep(0.6)  # holds the loop (or the batching thread): calls behind it wait
        return pipeline(live, requests)

    monkeypatch.setattr(recommender, "_recommend", slow_for_one_user)
    server = start(recommender, port=0, max_batch=max_batch)
    try:
        with RecommenderClient(server.address) as c:
            c.wait_ready()
            first = threading.Thread(target=lambda: c.stub.Recommend(pb.RecommendRequest(user_id="slow-shopper", k=5),
                                                                     timeout=10))
            first.start()
            while "slow-shopper" not in started:
                time.sleep(0.01)
            with pytest.raises(grpc.RpcError) as err:
                c.stub.Recommend(pb.RecommendRequest(user_id="late-shopper", k=5), timeout=0.2)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            first.join()
            c.recommend("u000001", k=5)  # free again, it answers
    finally:
        server.stop()
    assert "late-shopper" not in started


def test_answer_times_refuse_only_what_cannot_be_answered_in_time():
    from serving.server import AnswerTimes

    times = AnswerTimes()
    times.check("Recommend", 0.001)  # nothing learnt yet: any time left will do
    times.check("Recommend", None)  # no deadline: never refused
    with pytest.raises(TimeoutError, match="deadline passed"):
        times.check("Recommend", 0.0)
    for _ in range(200):
        times.answered("Recommend", 0.010)
    assert times.seconds["Recommend"] == pytest.approx(0.010, rel=1e-3)
    times.check("Recommend", 0.021)  # more than twice the average left
    times.check("GetInfo", 0.001)  # each RPC has its own average
    with pytest.raises(TimeoutError, match=r"left 19\.0 ms .* too little for a Recommend .* 10\.0 ms"):
        times.check("Recommend", 0.019)
    assert times.seconds["Recommend"] == pytest.approx(0.010 * AnswerTimes.DECAY, rel=1e-3)  # a refusal shrinks it


def test_a_call_whose_deadline_leaves_too_little_time_is_refused_at_once_and_the_estimate_recovers(
        recommender, monkeypatch):
    """Recommend takes 50 ms here. A call with 60 ms left cannot be answered in time by a
    process that takes ~50 ms a call: it is refused at once, without running the pipeline. The
    estimate shrinks with each refusal, so a client whose deadline (80 ms) is tight but enough
    is served again after a few dozen refusals instead of never."""
    import time

    from prometheus_client import REGISTRY

    from serving.client import RecommenderClient
    from serving.proto import recommender_pb2 as pb
    from serving.server import start

    pipeline, started = recommender._recommend, []

    def fifty_ms(live, requests):
        started.extend(r.user_id for r in requests)
        time.sleep(0.05)
        return pipeline(live, requests)

    monkeypatch.setattr(recommender, "_recommend", fifty_ms)
    server = start(recommender, port=0)
    try:
        with RecommenderClient(server.address) as c:
            for _ in range(60):  # the process learns its answer time (~48 ms after 60 calls)
                c.recommend("u000001", k=5)
            shed = REGISTRY.get_sample_value("shoprec_shed_calls_total", {"rpc": "Recommend"}) or 0.0
            asked = time.perf_counter()
            with pytest.raises(grpc.RpcError) as err:
                c.stub.Recommend(pb.RecommendRequest(user_id="hurried-shopper", k=5), timeout=0.06)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "too little" in err.value.details()
            assert REGISTRY.get_sample_value("shoprec_shed_calls_total", {"rpc": "Recommend"}) == shed + 1
            assert time.perf_counter() - asked < 0.04  # refused, not worked on until the deadline
            assert "hurried-shopper" not in started
            refused = 0
            while refused < 300:
                try:
                    c.stub.Recommend(pb.RecommendRequest(user_id="u000001", k=5), timeout=0.08)
                    break
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                    refused += 1
            assert 5 < refused < 300, refused  # refused while the estimate says no, then served
    finally:
        server.stop()


@pytest.mark.slow
def test_record_events_with_the_store_down_is_unavailable(trained_workspace, recommender):
    """Events that cannot be stored must not look accepted: UNAVAILABLE, so the shop retries."""
    from feature_repo.store import open_store
    from serving.events import record_events
    from serving.proto import recommender_pb2 as pb

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = open_store(trained_workspace, f"redis://127.0.0.1:{port}")
    item = str(recommender.models.items.item_ids[0])
    with pytest.raises(StoreUnavailable, match="retry"):
        record_events(down, [pb.Event(user_id="u1", item_id=item, event_type="view")],
                      recommender.models.items.position)


def test_worker_threads_give_the_same_answers_and_statuses(trained_workspace, recommender, client):
    """workers = N (requests on threads, for a remote online store) against the default
    (requests on the event loop): the same pages under concurrency, the same error statuses."""
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    from serving.client import RecommenderClient
    from serving.server import start

    users = pd.read_parquet(trained_workspace.clean_dir / "events.parquet")["user_id"].value_counts().index[:12]
    threaded = start(recommender, port=0, workers=3)
    try:
        with RecommenderClient(threaded.address) as c, ThreadPoolExecutor(6) as pool:
            pages = list(pool.map(lambda u: [r.item_id for r in c.recommend(u, k=10).items], users))
            assert pages == [[r.item_id for r in client.recommend(u, k=10).items] for u in users]
            assert all(len(p) == 10 for p in pages)
            with pytest.raises(grpc.RpcError) as err:
                c.recommend(users[0], k=1000)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "k: must be between" in err.value.details()
    finally:
        threaded.stop()
