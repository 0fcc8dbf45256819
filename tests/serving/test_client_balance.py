"""The balancing client: which route a call takes, which connections it keeps, a one-process server.
(Against two real server processes: tests/serving/test_config.py.)"""
from __future__ import annotations

import pytest

from serving.client import LeastBusy, ProcessFinder
from serving.proto import recommender_pb2 as pb


def test_the_route_with_fewest_calls_in_flight_is_taken():
    routes = LeastBusy(2)
    first, second = routes.take(), routes.take()
    assert {first, second} == {0, 1}  # one call each before either gets a second
    routes.done(first)
    assert routes.take() == first  # the other still has its call in flight
    assert routes.in_flight == [1, 1] and routes.calls[first] == 2


def test_ties_go_in_turn():
    routes = LeastBusy(3)
    order = []
    for _ in range(6):
        route = routes.take()
        order.append(route)
        routes.done(route)  # sequential calls: always a tie
    assert order == [0, 1, 2, 0, 1, 2]


def test_least_busy_needs_a_route():
    with pytest.raises(ValueError, match="at least one route"):
        LeastBusy(0)


def test_one_connection_is_kept_per_process():
    finder = ProcessFinder()
    answers = [(2, "a"), (2, "b"), (1, "c"), (1, "d")]
    kept = [finder.offer(pb.GetInfoResponse(process=p, processes=2), ch) for p, ch in answers]
    assert kept == [True, False, True, False]
    assert finder.seen == {2: "a", 1: "c"}


def test_a_single_process_server_gets_one_route(grpc_server):
    from serving.client import RecommenderClient

    with RecommenderClient(grpc_server.address, timeout=10, balance=True) as client:
        assert len(client.channels) == 1
        assert client.info().processes == 1
        assert client.routes.calls == [1]
        channels = client.channels
        assert client.rebalance() is False and client.channels is channels  # nothing to mend


def test_a_balancing_client_says_when_the_server_is_down():
    import grpc

    from serving.client import RecommenderClient

    with pytest.raises(grpc.RpcError) as err:
        RecommenderClient("127.0.0.1:1", timeout=2, balance=True)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
