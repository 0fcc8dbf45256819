"""The gRPC server: the Recommender service plus standard health checking and reflection.

Request validation and the error → status mapping live here, at the edge: the pipeline raises
named errors, this module turns each into one status code (serving/errors.py) and logs the
traceback of anything unexpected without sending it to the client.
"""
from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving.errors import InvalidArgument, status_for
from serving.proto import recommender_pb2 as pb
from serving.proto import recommender_pb2_grpc as pb_grpc
from serving.recommender import Recommender

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


def validate_recommend(req: pb.RecommendRequest, limits: Limits) -> int:
    """Check every field; returns the effective k."""
    _check_id(req.user_id, "user_id", limits)
    if req.k < 0 or req.k > limits.max_k:
        raise InvalidArgument("k", f"must be between 1 and {limits.max_k} (0 means {limits.default_k}); got {req.k}")
    if req.context.surface not in ("", "home", "product", "cart"):
        raise InvalidArgument("context.surface", f"must be one of home, product, cart; got {req.context.surface!r}")
    if len(req.context.exclude_item_ids) > limits.max_list_size:
        raise InvalidArgument("context.exclude_item_ids", f"has {len(req.context.exclude_item_ids)} ids; "
                              f"the limit is {limits.max_list_size}")
    for item in req.context.exclude_item_ids:
        _check_id(item, "context.exclude_item_ids", limits)
    _check_id(req.context.category, "context.category", limits, required=False)
    return req.k or limits.default_k


class RecommenderServicer(pb_grpc.RecommenderServicer):
    def __init__(self, recommender: Recommender, limits: Limits = Limits()):
        self.recommender = recommender
        self.limits = limits

    def _fail(self, context: grpc.ServicerContext, error: Exception) -> None:
        code, message = status_for(error)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("unexpected error while serving a request")
        context.abort(code, message)

    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        try:
            k = validate_recommend(request, self.limits)
            result = self.recommender.recommend(request.user_id, k, tuple(request.context.exclude_item_ids),
                                                request.context.category)
        except Exception as e:  # noqa: BLE001 - every error goes through the one status table
            self._fail(context, e)
        v = result.versions
        return pb.RecommendResponse(
            user_id=result.user_id, personalized=result.personalized, degraded=result.degraded,
            retrieval_version=v.get("retrieval", ""), index_version=v.get("index", ""),
            ranking_version=v.get("ranking", ""),
            items=[pb.RecommendedItem(item_id=r.item_id, score=r.score, retrieval_score=r.retrieval_score,
                                      source=r.source, reason=r.reason, category=r.category, brand=r.brand,
                                      price=r.price) for r in result.items],
        )

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
          limits: Limits = Limits()) -> RunningServer:
    """Start serving on host:port (port 0 picks a free one) and mark the service SERVING."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
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
