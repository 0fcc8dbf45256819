"""The gRPC server: the Recommender service plus standard health checking and reflection.

Request validation and the error → status mapping live here, at the edge: the pipeline raises
named errors, this module turns each into one status code (serving/errors.py) and logs the
traceback of anything unexpected without sending it to the client.
"""
from __future__ import annotations

import logging
import math
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

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


class RecommenderServicer(pb_grpc.RecommenderServicer):
    def __init__(self, recommender: Recommender, limits: Limits = Limits()):
        self.recommender = recommender
        self.limits = limits

    def _fail(self, context: grpc.ServicerContext, error: Exception) -> None:
        code, message = status_for(error)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("unexpected error while serving a request")
        context.abort(code, message)

    @staticmethod
    def _check_deadline(context: grpc.ServicerContext) -> None:
        """A call whose deadline has already passed is not worth computing (the client gave up)."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise TimeoutError("the call's deadline passed before the server started on it; raise the "
                               "client timeout or reduce the load")

    def _respond(self, result) -> pb.RecommendResponse:
        v = result.versions
        return pb.RecommendResponse(
            user_id=result.user_id, personalized=result.personalized, degraded=result.degraded,
            retrieval_version=v.get("retrieval", ""), index_version=v.get("index", ""),
            ranking_version=v.get("ranking", ""),
            items=[pb.RecommendedItem(item_id=r.item_id, score=r.score, retrieval_score=r.retrieval_score,
                                      source=r.source, reason=r.reason, category=r.category, brand=r.brand,
                                      price=r.price, click_probability=r.heads[0], cart_probability=r.heads[1],
                                      purchase_probability=r.heads[2]) for r in result.items],
        )

    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        try:
            self._check_deadline(context)
            k, ctx = validate_recommend(request, self.limits)
            return self._respond(self.recommender.recommend(request.user_id, k, ctx))
        except Exception as e:  # noqa: BLE001 - every error goes through the one status table
            self._fail(context, e)

    def SimilarItems(self, request: pb.SimilarItemsRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        try:
            self._check_deadline(context)
            _check_id(request.item_id, "item_id", self.limits)
            k = _check_k(request.k, self.limits)
            exclude = _check_ids(request.exclude_item_ids, "exclude_item_ids", self.limits)
            return self._respond(self.recommender.similar_items(request.item_id, k, exclude, request.same_category))
        except Exception as e:  # noqa: BLE001
            self._fail(context, e)

    def CartRecommendations(self, request: pb.CartRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        try:
            self._check_deadline(context)
            if not request.item_ids:
                raise InvalidArgument("item_ids", "is empty; send the cart's item ids (at least one)")
            items = _check_ids(request.item_ids, "item_ids", self.limits)
            _check_id(request.user_id, "user_id", self.limits, required=False)
            k = _check_k(request.k, self.limits)
            return self._respond(self.recommender.cart(list(items), k, request.user_id))
        except Exception as e:  # noqa: BLE001
            self._fail(context, e)

    def GetUserInsights(self, request: pb.UserInsightsRequest,
                        context: grpc.ServicerContext) -> pb.UserInsightsResponse:
        try:
            self._check_deadline(context)
            _check_id(request.user_id, "user_id", self.limits)
            out = self.recommender.insights(request.user_id)
            return pb.UserInsightsResponse(
                user_id=request.user_id, churn_risk=out["churn_risk"], horizon_days=out["horizon_days"],
                drivers=[pb.Driver(feature=f, value=float(v), contribution=float(c), description=d)
                         for f, v, c, d in out["drivers"]],
                segment=out["segment"], churn_version=out["version"])
        except Exception as e:  # noqa: BLE001
            self._fail(context, e)

    def RecordEvents(self, request: pb.RecordEventsRequest, context: grpc.ServicerContext) -> pb.RecordEventsResponse:
        from serving.events import record_events

        try:
            if len(request.events) > self.limits.max_list_size:
                raise InvalidArgument("events", f"has {len(request.events)} events; the limit is "
                                                f"{self.limits.max_list_size} per call")
            results = record_events(self.recommender.store, request.events, self.recommender.models.items.position,
                                    self.limits.max_id_length)
        except Exception as e:  # noqa: BLE001 - every error goes through the one status table
            self._fail(context, e)
        return pb.RecordEventsResponse(
            results=[pb.EventResult(index=r.index, accepted=r.accepted, error=r.error) for r in results],
            accepted=sum(r.accepted for r in results))

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.GetInfoResponse:
        m = self.recommender.models
        return pb.GetInfoResponse(retrieval_version=m.versions["retrieval"], index_version=m.versions["index"],
                                  ranking_version=m.versions["ranking"], items=len(m.items))


class RunningServer:
    """A started server and the port it listens on; ``stop()`` drains in-flight calls."""

    def __init__(self, server: grpc.Server, port: int, health_servicer: health.HealthServicer):
        self.server, self.port, self.health = server, port, health_servicer
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self._stopped.set()

    def wait(self) -> None:
        self.server.wait_for_termination()


def start(recommender: Recommender, host: str = "127.0.0.1", port: int = 50051, workers: int = 8,
          limits: Limits = Limits(), reuse_port: bool = False) -> RunningServer:
    """Start serving on host:port (port 0 picks a free one) and mark the service SERVING.

    ``reuse_port``: let several server processes listen on the same port (SO_REUSEPORT; the
    kernel spreads connections over them), which is how one machine's cores are all used.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    pb_grpc.add_RecommenderServicer_to_server(RecommenderServicer(recommender, limits), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} (in use?); pick another port with --port")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on %s:%d", SERVICE_NAME, host, bound)
    return RunningServer(server, bound, health_servicer)
