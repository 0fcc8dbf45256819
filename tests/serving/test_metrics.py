"""Prometheus metrics: every call counted by RPC and status code, its server time, degraded
answers and events, served over real HTTP (the two-process sum: tests/serving/test_config.py)."""
from __future__ import annotations

import grpc
import pytest


def grew(before: dict, after: dict, name: str, **labels: str) -> float:
    """How much the sample ``name`` with ``labels`` grew between two scrapes."""
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture()
def endpoint():
    from serving.metrics import Exposed

    exposed = Exposed("127.0.0.1", 0)  # this process's registry, on a free port
    yield exposed
    exposed.close()


def test_calls_are_counted_by_rpc_and_status_code_with_their_time(client, trained_workspace, endpoint, scrape):
    from serving.proto import recommender_pb2 as pb

    import pandas as pd

    user = str(pd.read_parquet(trained_workspace.clean_dir / "events.parquet")["user_id"].iloc[0])
    before = scrape(endpoint.port)
    for _ in range(3):
        client.recommend(user, k=5)
    for bad in ({"user_id": "", "k": 5}, {"user_id": user, "k": 10_000}):  # no user; k over the limit
        with pytest.raises(grpc.RpcError) as error:
            client.stub.Recommend(pb.RecommendRequest(**bad), timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    client.info()
    after = scrape(endpoint.port)

    assert grew(before, after, "shoprec_requests_total", rpc="Recommend", code="OK") == 3
    assert grew(before, after, "shoprec_requests_total", rpc="Recommend", code="INVALID_ARGUMENT") == 2
    assert grew(before, after, "shoprec_requests_total", rpc="GetInfo", code="OK") == 1
    assert grew(before, after, "shoprec_request_duration_seconds_count", rpc="Recommend") == 5
    assert grew(before, after, "shoprec_request_duration_seconds_bucket", rpc="Recommend", le="+Inf") == 5
    assert 0 < grew(before, after, "shoprec_request_duration_seconds_sum", rpc="Recommend") < 5
    assert grew(before, after, "shoprec_degraded_responses_total", rpc="Recommend") == 0


def test_user_cache_lookups_and_the_served_versions_are_reported(client, trained_workspace, endpoint, scrape):
    import pandas as pd

    user = str(pd.read_parquet(trained_workspace.clean_dir / "events.parquet")["user_id"].iloc[0])
    before = scrape(endpoint.port)
    for _ in range(3):  # the same inputs: the second and third find the first's retrieval
        client.recommend(user, k=5)
    after = scrape(endpoint.port)
    hits, misses = (grew(before, after, "shoprec_user_cache_lookups_total", result=r) for r in ("hit", "miss"))
    assert hits + misses == 3 and hits >= 2

    info = client.info()
    live = {"retrieval": info.retrieval_version, "index": info.index_version, "ranking": info.ranking_version}
    served = [dict(labels) for (name, labels), value in after.items()
              if name == "shoprec_serving_versions" and value == 1]
    assert any(all(s[k] == v for k, v in live.items()) for s in served), (live, served)


def test_a_reload_marks_the_versions_it_replaced_and_keeps_unchanged_ones_served():
    from prometheus_client import REGISTRY

    from serving.metrics import record_serving

    def value(ranking: str) -> float:
        return REGISTRY.get_sample_value("shoprec_serving_versions",
                                         {"retrieval": "r-test", "index": "i-test", "ranking": ranking, "churn": ""})

    first = {"retrieval": "r-test", "index": "i-test", "ranking": "k-test-1"}
    record_serving(first)
    record_serving(first, replaced=first)  # new item features, the same versions: still served
    assert value("k-test-1") == 1
    record_serving({**first, "ranking": "k-test-2"}, replaced=first)
    assert (value("k-test-1"), value("k-test-2")) == (0, 1)


def test_rejected_events_are_counted_each(client, endpoint, scrape):
    before = scrape(endpoint.port)
    response = client.record_events([{"user_id": "", "item_id": "i000001", "event_type": "view"},
                                     {"user_id": "u1", "item_id": "i000001", "event_type": "like"}])
    assert response.accepted == 0  # nothing reaches the store: the shared server stays as it was
    after = scrape(endpoint.port)
    assert grew(before, after, "shoprec_events_total", result="rejected") == 2
    assert grew(before, after, "shoprec_events_total", result="accepted") == 0
    assert grew(before, after, "shoprec_requests_total", rpc="RecordEvents", code="OK") == 1


@pytest.mark.slow
def test_answers_without_the_online_store_are_counted_as_degraded(trained_workspace, endpoint, scrape):
    """A real Feast Redis online store where no Redis listens, behind a real gRPC server."""
    import socket

    from feature_repo.store import open_store
    from serving.client import RecommenderClient
    from serving.recommender import Recommender
    from serving.server import start

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    rec = Recommender(trained_workspace, feature_store=open_store(trained_workspace, f"redis://127.0.0.1:{closed}"))
    running = start(rec, port=0)
    try:
        before = scrape(endpoint.port)
        with RecommenderClient(running.address) as c:
            assert all(c.recommend("u000001", k=5).degraded for _ in range(2))
            with pytest.raises(grpc.RpcError) as error:  # a churn risk from nothing would mislead
                c.user_insights("u000001")
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            item = str(rec.models.items.item_ids[0])
            with pytest.raises(grpc.RpcError) as error:  # the push fails: the call is told to retry
                c.record_events([{"user_id": "u1", "item_id": item, "event_type": "view"},
                                 {"user_id": "u2", "item_id": item, "event_type": "view"}])
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        after = scrape(endpoint.port)
    finally:
        running.stop()
        rec.close()
    assert grew(before, after, "shoprec_degraded_responses_total", rpc="Recommend") == 2
    assert after[("shoprec_online_store_down", frozenset())] == 1
    assert scrape(endpoint.port)[("shoprec_online_store_down", frozenset())] == 0  # closed: its outage is over
    assert grew(before, after, "shoprec_requests_total", rpc="GetUserInsights", code="UNAVAILABLE") == 1
    assert grew(before, after, "shoprec_events_total", result="rejected") == 2  # none of them was stored
    assert grew(before, after, "shoprec_requests_total", rpc="RecordEvents", code="UNAVAILABLE") == 1


def test_calls_the_client_gave_up_on_are_counted(recommender, endpoint, scrape):
    """A call still running on a request thread when its deadline passes: gRPC cancels the
    handler, and the call counts as DEADLINE_EXCEEDED with the time it had taken."""
    import time

    from serving.client import RecommenderClient
    from serving.server import start

    running = start(recommender, port=0, workers=1)
    answer = running._servicer._info
    running._servicer._info = lambda request: (time.sleep(0.5), answer(request))[1]  # a slow call
    try:
        before = scrape(endpoint.port)
        with RecommenderClient(running.address, timeout=0.1) as c:
            with pytest.raises(grpc.RpcError) as error:
                c.info()
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(0.6)  # the handler's thread finishes; its answer has nowhere to go
        after = scrape(endpoint.port)
    finally:
        running.stop()
    assert grew(before, after, "shoprec_requests_total", rpc="GetInfo", code="DEADLINE_EXCEEDED") == 1
    assert grew(before, after, "shoprec_requests_total", rpc="GetInfo", code="OK") == 0
    assert grew(before, after, "shoprec_request_duration_seconds_count", rpc="GetInfo") == 1


def test_a_taken_metrics_port_stops_the_start_and_leaves_nothing_behind(trained_workspace):
    import os
    import socket

    from serving.config import ServingConfig
    from serving.launcher import PortInUse, ServerProcesses
    from serving.metrics import MULTIPROCESS_ENV

    env = {name: os.environ.get(name) for name in MULTIPROCESS_ENV}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        group = ServerProcesses(ServingConfig(port=50999, processes=2, metrics_port=taken.getsockname()[1]),
                                trained_workspace.root)
        with pytest.raises(PortInUse, match="metrics_port .* SHOPREC_SERVE_METRICS_PORT"):
            group.start()
        shared = group.shared_metrics.path
        group.stop()
    assert not group.processes  # it failed before starting any server process
    assert not shared.exists() and {name: os.environ.get(name) for name in MULTIPROCESS_ENV} == env


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_shoprec_serve_exposes_metrics_from_its_environment(trained_workspace, scrape, free_ports):
    """The real command, one process: SHOPREC_SERVE_METRICS_PORT opens /metrics before loading,
    its calls show there, and SIGTERM ends both."""
    import os
    import signal
    import subprocess
    import sys

    from serving.client import RecommenderClient

    port, metrics_port = free_ports(2)
    env = {**os.environ, "SHOPREC_SERVE_METRICS_PORT": str(metrics_port)}
    command = [sys.executable, "-c", "import sys; from shoprec.cli import main; sys.exit(main())",
               "--workspace", str(trained_workspace.root), "serve", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in server.stdout:  # the log, then the line that says it serves
            if line.startswith("shoprec serving on"):
                break
        else:
            pytest.fail(f"shoprec serve exited with {server.wait()} before serving")
        assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in line
        with RecommenderClient(f"127.0.0.1:{port}", timeout=10) as client:
            client.recommend("u000001", k=5)
            client.info()
        counted = scrape(metrics_port)
        assert counted[("shoprec_requests_total", frozenset({"rpc": "Recommend", "code": "OK"}.items()))] == 1
        assert counted[("shoprec_requests_total", frozenset({"rpc": "GetInfo", "code": "OK"}.items()))] == 1
    finally:
        server.send_signal(signal.SIGTERM)
        rest, _ = server.communicate(timeout=60)  # reads the pipe to the end, so the log never blocks it
        assert server.returncode == 0, rest[-2000:]
    with pytest.raises(OSError):  # the endpoint went with the server
        scrape(metrics_port)
