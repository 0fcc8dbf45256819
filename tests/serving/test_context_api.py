"""The context-aware API over real gRPC: product pages, carts, session items, similar items,
cold start with context, page rules, and hot reload under concurrent requests."""
from __future__ import annotations

import math
import threading

import grpc
import numpy as np
import pandas as pd
import pytest

from prometheus_client import REGISTRY

from feature_repo.artifacts import ArtifactStore


def _events(ws) -> pd.DataFrame:
    return pd.read_parquet(ws.clean_dir / "events.parquet")


def _top_user(ws) -> str:
    return str(_events(ws)["user_id"].value_counts().index[0])


def test_similar_items_are_close_and_never_the_item_itself(client, recommender):
    items = recommender.models.items
    item = str(items.item_ids[items.most_popular(1)[0]])
    response = client.similar_items(item, k=10)
    ids = [r.item_id for r in response.items]
    assert len(ids) == 10 and item not in ids
    assert all(r.source == "similar" and r.reason == "similar" for r in response.items)
    sims = [r.retrieval_score for r in response.items]
    assert sims == sorted(sims, reverse=True)
    same = client.similar_items(item, k=5, same_category=True, exclude=ids[:2])
    category = items.category[items.position[item]]
    assert {r.category for r in same.items} == {category} and not set(ids[:2]) & {r.item_id for r in same.items}


def test_similar_items_of_an_item_the_index_does_not_hold_yet(recommender, monkeypatch):
    """A brand-new item (in the catalog, not yet indexed) is embedded from its content."""
    m = recommender.models
    pos = int(m.items.most_popular(1)[0])
    unindexed = m.item_to_index.copy()
    unindexed[pos] = -1
    monkeypatch.setattr(m, "item_to_index", unindexed)
    result = recommender.similar_items(str(m.items.item_ids[pos]), 10)
    assert len(result.items) == 10 and m.items.item_ids[pos] not in {r.item_id for r in result.items}
    # The content tower puts it near its own category: more of it than a random pick would give.
    share = np.mean([r.category == m.items.category[pos] for r in result.items])
    base = np.mean(m.items.category == m.items.category[pos])
    assert share > base, (share, base)


def test_cart_recommendations_are_complements_outside_the_cart(client, trained_workspace, recommender):
    m = recommender.models
    items = m.items

    def other_category_neighbours(item: str) -> int:
        return sum(items.category[items.position[j]] != items.category[items.position[item]]
                   for j, _ in m.cooccurrence.recommend([item], 50) if j in items.position)

    # The item whose co-occurrence evidence reaches other categories most: a real complement case.
    item = max((str(i) for i in items.item_ids[items.most_popular(100)]), key=other_category_neighbours)
    cart = [item]
    response = client.cart_recommendations(cart, k=10)
    ids = [r.item_id for r in response.items]
    assert len(ids) == 10 and not set(cart) & set(ids)
    # Other categories first: the top of the list is never the cart's own category.
    assert response.items[0].category != items.category[items.position[item]]
    assert any(r.reason == "goes_with_cart" for r in response.items)
    personal = client.cart_recommendations(cart, k=10, user_id=_top_user(trained_workspace))
    assert personal.personalized and not set(cart) & {r.item_id for r in personal.items}


def test_product_page_context_for_a_new_user(client, recommender):
    """Cold start with context: the viewed item drives retrieval and ranking instead of popularity."""
    items = recommender.models.items
    viewed = str(items.item_ids[items.most_popular(50)[-1]])
    plain = client.recommend("brand-new-visitor", k=10)
    product = client.recommend("brand-new-visitor", k=10, surface="product", viewed=viewed)
    ids = [r.item_id for r in product.items]
    assert not product.personalized and viewed not in ids and len(ids) == 10
    assert ids != [r.item_id for r in plain.items]
    sources = {s for r in product.items for s in r.source.split("+")}
    assert sources & {"two_tower", "viewed", "similar"}, sources
    assert all(0.0 <= r.purchase_probability <= 1.0 for r in product.items)
    assert any(r.purchase_probability > 0 for r in product.items)  # the ranker's heads were used


def test_session_items_extend_the_history_for_this_request(client, trained_workspace, recommender):
    user = _top_user(trained_workspace)
    items = recommender.models.items
    recent, _ = recommender.user_features(user)
    recent_cats = pd.Series([items.category[p] for p in items.positions(recent["recent_items"])]).value_counts()
    rare = str(recent_cats.index[-1]) if len(recent_cats) == len(set(items.category)) else \
        next(c for c in sorted(set(items.category)) if c not in recent_cats)
    session = [str(items.item_ids[p]) for p in items.most_popular(len(items)) if items.category[p] == rare][:5]
    before = client.recommend(user, k=10)
    during = client.recommend(user, k=10, session=session)
    assert [r.item_id for r in during.items] != [r.item_id for r in before.items]
    # Nothing was stored: the next request without the session is the same as before.
    assert [r.item_id for r in client.recommend(user, k=10).items] == [r.item_id for r in before.items]


def test_filters_price_cart_and_exclude(client, trained_workspace):
    user = _top_user(trained_workspace)
    first = [r.item_id for r in client.recommend(user, k=20).items]
    response = client.recommend(user, k=20, max_price=30.0, cart=first[:2], exclude=first[2:4])
    assert len(response.items) == 20
    assert all(r.price <= 30.0 for r in response.items)
    assert not set(first[:4]) & {r.item_id for r in response.items}


def test_page_rules_diversity_and_new_item_slot(client, trained_workspace, recommender):
    rules = recommender.rules
    items = recommender.models.items
    cap = math.ceil(rules.max_category_share * 10)
    users = _events(trained_workspace)["user_id"].value_counts().index[:20]
    new_cut = items.as_of_epoch - recommender.quotas.new_item_days * 86400
    any_new = bool((items.created_epoch >= new_cut).any())
    for user in users:
        response = client.recommend(str(user), k=10)
        counts = pd.Series([r.category for r in response.items]).value_counts()
        assert counts.max() <= cap, (user, counts.to_dict())
        if any_new and rules.new_item_slots:
            assert any(items.created_epoch[items.position[r.item_id]] >= new_cut for r in response.items), user


def test_hot_reload_under_concurrent_requests(client, grpc_server, recommender, trained_workspace):
    """Publishing another ranking version is picked up without restart and without a failed request."""
    from serving.client import RecommenderClient

    store = ArtifactStore(trained_workspace.models_dir / "ranking")
    live, other = store.current_version(), [v for v in store.versions() if v != store.current_version()][-1]
    user = _top_user(trained_workspace)
    errors, seen, stop = [], set(), threading.Event()

    def hammer() -> None:
        with RecommenderClient(grpc_server.address) as c:
            while not stop.is_set():
                try:
                    seen.add(c.recommend(user, k=10).ranking_version)
                except grpc.RpcError as e:  # pragma: no cover - the assertion below reports it
                    errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        assert recommender.reload_if_changed() is False  # nothing new: no reload
        store.publish(other)
        reloads = REGISTRY.get_sample_value("shoprec_reloads_total", {"result": "ok"}) or 0.0
        assert recommender.reload_if_changed() is True
        assert REGISTRY.get_sample_value("shoprec_reloads_total", {"result": "ok"}) == reloads + 1
        served = {name: recommender.models.versions.get(name, "") for name in ("retrieval", "index", "churn")}
        assert REGISTRY.get_sample_value("shoprec_serving_versions", {**served, "ranking": other}) == 1
        assert REGISTRY.get_sample_value("shoprec_serving_versions", {**served, "ranking": live}) == 0
        assert client.info().ranking_version == other
    finally:
        store.publish(live)
        recommender.reload_if_changed()
        stop.set()
        for t in threads:
            t.join()
    assert not errors and {live, other} <= seen
    assert client.info().ranking_version == live


def test_a_broken_new_version_keeps_the_old_one_serving(recommender, trained_workspace, tmp_path):
    store = ArtifactStore(trained_workspace.models_dir / "ranking")
    live = store.current_version()
    with store.build(kind="ranking", model="dcn", features=["not", "these"]) as b:
        (b.path / "scorer").mkdir()
    store.publish(b.version)
    failed = REGISTRY.get_sample_value("shoprec_reloads_total", {"result": "failed"}) or 0.0
    try:
        assert recommender.reload_if_changed() is False
        assert REGISTRY.get_sample_value("shoprec_reloads_total", {"result": "failed"}) == failed + 1
        assert recommender.models.versions["ranking"] == live
        assert recommender.recommend(_top_user(trained_workspace), 5).items
    finally:
        store.publish(live)
        recommender.reload_if_changed()
        import shutil

        shutil.rmtree(store.root / b.version)


def test_user_insights_for_known_and_unknown_users(client, trained_workspace, recommender):
    from feature_repo.artifacts import ArtifactStore

    user = _top_user(trained_workspace)
    r = client.user_insights(user)
    assert 0.0 <= r.churn_risk <= 1.0 and r.segment in {"active_buyer", "browser", "at_risk", "lapsed"}
    assert len(r.drivers) == 3 and all(d.feature and d.description for d in r.drivers)
    assert r.horizon_days == 14 and r.churn_version == ArtifactStore(trained_workspace.models_dir / "churn").current_version()
    new = client.user_insights("never-seen-before")
    assert new.segment == "new" and not new.drivers and 0 < new.churn_risk < 1
    with pytest.raises(grpc.RpcError) as err:
        client.user_insights("")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("user_id:")
