"""Real-time feature updates: new events change a user's online features within the request.

The idea: between nightly feature builds, each accepted event is folded into the user's current
online row (read once) and the updated row is pushed back through the push sources, so the very
next recommendation sees it. The recent sequence follows the same rule as the batch job
(consecutive events on one item merge into the deepest type); counters grow by the new events.
Windowed counters (``_1d``/``_7d``/``_30d``) only grow here, they cannot expire without the
per-day history: the nightly job recomputes them exactly. Rows are stamped with the time of the
push, not of the events, because Feast's Redis store drops writes that are not newer than what
it holds.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.data.contract import EVENT_TYPES
from feature_repo.data.features import COUNT_COLUMNS, RECENT_N, WINDOWS
from feature_repo.online_read import OnlineRowReader
from feature_repo.online_write import OnlinePusher

DEPTH = {t: i for i, t in enumerate(EVENT_TYPES)}
RECENT_VIEW, ACTIVITY_VIEW = "user_recent_fv", "user_activity_fv"


def fold_sequence(items: list[str], types: list[str], events: pd.DataFrame,
                  n: int = RECENT_N) -> tuple[list[str], list[str]]:
    """Append events (in time order) to a recent sequence, merging repeats of the last item."""
    items, types = list(items), list(types)
    for item, etype in zip(events["item_id"], events["event_type"]):
        if items and items[-1] == item:
            types[-1] = max(types[-1], etype, key=DEPTH.__getitem__)
        else:
            items.append(item)
            types.append(etype)
    return items[-n:], types[-n:]


def _epoch(ts: pd.Timestamp) -> float:
    return float(pd.Timestamp(ts).timestamp())


def fold_activity(row: dict[str, Any], events: pd.DataFrame) -> dict[str, Any]:
    """Counters, conversion, spend and recency after ``events`` (None values count as 0)."""
    out = {k: v for k, v in row.items()}
    counts = events["event_type"].value_counts()
    for t, col in zip(EVENT_TYPES, COUNT_COLUMNS):
        added = int(counts.get(t, 0))
        for suffix in ("", *(f"_{w}d" for w in WINDOWS)):
            out[col + suffix] = int(out.get(col + suffix) or 0) + added
    buys = events[events["event_type"] == "purchase"]
    old_n = int(row.get("n_purchase") or 0)
    prices = pd.to_numeric(buys["price"], errors="coerce").dropna() if "price" in buys else pd.Series(dtype=float)
    if len(prices):
        total = float(row.get("avg_purchase_price") or 0.0) * old_n + float(prices.sum())
        out["avg_purchase_price"] = total / (old_n + len(prices))
        out["max_purchase_price"] = max(float(row.get("max_purchase_price") or 0.0), float(prices.max()))
    out.setdefault("avg_purchase_price", 0.0)
    out.setdefault("max_purchase_price", 0.0)
    out["conversion_rate"] = out["n_purchase"] / max(out["n_view"], 1)
    out["conversion_rate_30d"] = out["n_purchase_30d"] / max(out["n_view_30d"], 1)
    out["last_visit_epoch"] = max(_epoch(events["timestamp"].max()), float(row.get("last_visit_epoch") or 0.0))
    if len(buys):
        out["last_purchase_epoch"] = max(_epoch(buys["timestamp"].max()), float(row.get("last_purchase_epoch") or 0.0))
    out["favourite_categories"] = list(row.get("favourite_categories") or [])
    return out


@dataclass
class _Plan:
    """What apply_events needs from the registry, looked up once per store (not per call)."""

    activity_fields: list[str]
    reader: OnlineRowReader
    recent: OnlinePusher
    activity: OnlinePusher


_plans: "weakref.WeakKeyDictionary[Any, _Plan]" = weakref.WeakKeyDictionary()


def prepare(store) -> None:
    """Look up now what ``apply_events`` needs from the registry (~50 ms of Feast's proto
    parsing and type checks), so that a server's first push does not pay for it."""
    _plan(store)


def _plan(store) -> _Plan:
    plan = _plans.get(store)
    if plan is None:
        fields = [f.name for f in store.get_feature_view(ACTIVITY_VIEW).features]
        reader = OnlineRowReader(store, [f"{RECENT_VIEW}:recent_items", f"{RECENT_VIEW}:recent_event_types",
                                         *(f"{ACTIVITY_VIEW}:{name}" for name in fields)], "user_id")
        plan = _plans[store] = _Plan(fields, reader, OnlinePusher(store, "user_recent_push"),
                                     OnlinePusher(store, "user_activity_push"))
    return plan


def apply_events(store, events: pd.DataFrame, now: datetime | None = None) -> dict[str, pd.DataFrame]:
    """Fold validated events into their users' online rows and push them; returns what was pushed.

    One online read for all the users concerned, one push per feature view.
    """
    if events.empty:
        return {}
    plan = _plan(store)
    events = events.sort_values("timestamp", kind="stable")
    by_user = dict(tuple(events.groupby("user_id", sort=False)))  # each user's events, in time order
    users = list(by_user)
    current = plan.reader.read_many(users)
    stamp = pd.Timestamp(now or datetime.now(timezone.utc))
    recent_rows, activity_rows = [], []
    for user, row in zip(users, current):
        mine = by_user[user]
        items, types = fold_sequence(row["recent_items"] or [], row["recent_event_types"] or [], mine)
        recent_rows.append({"user_id": user, "event_timestamp": stamp, "recent_items": items,
                            "recent_event_types": types})
        activity = fold_activity({name: row[name] for name in plan.activity_fields}, mine)
        activity_rows.append({"user_id": user, "event_timestamp": stamp, **activity})
    recent, activity = pd.DataFrame(recent_rows), pd.DataFrame(activity_rows)
    for col in plan.activity_fields:  # Feast wants the schema's dtypes: counters int, the rest float
        if col.startswith("n_"):
            activity[col] = activity[col].astype("int64")
        elif col != "favourite_categories":
            activity[col] = activity[col].astype("float64").replace({None: np.nan})
    plan.recent.push(recent)
    plan.activity.push(activity)
    return {"user_recent": recent, "user_activity": activity}
