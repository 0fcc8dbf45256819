"""A small Python client for the shoprec.v1 API (what a shop backend or `shoprec query` uses).

With ``balance=True`` the client spreads its calls over the server's processes itself. Several
processes share the port (SO_REUSEPORT) and the kernel gives each new *connection* to one of
them, where it stays: a client with a few connections can keep one process busy while another
idles (measured: p99 twice as high when 8 connections split 6 + 2). A balancing client opens
connections until GetInfo has named each process once, keeps one per process, and sends every
call to the process with the fewest of its calls in flight (docs/benchmarks.md: at 8 calls in
flight on the default preset, p99 12.4-13.9 ms against 14.9-19.3 ms in the same run).
It also holds back calls beyond ``max_in_flight_per_process`` (2 by default) per process: they
wait in the client and go to whichever process frees up first (``LeastBusy``), instead of
queueing behind a process that has paused (docs/benchmarks.md, twenty-third session: p99
0.75-0.98x of the uncapped client's in 20 of 20 server starts, 100k and 1M items, at 0.93-1.07x
its QPS).

``credentials`` (``serving.tls.channel_credentials``) connects to a server whose port speaks TLS.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.proto import recommender_pb2 as pb
from serving.proto import recommender_pb2_grpc as pb_grpc
from serving.tls import open_channel


log = logging.getLogger(__name__)
# A channel of its own TCP connection: without it, channels to one address share a connection.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
# Two, not one: with one, a process idles while its answer travels back (15-25% less QPS).
DEFAULT_MAX_IN_FLIGHT_PER_PROCESS = 2
TRIES_PER_PROCESS = 8  # new connections tried per server process: all found unless 1 in ~10^3 (4 processes)


class LeastBusy:
    """Which of n routes the next call takes: the one with the fewest calls in flight, ties in
    turn. Thread-safe; ``take()`` a route, ``done(route)`` when its call has ended.

    ``cap`` > 0: at most this many calls in flight per route. A call that finds every route full
    waits in the client, first come first served, and the first route to free up is handed to
    it (``acquire`` for threads, ``take_or_queue`` for callbacks). Waiting in the client instead
    of in one process's queue lets a call go to whichever process finishes first: measured in
    docs/benchmarks.md, at 8 calls in flight over 2 processes a cap of 2 cut p99 without losing
    throughput."""

    def __init__(self, n: int, cap: int = 0):
        if n < 1:
            raise ValueError(f"LeastBusy needs at least one route; got {n}")
        if cap < 0:
            raise ValueError(f"LeastBusy cap must be 0 (none) or a positive number of calls per route; got {cap}")
        self.in_flight = [0] * n
        self.calls = [0] * n  # calls sent per route (for tests and logs)
        self.cap = cap
        self.waited = 0  # calls that had to wait for a route (for tests and logs)
        self.peak = 0  # most calls ever in flight on one route
        self._waiting: collections.deque = collections.deque()  # hand(route) callbacks, oldest first
        self._next = 0
        self._lock = threading.Lock()

    def _take(self) -> int:
        n = len(self.in_flight)
        best = min(range(self._next, self._next + n), key=lambda j: self.in_flight[j % n]) % n
        self._next = (best + 1) % n
        self.in_flight[best] += 1
        self.calls[best] += 1
        self.peak = max(self.peak, self.in_flight[best])
        return best

    def take(self) -> int:
        """A route now, whatever the cap (for callers that do not wait)."""
        with self._lock:
            return self._take()

    def take_or_queue(self, hand) -> int | None:
        """A route now, or None and ``hand(route)`` is called (from ``done``) when one frees up.
        Queued callers are served in order, and a new call never overtakes them."""
        with self._lock:
            if self.cap and (self._waiting or min(self.in_flight) >= self.cap):
                self.waited += 1
                self._waiting.append(hand)
                return None
            return self._take()

    def withdraw(self, hand) -> bool:
        """Take ``hand`` out of the queue; False if a route was already handed to it (or is
        being handed: then the caller owns that route and must ``done`` it)."""
        with self._lock:
            try:
                self._waiting.remove(hand)
                return True
            except ValueError:
                return False

    def acquire(self, timeout: float) -> int:
        """A route, waiting up to ``timeout`` seconds for one to free up; ``WaitedTooLong`` if none did."""
        handed: list[int] = []
        ready = threading.Event()

        def hand(route: int) -> None:
            handed.append(route)
            ready.set()

        route = self.take_or_queue(hand)
        if route is not None:
            return route
        if not ready.wait(timeout) and self.withdraw(hand):
            raise WaitedTooLong(timeout, len(self.in_flight), self.cap)
        ready.wait()  # handed (or being handed) at the deadline: it is ours
        return handed[0]

    def done(self, route: int) -> None:
        with self._lock:
            self.in_flight[route] -= 1
            if not self._waiting:
                return
            hand, route = self._waiting.popleft(), self._take()
        hand(route)


class WaitedTooLong(grpc.RpcError):
    """No server process had room for the call within its deadline (``cap`` calls in flight on
    each the whole time). An ``RpcError`` with DEADLINE_EXCEEDED, as if the server had been slow."""

    def __init__(self, timeout: float, processes: int, cap: int):
        super().__init__(f"waited {timeout:.3g} s in the client for a server process with fewer than {cap} calls "
                         f"in flight (all {processes} stayed full); raise max_in_flight_per_process or the timeout, "
                         f"or add server processes")
        self._details = str(self)

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return self._details


class ProcessFinder:
    """One connection per server process, from connections opened one at a time and asked
    GetInfo: ``while finder.wanted(): ... if not finder.offer(info, channel): close it``.

    A server that does not report its processes (processes = 0) counts as one process; after
    ``TRIES_PER_PROCESS`` connections per process it stops, and the ones found serve."""

    def __init__(self):
        self.seen: dict[int, object] = {}
        self.processes, self.tries = 1, 0

    def wanted(self) -> bool:
        return len(self.seen) < self.processes and self.tries < TRIES_PER_PROCESS * self.processes

    def offer(self, info: pb.GetInfoResponse, channel) -> bool:
        """Keep ``channel`` if it reached a process not seen yet; False: the caller closes it."""
        self.tries += 1
        self.processes = max(info.processes, 1)
        if info.process in self.seen:
            return False
        self.seen[info.process] = channel
        return True

    def found(self) -> list:
        return [self.seen[p] for p in sorted(self.seen)]


def connect_per_process(address: str, timeout: float = 5.0,
                        credentials: grpc.ChannelCredentials | None = None) -> list[grpc.Channel]:
    """One channel (TCP connection) to each server process behind ``address`` (ProcessFinder)."""
    finder = ProcessFinder()
    while finder.wanted():
        channel = open_channel(address, credentials, OWN_CONNECTION)
        try:
            info = pb_grpc.RecommenderStub(channel).GetInfo(pb.GetInfoRequest(), timeout=timeout)
        except grpc.RpcError:
            channel.close()
            raise
        if not finder.offer(info, channel):
            channel.close()
    if len(finder.seen) < finder.processes:
        log.warning("%s: reached %d of its %d server processes in %d connections; balancing over those",
                    address, len(finder.seen), finder.processes, finder.tries)
    return finder.found()


@dataclass(frozen=True)
class _Connections:
    """The client's channels, their stubs and the routes over them: replaced as one."""

    channels: list[grpc.Channel]
    stubs: list[pb_grpc.RecommenderStub]
    routes: LeastBusy

    @classmethod
    def over(cls, channels: list[grpc.Channel], cap: int = 0) -> "_Connections":
        return cls(channels, [pb_grpc.RecommenderStub(c) for c in channels], LeastBusy(len(channels), cap))

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


class RecommenderClient:
    """Blocking client; ``timeout`` (seconds) is the deadline of each call.

    ``balance``: connect to each server process now and send each call to the least busy one
    (module docstring); without it, one lazily opened channel, as for any gRPC server. A
    balancing client checks every ``recheck_seconds`` (after a call) that its connections still
    reach different processes: a connection that reconnected, e.g. after a server restart, may
    have landed on another one, and then the client connects anew.

    ``max_in_flight_per_process`` (with ``balance``; default ``DEFAULT_MAX_IN_FLIGHT_PER_PROCESS``,
    0 = no cap): at most this many of the client's calls in flight on each process; the others
    wait in the client, first come first served, within their deadline (``LeastBusy``). The cap
    is per client: several backends each with a client can together send a process more. A
    server with ``max_batch`` > 1 batches only what it is sent: raise the cap to the batch size.

    ``credentials``: TLS (``serving.tls.channel_credentials``); None connects in plaintext.
    """

    def __init__(self, address: str, timeout: float = 5.0, balance: bool = False, recheck_seconds: float = 30.0,
                 max_in_flight_per_process: int | None = None, credentials: grpc.ChannelCredentials | None = None):
        if max_in_flight_per_process and not balance:
            raise ValueError("max_in_flight_per_process needs balance=True (the cap is per server process, and "
                             "only a balancing client knows the processes)")
        if max_in_flight_per_process is None:
            max_in_flight_per_process = DEFAULT_MAX_IN_FLIGHT_PER_PROCESS if balance else 0
        self.address, self.timeout, self.balance = address, timeout, balance
        self.recheck_seconds, self.credentials = recheck_seconds, credentials
        self._conns = _Connections.over(connect_per_process(address, timeout, credentials) if balance
                                        else [open_channel(address, credentials)], max_in_flight_per_process)
        self._next_check = time.monotonic() + recheck_seconds
        self._checking = threading.Lock()

    @property
    def channels(self) -> list[grpc.Channel]:
        return self._conns.channels

    @property
    def channel(self) -> grpc.Channel:
        return self._conns.channels[0]

    @property
    def stub(self) -> pb_grpc.RecommenderStub:
        return self._conns.stubs[0]

    @property
    def routes(self) -> LeastBusy:
        return self._conns.routes

    def _call(self, method: str, request):
        conns = self._conns
        deadline = time.monotonic() + self.timeout
        route = conns.routes.acquire(self.timeout)
        try:
            left = deadline - time.monotonic()
            if left <= 0:  # handed a process just as the deadline passed
                raise WaitedTooLong(self.timeout, len(conns.channels), conns.routes.cap)
            return getattr(conns.stubs[route], method)(request, timeout=left)
        finally:
            conns.routes.done(route)
            if self.balance and time.monotonic() >= self._next_check:
                self.rebalance()

    def rebalance(self) -> bool:
        """Connect anew if the connections no longer reach every server process once each;
        True if it did. One thread checks at a time (the others go on with their calls); a
        server that cannot be reached now is left to the calls to report, and checked later."""
        if not self._checking.acquire(blocking=False):
            return False
        try:
            self._next_check = time.monotonic() + self.recheck_seconds
            old = self._conns
            try:
                infos = [stub.GetInfo(pb.GetInfoRequest(), timeout=self.timeout) for stub in old.stubs]
                if len({i.process for i in infos}) == len(infos) == max(infos[0].processes, 1):
                    return False
                self._conns = _Connections.over(connect_per_process(self.address, self.timeout, self.credentials),
                                                old.routes.cap)
            except grpc.RpcError as e:
                log.warning("%s: could not check the connections to its server processes (%s); "
                            "checking again in %.0f s", self.address, e.code().name, self.recheck_seconds)
                return False
            log.info("%s: connections reached processes %s; connected anew to %d processes", self.address,
                     [i.process for i in infos], len(self._conns.channels))
            # Calls still in flight on the old channels end within their deadline: close after it.
            closer = threading.Timer(self.timeout + 1.0, old.close)
            closer.daemon = True
            closer.start()
            return True
        finally:
            self._checking.release()

    def recommend(self, user_id: str, k: int = 10, exclude: list[str] | None = None, category: str = "",
                  surface: str = "", cart: list[str] | None = None, viewed: str = "",
                  session: list[str] | None = None, max_price: float = 0.0) -> pb.RecommendResponse:
        """Top-k for a user; the keyword arguments are the request context (see docs/api.md)."""
        request = pb.RecommendRequest(user_id=user_id, k=k, context=pb.Context(
            surface=surface, exclude_item_ids=exclude or [], category=category, cart_item_ids=cart or [],
            viewed_item_id=viewed, session_item_ids=session or [], max_price=max_price))
        return self._call("Recommend", request)

    def similar_items(self, item_id: str, k: int = 10, exclude: list[str] | None = None,
                      same_category: bool = False) -> pb.RecommendResponse:
        return self._call("SimilarItems", pb.SimilarItemsRequest(item_id=item_id, k=k, exclude_item_ids=exclude or [],
                                                                 same_category=same_category))

    def cart_recommendations(self, item_ids: list[str], k: int = 10, user_id: str = "") -> pb.RecommendResponse:
        return self._call("CartRecommendations", pb.CartRequest(item_ids=item_ids, k=k, user_id=user_id))

    def user_insights(self, user_id: str) -> pb.UserInsightsResponse:
        return self._call("GetUserInsights", pb.UserInsightsRequest(user_id=user_id))

    def record_events(self, events: list[dict]) -> pb.RecordEventsResponse:
        """``events``: dicts with user_id, item_id, event_type and optional timestamp, price."""
        return self._call("RecordEvents", pb.RecordEventsRequest(events=[pb.Event(**e) for e in events]))

    def info(self) -> pb.GetInfoResponse:
        return self._call("GetInfo", pb.GetInfoRequest())

    def healthy(self, service: str = "") -> bool:
        response = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                                  timeout=self.timeout)
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def close(self) -> None:
        self._conns.close()

    def __enter__(self) -> "RecommenderClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
