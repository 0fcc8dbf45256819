"""Real-time updates: events pushed through the push sources are in the very next online read."""
from __future__ import annotations

import pandas as pd
import pytest

from feature_repo.data.features import build_all
from feature_repo.data.synthetic import END_DATE, generate
from feature_repo.data.validation import validate
from feature_repo.realtime import apply_events, fold_sequence
from feature_repo.store import apply, materialize, open_store
from feature_repo.workspace import Workspace

READ = ["user_recent_fv:recent_items", "user_recent_fv:recent_event_types", "user_activity_fv:n_view",
        "user_activity_fv:n_purchase", "user_activity_fv:n_purchase_1d", "user_activity_fv:last_purchase_epoch",
        "user_activity_fv:conversion_rate", "user_activity_fv:avg_purchase_price"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    shop = generate("tiny", seed=0)
    clean = validate(shop.events, shop.items, shop.users, now=END_DATE).tables
    ws = Workspace.at(tmp_path_factory.mktemp("rt"))
    for name, df in build_all(clean["events"], clean["items"]).items():
        df.to_parquet(ws.features_dir / f"{name}.parquet", index=False)
    s = open_store(ws)
    apply(s, ws)
    materialize(s, ws)
    return s, clean["events"]


def _read(store, user):
    row = store.get_online_features(features=READ, entity_rows=[{"user_id": user}]).to_dict()
    return {k: v[0] for k, v in row.items()}


def _event(user, item, etype, minutes, price=None):
    return {"user_id": user, "item_id": item, "event_type": etype, "price": price,
            "timestamp": pd.Timestamp("2026-11-28 12:00", tz="UTC") + pd.Timedelta(minutes=minutes)}


def test_fold_sequence_merges_repeats_into_the_deepest_type():
    events = pd.DataFrame([_event("u", "b", "view", 0), _event("u", "b", "add_to_cart", 1), _event("u", "c", "view", 2)])
    assert fold_sequence(["a", "b"], ["view", "click"], events) == (["a", "b", "c"], ["view", "add_to_cart", "view"])
    assert fold_sequence(["a"] * 0, [], events, n=2) == (["b", "c"], ["add_to_cart", "view"])


def test_a_purchase_is_visible_in_the_next_read(store):
    s, events = store
    user = events["user_id"].value_counts().index[0]
    before = _read(s, user)
    new = pd.DataFrame([_event(user, "i000042", "view", 0), _event(user, "i000042", "add_to_cart", 1),
                        _event(user, "i000042", "purchase", 2, price=30.0)])
    apply_events(s, new)
    after = _read(s, user)
    assert after["recent_items"][-1] == "i000042" and after["recent_event_types"][-1] == "purchase"
    assert after["recent_items"][:-1] == list(before["recent_items"])[-(len(after["recent_items"]) - 1):]
    assert after["n_view"] == before["n_view"] + 1 and after["n_purchase"] == before["n_purchase"] + 1
    assert after["n_purchase_1d"] == before["n_purchase_1d"] + 1
    assert after["last_purchase_epoch"] == new["timestamp"].iloc[-1].timestamp()
    assert after["conversion_rate"] == pytest.approx(after["n_purchase"] / after["n_view"])
    n = before["n_purchase"]
    assert after["avg_purchase_price"] == pytest.approx((before["avg_purchase_price"] * n + 30.0) / (n + 1))


def test_a_new_user_gets_a_row(store):
    s, _ = store
    assert _read(s, "brand-new-user")["recent_items"] is None
    apply_events(s, pd.DataFrame([_event("brand-new-user", "i000007", "view", 0)]))
    row = _read(s, "brand-new-user")
    assert row["recent_items"] == ["i000007"] and row["n_view"] == 1 and row["n_purchase"] == 0


def test_the_lean_push_stores_what_the_sdk_push_stores(store):
    """apply_events pushes through OnlinePusher: the same frames through FeatureStore.push, for
    another user, read back identically."""
    from feast.data_source import PushMode

    from feature_repo.online_write import OnlinePusher

    s, _ = store
    assert _read(s, "u-lean")["recent_items"] is None and _read(s, "u-by-sdk")["recent_items"] is None
    pushed = apply_events(s, pd.DataFrame([_event("u-lean", "i000011", "view", 0),
                                           _event("u-lean", "i000011", "purchase", 1, price=9.0)]))
    for source, frame in (("user_recent_push", pushed["user_recent"]), ("user_activity_push", pushed["user_activity"])):
        s.push(source, frame.assign(user_id="u-by-sdk"), to=PushMode.ONLINE)
    lean, sdk = _read(s, "u-lean"), _read(s, "u-by-sdk")
    assert lean.pop("user_id") == "u-lean" and sdk.pop("user_id") == "u-by-sdk"
    assert lean == sdk
    assert lean["recent_items"] == ["i000011"] and lean["n_purchase"] == 1 and lean["n_view"] == 1
    with pytest.raises(Exception, match="no_such_push"):
        OnlinePusher(s, "no_such_push")
