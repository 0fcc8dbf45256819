"""Feature tables computed from the clean events and catalog, with event timestamps.

Every row is a daily snapshot: the values as of the end of one day, stamped with that day's end,
so that Feast's point-in-time joins never hand a training row a value computed from later events.

- user_activity: cumulative counts per event type, conversion rate, purchase prices, favourite
  category;
- user_recent: the last RECENT_N interacted items and their deepest event type (consecutive
  events on the same item are collapsed: view → click → purchase becomes one "purchase");
- item_stats: category, brand, price, price bucket and cumulative popularity, with a first row at
  the item's creation so that items nobody has touched still have features.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from feature_repo.data.contract import EVENT_TYPES

RECENT_N = 20
COUNT_COLUMNS = [f"n_{t}" for t in EVENT_TYPES]
PRICE_BUCKETS = np.array([10.0, 25.0, 50.0, 100.0, 250.0])  # bucket i: price < edge i


def _day_end(ts: pd.Series) -> pd.Series:
    return ts.dt.floor("D") + pd.Timedelta(days=1)


def _cumulative_counts(events: pd.DataFrame, key: str) -> pd.DataFrame:
    ev = events.assign(event_timestamp=_day_end(events["timestamp"]))
    counts = pd.crosstab([ev[key], ev["event_timestamp"]], ev["event_type"])
    counts = counts.reindex(columns=list(EVENT_TYPES), fill_value=0)
    counts.columns = COUNT_COLUMNS
    return counts.groupby(level=0).cumsum().astype("int64")


def user_activity(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, active day): counts, conversion rate, spend and favourite category."""
    cum = _cumulative_counts(events, "user_id")
    buys = events[events["event_type"] == "purchase"].assign(event_timestamp=lambda d: _day_end(d["timestamp"]))
    # price is optional on events: fall back to the catalog price where it is absent.
    catalog_price = buys["item_id"].map(items.set_index("item_id")["price"])
    buys = buys.assign(price=buys["price"].fillna(catalog_price) if "price" in buys else catalog_price)
    spend = buys.groupby(["user_id", "event_timestamp"])["price"].agg(["sum", "max"])
    spend = spend.reindex(cum.index).fillna(0.0)
    cum["purchase_value"] = spend["sum"].groupby(level=0).cumsum()
    cum["max_purchase_price"] = spend["max"].groupby(level=0).cummax()
    cum["avg_purchase_price"] = (cum["purchase_value"] / cum["n_purchase"].where(cum["n_purchase"] > 0)).fillna(0.0)
    cum["conversion_rate"] = (cum["n_purchase"] / cum["n_view"].clip(lower=1)).astype("float64")
    # Favourite category: most interacted-with category so far (ties: alphabetical).
    cat = events[["user_id", "timestamp", "item_id"]].merge(items[["item_id", "category"]], on="item_id")
    cat["event_timestamp"] = _day_end(cat["timestamp"])
    per_day = pd.crosstab([cat["user_id"], cat["event_timestamp"]], cat["category"])
    per_day = per_day.groupby(level=0).cumsum()
    fav = pd.Series(per_day.columns[per_day.to_numpy().argmax(axis=1)], index=per_day.index)
    cum["favourite_category"] = fav.reindex(cum.index).fillna("")
    out = cum.drop(columns=["purchase_value"]).reset_index()
    return out.astype({"avg_purchase_price": "float64", "max_purchase_price": "float64"})


def collapse_sequence(events: pd.DataFrame, split_days: bool = False) -> pd.DataFrame:
    """Merge runs of consecutive events on the same item per user; keep the deepest event type.

    With ``split_days`` a run is also cut at midnight (UTC), and the ``run`` column keeps the
    id of the uncut run, so that daily snapshots can merge the pieces they both see.
    """
    ev = events.sort_values(["user_id", "timestamp"], kind="stable")
    run = ((ev["user_id"] != ev["user_id"].shift()) | (ev["item_id"] != ev["item_id"].shift())).cumsum()
    piece = run
    if split_days:
        day = ev["timestamp"].dt.floor("D")
        piece = ((run != run.shift()) | (day != day.shift())).cumsum()
    depth = ev["event_type"].map({t: i for i, t in enumerate(EVENT_TYPES)})
    g = pd.DataFrame({"piece": piece, "run": run, "user_id": ev["user_id"], "item_id": ev["item_id"],
                      "timestamp": ev["timestamp"], "depth": depth}).groupby("piece", sort=True)
    out = g.agg(user_id=("user_id", "first"), item_id=("item_id", "first"), timestamp=("timestamp", "last"),
                depth=("depth", "max"), run=("run", "first")).reset_index(drop=True)
    out["event_type"] = np.array(EVENT_TYPES, dtype=object)[out["depth"].to_numpy()]
    return out.drop(columns="depth") if split_days else out.drop(columns=["depth", "run"])


def _merge_pieces(items: np.ndarray, depth: np.ndarray, runs: np.ndarray) -> tuple[list[str], list[str]]:
    """Join consecutive pieces of one run (split at midnight) back into one deepest entry."""
    out_items: list[str] = []
    out_depth: list[int] = []
    last_run = None
    for item, d, r in zip(items, depth, runs):
        if r == last_run:
            out_depth[-1] = max(out_depth[-1], d)
        else:
            out_items.append(item)
            out_depth.append(d)
        last_run = r
    return out_items, [EVENT_TYPES[d] for d in out_depth]


def user_recent(events: pd.DataFrame, n: int = RECENT_N) -> pd.DataFrame:
    """One row per (user, active day): the last ``n`` items (oldest first) and event types.

    The snapshot at a day's end sees exactly the events up to then: an item viewed at 23:59 is
    in that day's snapshot as a view, and in the next day's as the deeper type if it was carted
    after midnight.
    """
    seq = collapse_sequence(events, split_days=True)
    seq["event_timestamp"] = _day_end(seq["timestamp"])
    depth_of = {t: i for i, t in enumerate(EVENT_TYPES)}
    users, ts, items_out, types_out = [], [], [], []
    for user, g in seq.groupby("user_id", sort=True):
        item_arr = g["item_id"].to_numpy()
        depth_arr = g["event_type"].map(depth_of).to_numpy()
        run_arr = g["run"].to_numpy()
        day_arr = g["event_timestamp"].to_numpy()
        # Last position of each day: the snapshot at that day's end includes everything up to it.
        last_pos = np.flatnonzero(np.r_[day_arr[1:] != day_arr[:-1], True])
        for pos in last_pos:
            lo = max(0, pos + 1 - 2 * n)  # pieces merge, so look back further than n
            merged_items, merged_types = _merge_pieces(item_arr[lo:pos + 1], depth_arr[lo:pos + 1],
                                                       run_arr[lo:pos + 1])
            users.append(user)
            ts.append(day_arr[pos])
            items_out.append(merged_items[-n:])
            types_out.append(merged_types[-n:])
    return pd.DataFrame({"user_id": users, "event_timestamp": pd.to_datetime(ts, utc=True),
                         "recent_items": items_out, "recent_event_types": types_out})


def price_bucket(price: np.ndarray | pd.Series) -> np.ndarray:
    return np.searchsorted(PRICE_BUCKETS, np.asarray(price, dtype=float), side="right").astype("int64")


def item_stats(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """One row at creation plus one per active day: attributes and cumulative popularity."""
    cum = _cumulative_counts(events, "item_id").reset_index()
    base = items[["item_id"]].assign(event_timestamp=items["created_at"])
    for c in COUNT_COLUMNS:
        base[c] = 0
    out = pd.concat([base, cum], ignore_index=True)
    attrs = items[["item_id", "category", "brand", "price"]]
    out = out.merge(attrs, on="item_id", how="left")
    out["price_bucket"] = price_bucket(out["price"])
    out["conversion_rate"] = (out["n_purchase"] / out["n_view"].clip(lower=1)).astype("float64")
    out[COUNT_COLUMNS] = out[COUNT_COLUMNS].astype("int64")
    return out.sort_values(["item_id", "event_timestamp"], kind="stable").reset_index(drop=True)


def latest(table: pd.DataFrame, key: str) -> pd.DataFrame:
    """The newest row per entity: what the online store holds after materialization."""
    return table.sort_values("event_timestamp", kind="stable").groupby(key, sort=True).tail(1).reset_index(drop=True)


def build_all(events: pd.DataFrame, items: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """All feature tables, keyed by file stem (``<name>.parquet`` in the features dir)."""
    return {
        "user_activity": user_activity(events, items),
        "user_recent": user_recent(events),
        "item_stats": item_stats(events, items),
    }


def pad_sequences(seqs: list[list[str]] | list[object], n: int = RECENT_N, pad: str = "") -> np.ndarray:
    """Right-aligned [len(seqs), n] string matrix of the last ``n`` items (missing → ``pad``).

    Used identically by training and serving, so the towers see the same layout in both.
    """
    out = np.full((len(seqs), n), pad, dtype=object)
    for i, s in enumerate(seqs):
        if s is None or len(s) == 0:
            continue
        tail = list(s)[-n:]
        out[i, n - len(tail):] = tail
    return out
