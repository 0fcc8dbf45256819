"""Feature tables computed from the clean events and catalog, with event timestamps.

Every row is a daily snapshot: the values as of the end of one day, stamped with that day's end,
so that Feast's point-in-time joins never hand a training row a value computed from later events.

Windowed counts (last 1/7/30 days) also get rows on the days their events leave the window, so a
quiet user's "views today" drops back to zero instead of staying at its last value.

- user_activity: counts per event type (all-time and 1/7/30 days), conversion rate, purchase
  prices, last visit and purchase time, favourite categories;
- user_recent: the last RECENT_N interacted items and their deepest event type (consecutive
  events on the same item are collapsed: view → click → purchase becomes one "purchase");
- item_stats: category, brand, price, price bucket, launch time, attribute ids and popularity
  and conversion (all-time and 1/7/30 days), with a first row at the item's creation.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from feature_repo.data.contract import EVENT_TYPES

RECENT_N = 50  # as many positions as the user tower reads
WINDOWS = (1, 7, 30)  # days of the windowed counts
COUNT_COLUMNS = [f"n_{t}" for t in EVENT_TYPES]
PRICE_BUCKETS = np.array([10.0, 25.0, 50.0, 100.0, 250.0])  # bucket i: price < edge i
TOP_CATEGORIES = 3


def _day_end(ts: pd.Series) -> pd.Series:
    return ts.dt.floor("D") + pd.Timedelta(days=1)


def _daily_counts(events: pd.DataFrame, key: str) -> pd.DataFrame:
    """Events per type per (key, day end), not cumulative."""
    counts = pd.crosstab([events[key], _day_end(events["timestamp"]).rename("event_timestamp")], events["event_type"])
    counts = counts.reindex(columns=list(EVENT_TYPES), fill_value=0)
    counts.columns = COUNT_COLUMNS
    return counts


def _snapshot_times(active: pd.MultiIndex, key: str, last: pd.Timestamp) -> pd.DataFrame:
    """Snapshot rows: each active day end, plus the day ends when its events leave a window.

    Without the extra rows a quiet user's 1-day count would stay at its last active value
    forever, because Feast serves the latest row at or before the requested time.
    """
    base = active.to_frame(index=False)
    shifted = [base.assign(event_timestamp=base["event_timestamp"] + pd.Timedelta(days=w)) for w in WINDOWS]
    snap = pd.concat([base, *shifted], ignore_index=True)
    snap = snap[snap["event_timestamp"] <= last].drop_duplicates()
    return snap.sort_values([key, "event_timestamp"], kind="stable").reset_index(drop=True)


def _as_of(snap: pd.DataFrame, values: pd.DataFrame, key: str, lag_days: int = 0) -> pd.DataFrame:
    """For each snapshot row, the latest ``values`` row at or before (its time - lag_days)."""
    left = snap.assign(_t=snap["event_timestamp"] - pd.Timedelta(days=lag_days), _row=np.arange(len(snap)))
    right = values.reset_index().rename(columns={"event_timestamp": "_t"})
    merged = pd.merge_asof(left.sort_values("_t", kind="stable"), right.sort_values("_t", kind="stable"),
                           on="_t", by=key, direction="backward")
    return merged.sort_values("_row").drop(columns=[key, "event_timestamp", "_t", "_row"]).reset_index(drop=True)


def _windowed(snap: pd.DataFrame, cum: pd.DataFrame, key: str, columns: list[str]) -> pd.DataFrame:
    """Cumulative counts at each snapshot, and the counts of the last 1/7/30 days."""
    now = _as_of(snap, cum[columns], key).fillna(0)
    out = {c: now[c].astype("int64") for c in columns}
    for w in WINDOWS:
        before = _as_of(snap, cum[columns], key, lag_days=w).fillna(0)
        for c in columns:
            out[f"{c}_{w}d"] = (now[c] - before[c]).astype("int64")
    return pd.DataFrame(out)


def _epoch(ts: pd.Series) -> pd.Series:
    return (ts - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds()


def user_activity(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Per user and snapshot: counts (all-time and 1/7/30 days), conversion, spend, recency, tastes.

    ``last_visit_epoch`` / ``last_purchase_epoch`` are unix seconds: "days since" depends on
    when it is asked, so consumers compute it from the request time.
    """
    last = _day_end(events["timestamp"]).max()
    daily = _daily_counts(events, "user_id")
    cum = daily.groupby(level=0).cumsum()
    snap = _snapshot_times(daily.index, "user_id", last)
    out = pd.concat([snap, _windowed(snap, cum, "user_id", COUNT_COLUMNS)], axis=1)
    out["conversion_rate"] = out["n_purchase"] / out["n_view"].clip(lower=1)
    out["conversion_rate_30d"] = out["n_purchase_30d"] / out["n_view_30d"].clip(lower=1)

    day = _day_end(events["timestamp"]).rename("event_timestamp")
    buys = events[events["event_type"] == "purchase"]
    # price is optional on events: fall back to the catalog price where it is absent.
    catalog_price = buys["item_id"].map(items.set_index("item_id")["price"])
    price = buys["price"].fillna(catalog_price) if "price" in buys else catalog_price
    spend = pd.DataFrame({"user_id": buys["user_id"], "event_timestamp": day[buys.index], "price": price,
                          "at": _epoch(buys["timestamp"])})
    spend = spend.groupby(["user_id", "event_timestamp"]).agg(total=("price", "sum"), max=("price", "max"),
                                                               at=("at", "max"))
    g = spend.groupby(level=0)
    spend = pd.DataFrame({"purchase_value": g["total"].cumsum(), "max_purchase_price": g["max"].cummax(),
                          "last_purchase_epoch": g["at"].cummax()})
    paid = _as_of(snap, spend, "user_id")
    out["avg_purchase_price"] = (paid["purchase_value"] / out["n_purchase"].where(out["n_purchase"] > 0)).fillna(0.0)
    out["max_purchase_price"] = paid["max_purchase_price"].fillna(0.0)
    out["last_purchase_epoch"] = paid["last_purchase_epoch"]  # NaN: never bought
    visits = pd.DataFrame({"user_id": events["user_id"], "event_timestamp": day, "at": _epoch(events["timestamp"])})
    visits = visits.groupby(["user_id", "event_timestamp"])["at"].max().groupby(level=0).cummax().to_frame()
    out["last_visit_epoch"] = _as_of(snap, visits, "user_id")["at"]

    # Favourite categories: the most interacted-with categories so far (ties: alphabetical).
    cat = events[["user_id", "item_id"]].assign(event_timestamp=day).merge(items[["item_id", "category"]], on="item_id")
    per_day = pd.crosstab([cat["user_id"], cat["event_timestamp"]], cat["category"]).groupby(level=0).cumsum()
    order = np.argsort(-per_day.to_numpy(), axis=1, kind="stable")[:, :TOP_CATEGORIES]
    counts = np.take_along_axis(per_day.to_numpy(), order, axis=1)
    names = per_day.columns.to_numpy(dtype=object)
    fav = [[names[j] for j, c in zip(row, cnt) if c > 0] for row, cnt in zip(order, counts)]
    fav_df = pd.DataFrame({"favourite_categories": fav}, index=per_day.index)
    out["favourite_categories"] = _as_of(snap, fav_df, "user_id")["favourite_categories"].map(
        lambda v: v if isinstance(v, list) else [])
    return out


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


def item_attributes(items: pd.DataFrame) -> pd.Series:
    """Attribute ids per item: the ``attributes`` column if the catalog has one (importers keep
    Amazon's), else the department (synthetic shop), else none."""
    if "attributes" in items:
        return items["attributes"].map(lambda v: [str(a) for a in v] if isinstance(v, (list, np.ndarray)) else [])
    if "department" in items:
        return items["department"].map(lambda d: [f"department:{d}"])
    return pd.Series([[] for _ in range(len(items))], index=items.index)


def item_stats(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Per item and snapshot: attributes, launch time, popularity (all-time and 1/7/30 days).

    A first row at the item's creation means items nobody has touched still have features.
    ``created_epoch`` is unix seconds (age depends on when it is asked).
    """
    last = max(_day_end(events["timestamp"]).max(), items["created_at"].max())
    daily = _daily_counts(events, "item_id")
    cum = daily.groupby(level=0).cumsum()
    created = items[["item_id", "created_at"]].rename(columns={"created_at": "event_timestamp"})
    snap = pd.concat([created, _snapshot_times(daily.index, "item_id", last)], ignore_index=True)
    snap = snap.drop_duplicates().sort_values(["item_id", "event_timestamp"], kind="stable").reset_index(drop=True)
    out = pd.concat([snap, _windowed(snap, cum, "item_id", COUNT_COLUMNS)], axis=1)
    for suffix in ("", *(f"_{w}d" for w in WINDOWS)):
        out[f"conversion_rate{suffix}"] = out[f"n_purchase{suffix}"] / out[f"n_view{suffix}"].clip(lower=1)
    attrs = items[["item_id", "category", "brand", "price"]].assign(
        created_epoch=_epoch(items["created_at"]), attributes=item_attributes(items))
    out = out.merge(attrs, on="item_id", how="left")
    out["price_bucket"] = price_bucket(out["price"])
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
