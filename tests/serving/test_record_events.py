"""RecordEvents over gRPC: per-event validation, and the next Recommend reacts."""
from __future__ import annotations

import shutil

import grpc
import pytest

from feature_repo.workspace import Workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def private_server(trained_workspace, tmp_path_factory):
    """A server on a copy of the workspace: these tests write to its online store."""
    from serving.recommender import Recommender
    from serving.server import start

    root = tmp_path_factory.mktemp("events") / "ws"
    shutil.copytree(trained_workspace.root, root)
    running = start(Recommender(Workspace.at(root)), port=0)
    yield running
    running.stop()


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
    ])
    assert [r.accepted for r in response.results] == [True, False, False, False, False, False]
    assert [r.error.split(":")[0] for r in response.results[1:]] == ["event_type", "user_id", "item_id",
                                                                      "timestamp", "price"]
    assert response.accepted == 1


def test_too_many_events_is_invalid_argument(events_client):
    with pytest.raises(grpc.RpcError) as err:
        events_client.record_events([{"user_id": "u1", "item_id": "i000001", "event_type": "view"}] * 1001)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("events:")
