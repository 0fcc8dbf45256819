"""Feature tables: daily point-in-time snapshots of user activity, recent items and item stats."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feature_repo.data.contract import read_table
from feature_repo.data.features import (
    RECENT_N,
    build_all,
    collapse_sequence,
    item_stats,
    latest,
    pad_sequences,
    price_bucket,
    user_activity,
    user_recent,
)
from feature_repo.data.validation import validate

D1, D2, D3, D4, D5 = (pd.Timestamp(f"2026-03-0{d}", tz="UTC") for d in range(1, 6))
PRICES = {"A": 10.0, "B": 20.0, "C": 30.0, "D": 40.0}


def _items() -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": ["A", "B", "C", "D"],
        "category": ["shoes", "shoes", "books", "books"],
        "brand": ["b1", "b2", "b3", "b3"],
        "price": [PRICES[i] for i in "ABCD"],
        "created_at": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03", "2026-02-10 13:00"], utc=True, format="ISO8601"),
    })


def _ev(user, item, etype, ts) -> dict:
    return {"user_id": user, "item_id": item, "event_type": etype, "timestamp": pd.Timestamp(ts, tz="UTC"),
            "price": PRICES[item]}


def _events() -> pd.DataFrame:
    rows = [
        # u1, day 1: A view → click (one run), B view, A view again (a new run)
        _ev("u1", "A", "view", "2026-03-01 10:00"),
        _ev("u1", "A", "click", "2026-03-01 10:01"),
        _ev("u1", "B", "view", "2026-03-01 10:02"),
        _ev("u1", "A", "view", "2026-03-01 10:05"),
        # u1, day 2: C view → add_to_cart → purchase
        _ev("u1", "C", "view", "2026-03-02 09:00"),
        _ev("u1", "C", "add_to_cart", "2026-03-02 09:01"),
        _ev("u1", "C", "purchase", "2026-03-02 09:02"),
        # u1, day 4: B view
        _ev("u1", "B", "view", "2026-03-04 12:00"),
        # u2, day 2 only
        _ev("u2", "A", "view", "2026-03-02 08:00"),
        _ev("u2", "B", "view", "2026-03-02 08:10"),
    ]
    return pd.DataFrame(rows).sort_values("timestamp", kind="stable").reset_index(drop=True)


def _snapshot(table: pd.DataFrame, user: str, ts: pd.Timestamp) -> pd.Series:
    rows = table[(table["user_id"] == user) & (table["event_timestamp"] == ts)]
    assert len(rows) == 1, f"expected one snapshot of {user} at {ts}, got {len(rows)}"
    return rows.iloc[0]


# ---------------------------------------------------------------- user_recent


def test_user_recent_daily_snapshots_are_point_in_time():
    rec = user_recent(_events())
    u1 = rec[rec["user_id"] == "u1"]
    # one snapshot per active day, stamped at that day's end
    assert u1["event_timestamp"].tolist() == [D2, D3, D5]
    s1 = _snapshot(rec, "u1", D2)
    assert list(s1["recent_items"]) == ["A", "B", "A"]  # nothing from day 2 or later
    assert list(s1["recent_event_types"]) == ["click", "view", "view"]
    s2 = _snapshot(rec, "u1", D3)
    assert list(s2["recent_items"]) == ["A", "B", "A", "C"]
    assert list(s2["recent_event_types"]) == ["click", "view", "view", "purchase"]
    s4 = _snapshot(rec, "u1", D5)
    assert list(s4["recent_items"]) == ["A", "B", "A", "C", "B"]
    assert list(_snapshot(rec, "u2", D3)["recent_items"]) == ["A", "B"]
    assert str(rec["event_timestamp"].dt.tz) == "UTC"


def test_user_recent_never_contains_later_events():
    ev = _events()
    rec = user_recent(ev)
    for _, row in rec.iterrows():
        mine = ev[ev["user_id"] == row["user_id"]]
        before = mine[mine["timestamp"] < row["event_timestamp"]]
        assert set(row["recent_items"]) <= set(before["item_id"])
        # the newest item of the snapshot is the last event before the snapshot time
        assert row["recent_items"][-1] == before["item_id"].iloc[-1]


def test_collapse_keeps_deepest_type_of_consecutive_same_item_events():
    seq = collapse_sequence(_events())
    u1 = seq[seq["user_id"] == "u1"]
    assert u1["item_id"].tolist() == ["A", "B", "A", "C", "B"]
    assert u1["event_type"].tolist() == ["click", "view", "view", "purchase", "view"]
    # a run is stamped with its last event
    assert u1["timestamp"].iloc[3] == pd.Timestamp("2026-03-02 09:02", tz="UTC")


def test_user_recent_is_capped_oldest_first():
    ts = pd.Timestamp("2026-03-01 00:00", tz="UTC")
    items = [f"x{i:02d}" for i in range(RECENT_N + 5)]
    ev = pd.DataFrame({"user_id": "u", "item_id": items, "event_type": "view",
                       "timestamp": [ts + pd.Timedelta(minutes=i) for i in range(len(items))]})
    rec = user_recent(ev)
    assert len(rec) == 1
    assert list(rec["recent_items"].iloc[0]) == items[-RECENT_N:]
    small = user_recent(ev, n=3)
    assert list(small["recent_items"].iloc[0]) == items[-3:]
    assert list(small["recent_event_types"].iloc[0]) == ["view"] * 3


def test_user_recent_run_spanning_midnight_keeps_the_earlier_days_snapshot():
    ev = pd.DataFrame([
        _ev("u", "A", "view", "2026-03-01 10:00"),
        _ev("u", "B", "view", "2026-03-01 23:59"),
        _ev("u", "B", "add_to_cart", "2026-03-02 00:01"),  # same item, next day
    ])
    rec = user_recent(ev)
    # the user was active on day 1: its end-of-day snapshot holds A and B (as a view)
    s1 = _snapshot(rec, "u", D2)
    assert list(s1["recent_items"]) == ["A", "B"]
    assert list(s1["recent_event_types"]) == ["view", "view"]
    s2 = _snapshot(rec, "u", D3)
    assert list(s2["recent_items"]) == ["A", "B"]
    assert list(s2["recent_event_types"]) == ["view", "add_to_cart"]


# ---------------------------------------------------------------- user_activity


def test_user_activity_cumulative_counts_per_day():
    act = user_activity(_events(), _items())
    u1 = act[act["user_id"] == "u1"].set_index("event_timestamp")
    # D4 is no active day: it is when day 2's events leave the 1-day window.
    assert list(u1.index) == [D2, D3, D4, D5]
    cols = ["n_view", "n_click", "n_add_to_cart", "n_purchase"]
    assert u1.loc[D3, "n_view_1d"] == 1 and u1.loc[D4, "n_view_1d"] == 0 and u1.loc[D4, "n_view"] == 4
    assert u1.loc[D5, ["n_view_1d", "n_view_7d", "n_view_30d"]].tolist() == [1, 5, 5]
    assert u1.loc[D4, "n_purchase_7d"] == 1 and u1.loc[D4, "conversion_rate_30d"] == pytest.approx(1 / 4)
    assert u1.loc[D2, "last_purchase_epoch"] != u1.loc[D2, "last_purchase_epoch"]  # NaN: no purchase yet
    assert u1.loc[D3, "last_purchase_epoch"] == pd.Timestamp("2026-03-02 09:02", tz="UTC").timestamp()
    assert u1.loc[D5, "last_visit_epoch"] == pd.Timestamp("2026-03-04 12:00", tz="UTC").timestamp()
    assert u1.loc[D2, cols].tolist() == [3, 1, 0, 0]
    assert u1.loc[D3, cols].tolist() == [4, 1, 1, 1]
    assert u1.loc[D5, cols].tolist() == [5, 1, 1, 1]
    assert u1.loc[D2, "avg_purchase_price"] == 0.0
    assert u1.loc[D3, "avg_purchase_price"] == pytest.approx(30.0)
    assert u1.loc[D5, "max_purchase_price"] == pytest.approx(30.0)
    assert u1.loc[D3, "conversion_rate"] == pytest.approx(1 / 4)
    # favourite category: shoes (A, A, B, A) until day 2 ends; then shoes 5 vs books 3
    assert u1.loc[D2, "favourite_categories"] == ["shoes"]
    assert u1.loc[D3, "favourite_categories"] == ["shoes", "books"]
    u2 = _snapshot(act, "u2", D3)
    assert [u2[c] for c in cols] == [2, 0, 0, 0]
    for c in cols:
        assert act[c].dtype == "int64"


def test_user_activity_without_optional_event_price():
    ev = _events().drop(columns=["price"])
    act = user_activity(ev, _items())
    u1 = act[act["user_id"] == "u1"].set_index("event_timestamp")
    assert u1.loc[D3, "n_purchase"] == 1


def test_features_from_csv_events_with_price(tmp_path):
    ev = _events()
    ev["timestamp"] = ev["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    ev.to_csv(tmp_path / "events.csv", index=False)
    items = _items().assign(created_at=lambda d: d["created_at"].dt.strftime("%Y-%m-%d"))
    items.to_csv(tmp_path / "items.csv", index=False)
    users = pd.DataFrame({"user_id": ["u1", "u2"], "created_at": ["2026-01-01", "2026-01-01"]})
    users.to_csv(tmp_path / "users.csv", index=False)
    rep = validate(*(read_table(tmp_path / f"{n}.csv") for n in ("events", "items", "users")),
                   now=pd.Timestamp("2026-06-01", tz="UTC"))
    assert rep.quarantine.empty
    act = user_activity(rep.tables["events"], rep.tables["items"])
    assert _snapshot(act, "u1", D3)["avg_purchase_price"] == pytest.approx(30.0)


# ---------------------------------------------------------------- item_stats


def test_item_stats_has_a_zero_row_at_creation():
    st = item_stats(_events(), _items())
    d = st[st["item_id"] == "D"]  # never touched
    assert len(d) == 1
    row = d.iloc[0]
    assert row["event_timestamp"] == pd.Timestamp("2026-02-10 13:00", tz="UTC")
    assert [row[c] for c in ("n_view", "n_click", "n_add_to_cart", "n_purchase")] == [0, 0, 0, 0]
    assert row["category"] == "books" and row["brand"] == "b3" and row["price"] == 40.0
    assert row["price_bucket"] == price_bucket(np.array([40.0]))[0] == 2
    a = st[st["item_id"] == "A"].set_index("event_timestamp")
    # creation, two active days, and D4 when day 2 leaves the 1-day window (data ends at D5)
    assert list(a.index) == [pd.Timestamp("2026-01-01", tz="UTC"), D2, D3, D4]
    assert a["n_view"].tolist() == [0, 2, 3, 3]  # u1 twice on day 1, u2 on day 2
    assert a["n_view_1d"].tolist() == [0, 2, 1, 0]
    assert a["n_click"].tolist() == [0, 1, 1, 1]
    assert a["attributes"].iloc[0] == [] and a["created_epoch"].iloc[0] == pd.Timestamp("2026-01-01", tz="UTC").timestamp()
    c = latest(st, "item_id").set_index("item_id").loc["C"]
    assert (c["n_view"], c["n_purchase"], c["conversion_rate"]) == (1, 1, 1.0)


def test_build_all_names():
    tables = build_all(_events(), _items())
    assert set(tables) == {"user_activity", "user_recent", "item_stats"}
    for df in tables.values():
        assert "event_timestamp" in df.columns and len(df) > 0


# ---------------------------------------------------------------- pad_sequences


def test_pad_sequences_right_aligns_and_truncates():
    out = pad_sequences([["a", "b"], [], None, list("abcdefg")], n=4, pad="")
    assert out.shape == (4, 4)
    assert out.tolist() == [
        ["", "", "a", "b"],
        ["", "", "", ""],
        ["", "", "", ""],
        ["d", "e", "f", "g"],
    ]
    assert pad_sequences([np.array(["x"])], n=2, pad="<pad>").tolist() == [["<pad>", "x"]]
    assert pad_sequences([["x"]]).shape == (1, RECENT_N)
