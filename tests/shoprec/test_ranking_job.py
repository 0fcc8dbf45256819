"""The ranking job on the tiny shop: point-in-time training rows, both rankers, the served one.

Uses the session's trained workspace (real Feast offline store, real index and rankers).
"""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from feature_repo.artifacts import ArtifactStore

pytestmark = pytest.mark.slow


def _training_rows(ws, requests):
    from ranking.model import ItemVocabulary
    from shoprec.ranking_job import PointInTimeItems, Retrieval, build_set, fit_cooccurrence
    from shoprec.pipeline import load_clean

    retrieval = Retrieval.load(ws)
    events = load_clean(ws, "events")
    cooc = fit_cooccurrence(events, requests.times.min(), list(retrieval.index.item_ids))
    items = PointInTimeItems(ws, list(requests.times))
    return build_set(ws, retrieval, cooc, items, requests, ItemVocabulary(list(retrieval.index.item_ids)),
                     history_len=20, negatives=None)


def test_a_planted_future_feature_value_cannot_change_a_training_row(trained_workspace, planted):
    """Rows stamped one second after each request (user and item tables) change nothing;
    the same rows one second before it do (so the test can fail)."""
    from shoprec.pipeline import load_clean
    from shoprec.ranking_job import funnel_requests
    from shoprec.training import TrainingConfig, cutoff_time

    ws, cfg = trained_workspace, TrainingConfig()
    events = load_clean(ws, "events")
    cutoff = cutoff_time(events, cfg.holdout_days)
    requests = funnel_requests(events, cutoff - pd.Timedelta(days=cfg.ranking_label_days), cutoff, 40, seed=0)
    base = _training_rows(ws, requests)

    times = pd.DataFrame({"user_id": requests.users, "t": pd.to_datetime(requests.times, utc=True)})

    def poison(offset: pd.Timedelta):
        """Poisoned rows just after each user's last request (offset > 0) or before their first."""
        act = pd.read_parquet(ws.features_dir / "user_activity.parquet")
        rec = pd.read_parquet(ws.features_dir / "user_recent.parquet")
        stats = pd.read_parquet(ws.features_dir / "item_stats.parquet")
        when = times.groupby("user_id")["t"].agg("max" if offset > pd.Timedelta(0) else "min") + offset
        users = when.index.to_series()
        a = act.groupby("user_id").tail(1).set_index("user_id").loc[users].reset_index()
        a["event_timestamp"] = when.to_numpy()
        a["n_view"], a["n_purchase"], a["avg_purchase_price"] = 1_000_000, 1_000_000, 9999.0
        r = rec.groupby("user_id").tail(1).set_index("user_id").loc[users].reset_index()
        r["event_timestamp"] = when.to_numpy()
        # Each user's labelled items become their "recent" items: the classic leak.
        labelled = {u: list(d) for u, d in zip(requests.users, requests.depth)}
        r["recent_items"] = [labelled[u] for u in users]
        r["recent_event_types"] = [["add_to_cart"] * len(labelled[u]) for u in users]
        # Item tables are read as of each day's start: one second after the last day's start
        # is the future for every request; the first day's start itself is not.
        days = times["t"].dt.floor("D")
        day = days.max() + offset if offset > pd.Timedelta(0) else days.min()
        s = stats.groupby("item_id").tail(1).assign(event_timestamp=day)
        for column in ("n_view", "n_purchase", "n_view_7d", "n_purchase_7d"):
            s[column] = 10**9
        return [(ws.features_dir / "user_activity.parquet", a), (ws.features_dir / "user_recent.parquet", r),
                (ws.features_dir / "item_stats.parquet", s)]

    def rows_with(plants):
        (p1, r1), (p2, r2), (p3, r3) = plants
        with planted(p1, r1), planted(p2, r2), planted(p3, r3):
            return _training_rows(ws, requests)

    future = rows_with(poison(pd.Timedelta(seconds=1)))
    np.testing.assert_array_equal(future.dense, base.dense)
    np.testing.assert_array_equal(future.labels, base.labels)
    np.testing.assert_array_equal(future.item, base.item)
    np.testing.assert_array_equal(future.history, base.history)

    from ranking.features import FEATURE_NAMES

    past = rows_with(poison(pd.Timedelta(seconds=-1)))
    views_7d = past.dense[:, FEATURE_NAMES.index("item_log_views_7d")]
    assert np.isclose(views_7d, np.log1p(10**9)).any()  # read on the first day (later snapshots supersede it)
    assert past.dense[:, FEATURE_NAMES.index("user_log_views")].max() == pytest.approx(np.log1p(1e6))  # the user's


def test_both_rankers_are_trained_and_the_better_one_is_served(trained_workspace):
    store = ArtifactStore(trained_workspace.models_dir / "ranking")
    by_kind = {store.manifest(v)["model"]: store.manifest(v) for v in store.versions()}
    assert set(by_kind) == {"dcn", "lstm"}
    best = max(by_kind, key=lambda k: by_kind[k]["training"]["validation"]["ndcg_at_10_graded"])
    assert store.manifest()["model"] == best
    for manifest in by_kind.values():
        assert manifest["training"]["tasks"] == ["click", "add_to_cart", "purchase"]
        assert {f"gauc_{t}" for t in ("click", "add_to_cart", "purchase")} <= set(manifest["metrics"])


def test_the_served_ranker_beats_the_retrieval_order_on_the_holdout(trained_workspace):
    """Holdout visits after the retrieval cutoff: neither model saw them. Measured on tiny
    (seed 0): NDCG@10 of purchases ~.23–.25 re-ranked vs .22 in retrieval order."""
    m = ArtifactStore(trained_workspace.models_dir / "ranking").manifest()["metrics"]
    assert m["requests"] >= 200, m
    assert m["ndcg_at_10"] > m["ndcg_at_10_retrieval_order"], m
    assert m["auc_purchase"] > 0.75 and m["gauc_purchase"] > 0.75, m


def test_serving_uses_the_published_ranker(recommender, trained_workspace):
    store = ArtifactStore(trained_workspace.models_dir / "ranking")
    assert recommender.models.versions["ranking"] == store.current_version()
