"""The gRPC server: the Recommender service plus standard health checking and reflection.

Request validation and the error → status mapping live here, at the edge: the pipeline raises
named errors, this module turns each into one status code (serving/errors.py) and logs the
traceback of anything unexpected without sending it to the client.

The server is grpc.aio on an event loop of its own thread. With ``workers = 0`` (the default)
Recommend and the other reads run on the loop, one call at a time, and RecordEvents on a thread
of its own, where the calls that queued up during a push share the next one
(``max_event_batch``, serving/batching.py): a push costs ~6 ms on sqlite and would hold up
every other call on the loop. ``max_batch > 1`` moves Recommend to a pipeline thread too, which
answers the calls that queued up while it was busy together. ``workers = N`` runs every request
on N threads instead, for an online store across a network, whose round trips other requests
should fill. Measured on 2 cores (docs/benchmarks.md): with TensorFlow Lite models, Recommend on
the loop serves as many calls per second as the batched pipeline with a shorter tail (p99 at
C = 8, medians: 14.1 against 18.0 ms on 100k items, 15.2 against 18.8 on 1M); with
TensorFlow's 0.25 ms per call, batching had been worth up to +24% QPS. RecordEvents calls that
share a push: 1.8x the calls per second at C = 8.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving import metrics
from serving.batching import Batcher
from serving.errors import InvalidArgument, status_for
from serving.proto import recommender_pb2 as pb
from serving.proto import recommender_pb2_grpc as pb_grpc
from serving.recommender import Recommender, RequestContext

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name


@dataclass(frozen=True)
class Limits:
    """Request limits, each a documented default (docs/api.md)."""

    default_k: int = 10
    max_k: int = 100
    max_id_length: int = 128
    max_list_size: int = 1000


def _check_id(value: str, field: str, limits: Limits, required: bool = True) -> None:
    if required and not value:
        raise InvalidArgument(field, "is required (a non-empty id)")
    if len(value) > limits.max_id_length:
        raise InvalidArgument(field, f"is {len(value)} characters long; the limit is {limits.max_id_length}")


def _check_k(k: int, limits: Limits) -> int:
    if k < 0 or k > limits.max_k:
        raise InvalidArgument("k", f"must be between 1 and {limits.max_k} (0 means {limits.default_k}); got {k}")
    return k or limits.default_k


def _check_ids(values, field: str, limits: Limits) -> tuple[str, ...]:
    if len(values) > limits.max_list_size:
        raise InvalidArgument(field, f"has {len(values)} ids; the limit is {limits.max_list_size}")
    for i, item in enumerate(values):
        _check_id(item, f"{field}[{i}]", limits)
    return tuple(values)


def validate_recommend(req: pb.RecommendRequest, limits: Limits) -> tuple[int, RequestContext]:
    """Check every field; returns the effective k and the request context."""
    _check_id(req.user_id, "user_id", limits)
    k = _check_k(req.k, limits)
    c = req.context
    if c.surface not in ("", "home", "product", "cart"):
        raise InvalidArgument("context.surface", f"must be one of home, product, cart; got {c.surface!r}")
    _check_id(c.category, "context.category", limits, required=False)
    _check_id(c.viewed_item_id, "context.viewed_item_id", limits, required=False)
    if not (c.max_price >= 0 and math.isfinite(c.max_price)):
        raise InvalidArgument("context.max_price", f"must be a finite price >= 0 (0: no limit); got {c.max_price}")
    return k, RequestContext(
        surface=c.surface, exclude=_check_ids(c.exclude_item_ids, "context.exclude_item_ids", limits),
        category=c.category, cart=_check_ids(c.cart_item_ids, "context.cart_item_ids", limits),
        viewed=c.viewed_item_id, session=_check_ids(c.session_item_ids, "context.session_item_ids", limits),
        max_price=c.max_price)


class AnswerTimes:
    """How long this process has lately taken to answer each RPC, and whether a call's remaining
    time is too short for it. Under overload gRPC hands calls over oldest first, so without this
    a process spends itself on calls about to expire and answers few in time (docs/benchmarks.md,
    thirty-fifth session); refused at once, they leave the time to calls that can still be
    answered.

    The estimate is a moving average over about the last 20 answers (``WEIGHT``), from 0, so a
    slow first call counts as one of 20. A call with less than ``MARGIN`` times it left is too
    short (an answer often takes twice the average: a user-cache miss, a busy core). Each such
    refusal shrinks the estimate a little (``DECAY``), so that a wrong one (a stall) cannot refuse
    a tight but sufficient deadline for good."""

    WEIGHT, MARGIN, DECAY = 0.05, 2.0, 0.995

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def answered(self, rpc: str, took: float) -> None:
        typical = self.seconds.get(rpc, 0.0)
        self.seconds[rpc] = typical + self.WEIGHT * (took - typical)

    def check(self, rpc: str, remaining: float | None) -> None:
        """Raise TimeoutError if a call with ``remaining`` seconds left (None: no deadline)
        cannot be answered in time."""
        if remaining is None:
            return
        if remaining <= 0:
            metrics.record_shed(rpc)
            raise TimeoutError("the call's deadline passed before the server started on it; raise the "
                               "client timeout or reduce the load")
        typical = self.seconds.get(rpc, 0.0)
        if remaining < self.MARGIN * typical:
            self.seconds[rpc] = typical * self.DECAY
            metrics.record_shed(rpc)
            raise TimeoutError(f"the call's deadline left {remaining * 1000:.1f} ms when the server started on it, "
                               f"too little for a {rpc} here (this process takes {typical * 1000:.1f} ms on average "
                               f"lately); raise the client timeout or reduce the load")


class RecommenderServicer(pb_grpc.RecommenderServicer):
    """The shoprec.v1 service: each RPC is a plain function of the request (``_recommend``, ...)
    that ``_serve`` runs (on the loop, or on a worker thread) and whose errors it maps."""

    def __init__(self, recommender: Recommender, limits: Limits, workers: int, max_batch: int,
                 max_event_batch: int, process: tuple[int, int]):
        # No defaults here: start() is the one constructor and holds them (and documents them).
        self.recommender = recommender
        self.limits = limits
        self.process = process  # (this process's number, processes on the port): GetInfo tells clients
        self._pool = futures.ThreadPoolExecutor(workers, thread_name_prefix="shoprec-rpc") if workers else None
        # Calls that queue up are answered together on a thread of their own (serving/batching.py).
        # RecordEvents always: a push costs about the same for one call as for several, and on
        # the loop it would hold up every other call. Recommend only with max_batch > 1: with
        # TensorFlow Lite models the batch saves less than the hand-off to the thread costs.
        loop_server = self._pool is None  # workers = 0
        self.recommend_batcher = (Batcher(self._recommend_batch, max_batch)
                                  if loop_server and max_batch > 1 else None)
        self.events_batcher = (Batcher(self._record_events_batch, max_event_batch, name="shoprec-events")
                               if loop_server else None)
        self.answer_times = AnswerTimes()  # calls whose deadline leaves too little are refused
        try:  # the first RecordEvents call would otherwise read the registry (~50 ms)
            from feature_repo.realtime import prepare as prepare_events

            prepare_events(recommender.store)
        except Exception:  # noqa: BLE001 - serving goes on; the first push reports the problem
            log.exception("RecordEvents could not be prepared; the first call will try again")

    async def _serve(self, rpc: str, work, request, context: grpc.aio.ServicerContext):
        started = time.perf_counter()
        try:
            self.answer_times.check(rpc, context.time_remaining())
            if isinstance(work, Batcher):
                response = await work.submit(request)
            elif self._pool is None:
                response = work(request)
            else:
                response = await asyncio.get_running_loop().run_in_executor(self._pool, work, request)
        except asyncio.CancelledError:  # the client gave up or its deadline passed while we waited
            remaining = context.time_remaining()
            gone = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            metrics.record_call(rpc, gone, time.perf_counter() - started)
            raise
        except Exception as e:  # noqa: BLE001 - every error goes through the one status table
            code, message = status_for(e)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("unexpected error while serving a request")
        else:
            took = time.perf_counter() - started
            self.answer_times.answered(rpc, took)
            metrics.record_call(rpc, "OK", took, getattr(response, "degraded", False))
            return response
        metrics.record_call(rpc, code.name, time.perf_counter() - started)
        await context.abort(code, message)

    @staticmethod
    def _respond(result) -> pb.RecommendResponse:
        v = result.versions
        response = pb.RecommendResponse(
            user_id=result.user_id, personalized=result.personalized, degraded=result.degraded,
            retrieval_version=v.get("retrieval", ""), index_version=v.get("index", ""),
            ranking_version=v.get("ranking", ""))
        # Field by field on added items: half the CPU of RecommendedItem(**fields) per item
        # (20 us against 38 for a page of 20, docs/benchmarks.md, twenty-fifth session).
        add = response.items.add
        for r in result.items:
            item = add()
            item.item_id, item.score, item.retrieval_score = r.item_id, r.score, r.retrieval_score
            item.source, item.reason, item.category, item.brand = r.source, r.reason, r.category, r.brand
            item.price = r.price
            item.click_probability, item.cart_probability, item.purchase_probability = r.heads
        return response

    async def Recommend(self, request: pb.RecommendRequest, context) -> pb.RecommendResponse:
        return await self._serve("Recommend", self.recommend_batcher or self._recommend, request, context)

    def _recommend(self, request: pb.RecommendRequest) -> pb.RecommendResponse:
        return _alone(self._recommend_batch, request)

    def _recommend_batch(self, requests: list[pb.RecommendRequest]) -> list[pb.RecommendResponse | Exception]:
        """Several Recommend calls at once: each validated alone, the valid ones answered together."""

        def check(request: pb.RecommendRequest) -> tuple[str, int, RequestContext]:
            k, ctx = validate_recommend(request, self.limits)
            return request.user_id, k, ctx

        return _answer_valid(requests, check, self.recommender.recommend_many, self._respond)

    async def SimilarItems(self, request: pb.SimilarItemsRequest, context) -> pb.RecommendResponse:
        return await self._serve("SimilarItems", self._similar_items, request, context)

    def _similar_items(self, request: pb.SimilarItemsRequest) -> pb.RecommendResponse:
        _check_id(request.item_id, "item_id", self.limits)
        k = _check_k(request.k, self.limits)
        exclude = _check_ids(request.exclude_item_ids, "exclude_item_ids", self.limits)
        return self._respond(self.recommender.similar_items(request.item_id, k, exclude, request.same_category))

    async def CartRecommendations(self, request: pb.CartRequest, context) -> pb.RecommendResponse:
        return await self._serve("CartRecommendations", self._cart, request, context)

    def _cart(self, request: pb.CartRequest) -> pb.RecommendResponse:
        if not request.item_ids:
            raise InvalidArgument("item_ids", "is empty; send the cart's item ids (at least one)")
        items = _check_ids(request.item_ids, "item_ids", self.limits)
        _check_id(request.user_id, "user_id", self.limits, required=False)
        k = _check_k(request.k, self.limits)
        return self._respond(self.recommender.cart(list(items), k, request.user_id))

    async def GetUserInsights(self, request: pb.UserInsightsRequest, context) -> pb.UserInsightsResponse:
        return await self._serve("GetUserInsights", self._insights, request, context)

    def _insights(self, request: pb.UserInsightsRequest) -> pb.UserInsightsResponse:
        _check_id(request.user_id, "user_id", self.limits)
        out = self.recommender.insights(request.user_id)
        return pb.UserInsightsResponse(
            user_id=request.user_id, churn_risk=out["churn_risk"], horizon_days=out["horizon_days"],
            drivers=[pb.Driver(feature=f, value=float(v), contribution=float(c), description=d)
                     for f, v, c, d in out["drivers"]],
            segment=out["segment"], churn_version=out["version"])

    async def RecordEvents(self, request: pb.RecordEventsRequest, context) -> pb.RecordEventsResponse:
        return await self._serve("RecordEvents", self.events_batcher or self._record_events, request, context)

    def _record_events(self, request: pb.RecordEventsRequest) -> pb.RecordEventsResponse:
        return _alone(self._record_events_batch, request)

    def _record_events_batch(self, requests: list[pb.RecordEventsRequest]) -> list[pb.RecordEventsResponse | Exception]:
        """Several RecordEvents calls: each checked on its own, their events pushed together."""
        from serving.events import record_event_calls

        def check(request: pb.RecordEventsRequest):
            if len(request.events) > self.limits.max_list_size:
                raise InvalidArgument("events", f"has {len(request.events)} events; the limit is "
                                                f"{self.limits.max_list_size} per call")
            return request.events

        def record(calls: list) -> list:
            answers = record_event_calls(self.recommender.store, calls, self.recommender.models.items.position,
                                         self.limits.max_id_length)
            for events, answer in zip(calls, answers):  # a failed push stored none of the call's events
                accepted = 0 if isinstance(answer, Exception) else sum(r.accepted for r in answer)
                metrics.record_events(accepted, len(events) - accepted)
            return answers

        def respond(results) -> pb.RecordEventsResponse:
            return pb.RecordEventsResponse(
                results=[pb.EventResult(index=r.index, accepted=r.accepted, error=r.error) for r in results],
                accepted=sum(r.accepted for r in results))

        return _answer_valid(requests, check, record, respond)

    async def GetInfo(self, request: pb.GetInfoRequest, context) -> pb.GetInfoResponse:
        return await self._serve("GetInfo", self._info, request, context)

    def _info(self, request: pb.GetInfoRequest) -> pb.GetInfoResponse:
        m = self.recommender.models
        return pb.GetInfoResponse(retrieval_version=m.versions["retrieval"], index_version=m.versions["index"],
                                  ranking_version=m.versions["ranking"], items=len(m.items),
                                  process=self.process[0], processes=self.process[1])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        for rpc, b in (("Recommend", self.recommend_batcher), ("RecordEvents", self.events_batcher)):
            if b is None:
                continue
            if b.batches:
                t = b.timings()  # empty if the server stops during its first batch
                times = (f"; a call waited for its batch p50 {t['wait_p50_ms']} ms, p99 {t['wait_p99_ms']} ms; "
                         f"a batch ran p50 {t['run_p50_ms']} ms, p99 {t['run_p99_ms']} ms") if len(t) == 4 else ""
                log.info("%s: %d calls answered in %d batches (%.2f a batch)%s", rpc, b.calls, b.batches,
                         b.calls / b.batches, times)
            b.close()
        users = self.recommender.retrieval_cache
        if users.hits + users.misses:
            log.info("user cache: %d of %d lookups answered (%.0f%%) since the last reload", users.hits,
                     users.hits + users.misses, 100 * users.hits / (users.hits + users.misses))


def _answer_valid(requests: list, check, answer_all, respond) -> list:
    """A batch's answers: ``check(request)`` validates one request (raising InvalidArgument) and
    returns what ``answer_all`` takes; ``answer_all`` answers the valid ones together, each with
    a result or an exception; ``respond`` turns a result into the response message."""
    out: list = [None] * len(requests)
    valid = []
    for i, request in enumerate(requests):
        try:
            valid.append((i, check(request)))
        except InvalidArgument as e:
            out[i] = e
    for (i, _), answer in zip(valid, answer_all([call for _, call in valid])):
        out[i] = answer if isinstance(answer, Exception) else respond(answer)
    return out


def _alone(answer_batch, request):
    """One call through its RPC's batch function (threads, or Recommend with ``max_batch = 1``)."""
    answer = answer_batch([request])[0]
    if isinstance(answer, Exception):
        raise answer
    return answer


HELPER_THREADS = ("batch", "normal")


def batch_scheduling(keep: set[int]) -> int:
    """Put every thread of this process whose native id is not in ``keep`` and that runs under
    the normal policy into SCHED_BATCH (Linux); returns how many changed. Threads they start
    later inherit it.

    Why: gRPC's completion-queue poller (native code, without the GIL) wakes for each of the ~4
    completion events of a call and writes a byte to a socketpair that wakes the event loop;
    its event-engine threads wake for every read and write. Under the normal policy each
    wake-up may preempt the thread answering requests on its core (~6-7 involuntary switches
    per Recommend under load). SCHED_BATCH threads do not preempt on wake-up; they run when a
    core is free or at the next regular switch. Measured on 2 cores under load, on
    100k items: 4-8% more Recommend calls per second and 5-8% less server CPU a call; on 1M
    items mixed; p99 no better, with more stalls (docs/benchmarks.md, twenty-sixth session).
    Hence an option (``helper_threads = "batch"``), not the default.
    """
    if not hasattr(os, "SCHED_BATCH") or not os.path.isdir("/proc/self/task"):
        return 0
    changed = 0
    for entry in os.listdir("/proc/self/task"):
        tid = int(entry)
        if tid in keep:
            continue
        try:
            if os.sched_getscheduler(tid) == os.SCHED_OTHER:  # never demote a real-time thread
                os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
                changed += 1
        except OSError:  # the thread ended meanwhile
            continue
    return changed


_loop_lock = threading.Lock()
_server_loop: asyncio.AbstractEventLoop | None = None


def _event_loop() -> asyncio.AbstractEventLoop:
    """The event loop the servers of this process run on, in a daemon thread of its own (one
    loop per process: grpc.aio objects belong to the loop that made them)."""
    global _server_loop
    with _loop_lock:
        if _server_loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="shoprec-grpc", daemon=True).start()
            _server_loop = loop
        return _server_loop


class RunningServer:
    """A started server and the port it listens on; ``stop()`` drains in-flight calls."""

    def __init__(self, server: grpc.aio.Server, port: int, health_servicer: health.aio.HealthServicer,
                 servicer: RecommenderServicer, loop: asyncio.AbstractEventLoop):
        self.server, self.port, self.health = server, port, health_servicer
        self._servicer, self._loop = servicer, loop
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 2.0) -> None:
        if self._stopped.is_set():
            return

        async def drain() -> None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace)

        asyncio.run_coroutine_threadsafe(drain(), self._loop).result()
        self._servicer.close()
        self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()


def start(recommender: Recommender, host: str = "127.0.0.1", port: int = 50051, workers: int = 0,
          limits: Limits = Limits(), reuse_port: bool = False, max_batch: int = 1,
          max_event_batch: int = 8, process: tuple[int, int] = (1, 1), helper_threads: str = "normal",
          credentials: grpc.ServerCredentials | None = None) -> RunningServer:
    """Start serving on host:port (port 0 picks a free one) and mark the service SERVING.

    ``credentials``: TLS (serving/tls.py ``server_credentials``); None serves plaintext.
    ``workers``: 0 runs requests on the server's event loop, N on N threads (module docstring).
    ``max_batch``: with ``workers = 0``, 1 answers Recommend calls one at a time on the loop;
    N > 1 answers up to N that queued up together on a thread of their own (serving/batching.py).
    ``max_event_batch``: with ``workers = 0``, up to this many RecordEvents calls that queued
    up share one push, on a thread of their own.
    ``reuse_port``: let several server processes listen on the same port (SO_REUSEPORT; the
    kernel spreads connections over them), which is how one machine's cores are all used.
    ``process``: (this process's number, the processes on the port), reported by GetInfo so
    that a client can spread its calls over the processes (serving/client.py).
    ``helper_threads``: "normal" leaves the scheduling alone; "batch" runs every thread of the
    process but the main thread and the event loop's (gRPC's poller and event-engine threads,
    RecordEvents' push thread, the model watcher) under SCHED_BATCH, so that their wake-ups do
    not preempt the thread answering requests (``batch_scheduling``).
    """
    if helper_threads not in HELPER_THREADS:
        raise ValueError(f"helper_threads must be one of {HELPER_THREADS}; got {helper_threads!r}")
    servicer = RecommenderServicer(recommender, limits, workers, max_batch, max_event_batch, process)

    async def begin() -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
        pb_grpc.add_RecommenderServicer_to_server(servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        try:
            bound = (server.add_insecure_port(f"{host}:{port}") if credentials is None
                     else server.add_secure_port(f"{host}:{port}", credentials))
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise OSError(f"cannot listen on {host}:{port} (in use?); pick another port with --port")
        await server.start()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        if helper_threads == "batch":  # here, on the loop: gRPC's threads exist once the server has started
            batch_scheduling({threading.get_native_id(), threading.main_thread().native_id})
        return server, bound, health_servicer

    loop = _event_loop()
    server, bound, health_servicer = asyncio.run_coroutine_threadsafe(begin(), loop).result()
    log.info("serving %s on %s:%d", SERVICE_NAME, host, bound)
    return RunningServer(server, bound, health_servicer, servicer, loop)
