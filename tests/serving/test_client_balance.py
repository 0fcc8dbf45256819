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
        assert client.routes.cap == 2  # the default cap of a balancing client
        channels = client.channels
        assert client.rebalance() is False and client.channels is channels  # nothing to mend


def test_a_balancing_client_says_when_the_server_is_down():
    import grpc

    from serving.client import RecommenderClient

    with pytest.raises(grpc.RpcError) as err:
        RecommenderClient("127.0.0.1:1", timeout=2, balance=True)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_capped_route_set_queues_the_call_and_hands_it_the_first_route_freed():
    routes = LeastBusy(2, cap=2)
    taken = [routes.take_or_queue(lambda r: None) for _ in range(4)]
    assert sorted(taken) == [0, 0, 1, 1]
    handed: list[int] = []
    assert routes.take_or_queue(handed.append) is None  # both full: it waits
    routes.done(1)
    assert handed == [1] and routes.in_flight == [2, 2]  # route 1 went straight to the waiting call
    assert routes.peak == 2 and routes.waited == 1


def test_waiting_calls_are_served_first_come_first_served_and_none_overtakes_them():
    routes = LeastBusy(1, cap=1)
    assert routes.take_or_queue(lambda r: None) == 0
    served: list[str] = []
    for name in "abc":
        assert routes.take_or_queue(lambda r, name=name: served.append(name)) is None
    routes.done(0)
    assert routes.take_or_queue(lambda r: served.append("late")) is None  # queues behind b and c
    for _ in range(3):
        routes.done(0)
    assert served == ["a", "b", "c", "late"]


def test_threads_waiting_for_a_capped_route_all_get_one_and_the_cap_holds():
    import threading
    import time

    routes = LeastBusy(2, cap=1)
    finished: list[int] = []

    def call(n: int) -> None:
        route = routes.acquire(timeout=10)
        time.sleep(0.002)  # the call in flight
        routes.done(route)
        finished.append(n)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(finished) == 40 and routes.peak == 1 and routes.in_flight == [0, 0]
    assert routes.waited > 0 and sum(routes.calls) == 40


def test_a_call_that_waits_past_its_deadline_fails_as_deadline_exceeded_and_leaves_the_queue():
    import grpc

    from serving.client import WaitedTooLong

    routes = LeastBusy(1, cap=1)
    route = routes.acquire(timeout=1)
    with pytest.raises(WaitedTooLong) as err:
        routes.acquire(timeout=0.05)
    assert isinstance(err.value, grpc.RpcError) and err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "max_in_flight_per_process" in err.value.details()
    routes.done(route)
    assert routes.in_flight == [0]  # the expired call did not take the freed route
    assert routes.acquire(timeout=0.05) == 0


def test_a_cap_is_for_balancing_clients_only():
    from serving.client import RecommenderClient

    with pytest.raises(ValueError, match="balance=True"):
        RecommenderClient("127.0.0.1:1", max_in_flight_per_process=2)
    with RecommenderClient("127.0.0.1:1") as plain:  # lazy channel: no server needed
        assert plain.routes.cap == 0  # one channel, nothing to cap
    with pytest.raises(ValueError, match="cap must be"):
        LeastBusy(2, cap=-1)
