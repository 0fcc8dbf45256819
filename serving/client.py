"""A small Python client for the shoprec.v1 API (what a shop backend or `shoprec query` uses)."""
from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.proto import recommender_pb2 as pb
from serving.proto import recommender_pb2_grpc as pb_grpc


class RecommenderClient:
    """Blocking client; ``timeout`` (seconds) is the deadline of each call."""

    def __init__(self, address: str, timeout: float = 5.0):
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.RecommenderStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout

    def recommend(self, user_id: str, k: int = 10, exclude: list[str] | None = None, category: str = "",
                  surface: str = "", cart: list[str] | None = None, viewed: str = "",
                  session: list[str] | None = None, max_price: float = 0.0) -> pb.RecommendResponse:
        """Top-k for a user; the keyword arguments are the request context (see docs/api.md)."""
        request = pb.RecommendRequest(user_id=user_id, k=k, context=pb.Context(
            surface=surface, exclude_item_ids=exclude or [], category=category, cart_item_ids=cart or [],
            viewed_item_id=viewed, session_item_ids=session or [], max_price=max_price))
        return self.stub.Recommend(request, timeout=self.timeout)

    def similar_items(self, item_id: str, k: int = 10, exclude: list[str] | None = None,
                      same_category: bool = False) -> pb.RecommendResponse:
        return self.stub.SimilarItems(pb.SimilarItemsRequest(item_id=item_id, k=k, exclude_item_ids=exclude or [],
                                                             same_category=same_category), timeout=self.timeout)

    def cart_recommendations(self, item_ids: list[str], k: int = 10, user_id: str = "") -> pb.RecommendResponse:
        return self.stub.CartRecommendations(pb.CartRequest(item_ids=item_ids, k=k, user_id=user_id),
                                             timeout=self.timeout)

    def user_insights(self, user_id: str) -> pb.UserInsightsResponse:
        return self.stub.GetUserInsights(pb.UserInsightsRequest(user_id=user_id), timeout=self.timeout)

    def record_events(self, events: list[dict]) -> pb.RecordEventsResponse:
        """``events``: dicts with user_id, item_id, event_type and optional timestamp, price."""
        return self.stub.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(**e) for e in events]),
                                      timeout=self.timeout)

    def info(self) -> pb.GetInfoResponse:
        return self.stub.GetInfo(pb.GetInfoRequest(), timeout=self.timeout)

    def healthy(self, service: str = "") -> bool:
        response = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "RecommenderClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
