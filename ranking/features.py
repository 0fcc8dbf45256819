"""Features of (user, candidate) pairs, computed the same way in training and in serving.

Numpy only: serving imports this module without TensorFlow-side training code. The user's
features are the dict a Feast read of the ``ranking_user_v1`` service returns (one value per
field); item features come from the in-memory ItemTable; ``retrieval_scores`` are the two-tower
inner products of the candidates; ``cooccurrence`` (optional) is the item-to-item model whose
evidence between the user's recent items and each candidate becomes two cross features.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from feature_repo.data.item_table import ItemTable

FEATURE_NAMES = (
    "retrieval_score",
    "item_log_views",
    "item_log_purchases",
    "item_conversion_rate",
    "item_log_price",
    "price_vs_user_avg",  # log(price / user's average purchase price); 0 without purchases
    "user_has_purchased",
    "user_log_views",
    "user_log_purchases",
    "user_conversion_rate",
    "category_share_recent",  # share of the user's recent items in the candidate's category
    "brand_share_recent",
    "seen_recently",
    "carted_recently",  # in the recent sequence as add_to_cart: strong intent
    "item_log_views_7d",  # trend: what is hot this week
    "item_log_purchases_7d",
    "item_log_age_days",  # log1p(days since launch as of the item snapshot)
    "cooc_recent",  # co-occurrence evidence between the recent items (recency-weighted) and the candidate
    "cooc_last",  # ... and the single most recent item: "goes with what you just looked at"
)


def _num(user: Mapping[str, Any], key: str) -> float:
    v = user.get(key)
    return float(v) if v is not None else 0.0


def cooccurrence_scores(cooccurrence: Any, history: list[str], item_ids: np.ndarray,
                        rows: np.ndarray | None = None) -> np.ndarray:
    """[2, len(item_ids)]: evidence from the recent items and from the last one (0 = none).

    ``rows``: the items' rows in the co-occurrence model (-1: not in it), if the caller keeps
    that map; looked up by id otherwise."""
    out = np.zeros((2, len(item_ids)), dtype=np.float32)
    if cooccurrence is None or not history:
        return out
    cols = rows if rows is not None else np.array([cooccurrence.position.get(i, -1) for i in item_ids], dtype=np.int64)
    for row, h in enumerate((history, history[-1:])):
        found, scores = cooccurrence.sparse_scores(h)  # ascending model rows: look the candidates up
        if not len(found):
            continue
        at = np.minimum(np.searchsorted(found, cols), len(found) - 1)
        hit = (cols >= 0) & (found[at] == cols)
        out[row, hit] = scores[at[hit]]
    return np.log1p(np.maximum(out, 0.0))


def _share(codes: np.ndarray, n_codes: int, recent: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Per candidate: the share of the recent items with the candidate's code (category, brand),
    codes being 0..n_codes-1 (a count per code: no sort of the recent items)."""
    if not len(recent):
        return np.zeros(len(candidates))
    return np.bincount(codes[recent], minlength=n_codes)[codes[candidates]] / len(recent)


def is_member(values: np.ndarray, members: np.ndarray) -> np.ndarray:
    """``np.isin(values, members)`` for integer arrays, by binary search in the sorted members:
    a request's few dozen recent or blocked items against its hundreds of candidates, where
    ``np.isin`` pays for sorting both."""
    if not len(members):
        return np.zeros(len(values), dtype=bool)
    members = np.sort(members)
    return members[np.minimum(np.searchsorted(members, values), len(members) - 1)] == values


# The features that depend on the candidate alone, in their FEATURE_NAMES columns: computed
# for every item once per table (item_columns), so that a request gathers one row per candidate.
_ITEM_ONLY = [1, 2, 3, 4, 14, 15, 16]


def item_columns(items: ItemTable) -> np.ndarray:
    """[len(items), 8] float64: the _ITEM_ONLY features of every item, then its price; made on
    first use and kept with the table (a large catalog's candidates are scattered over memory:
    one row each instead of a read in ten arrays)."""
    block = items.derived.get("ranking_item_columns")
    if block is None:
        created = items.created_epoch
        age = np.where(created > 0, np.log1p(np.maximum(items.as_of_epoch - created, 0.0) / 86400.0), 0.0)
        block = np.column_stack([np.log1p(items.n_view), np.log1p(items.n_purchase), items.conversion_rate,
                                 np.log1p(items.price), np.log1p(items.n_view_7d), np.log1p(items.n_purchase_7d),
                                 age, items.price]).astype(np.float64, copy=False)
        items.derived["ranking_item_columns"] = block
    return block


def rank_features(user: Mapping[str, Any], candidates: np.ndarray, retrieval_scores: np.ndarray,
                  items: ItemTable, cooccurrence: Any = None, item_to_cooccurrence: np.ndarray | None = None) -> np.ndarray:
    """[len(candidates), len(FEATURE_NAMES)] float32 matrix; ``candidates`` are ItemTable positions.

    ``item_to_cooccurrence``: optional ItemTable position → co-occurrence row map (serving keeps
    one; it saves a dict lookup per candidate)."""
    c = np.asarray(candidates, dtype=np.int64)
    n = len(c)
    recent = list(user.get("recent_items") or [])
    types = list(user.get("recent_event_types") or [])
    recent_pos = items.positions(recent)
    avg_price = _num(user, "avg_purchase_price")
    item_part = item_columns(items)[c]  # one row per candidate: one cache line, not ten arrays
    price = item_part[:, -1]

    carted_pos = items.positions([i for i, t in zip(recent, types) if t == "add_to_cart"])

    x = np.empty((n, len(FEATURE_NAMES)), dtype=np.float32)
    x[:, 0] = retrieval_scores
    x[:, _ITEM_ONLY] = item_part[:, :-1]
    x[:, 5] = np.log((price + 1.0) / (avg_price + 1.0)) if avg_price > 0 else 0.0
    x[:, 6] = float(avg_price > 0)
    x[:, 7] = np.log1p(_num(user, "n_view"))
    x[:, 8] = np.log1p(_num(user, "n_purchase"))
    x[:, 9] = _num(user, "conversion_rate")
    x[:, 10] = _share(items.category_code, items.category_count, recent_pos, c)
    x[:, 11] = _share(items.brand_code, items.brand_count, recent_pos, c)
    x[:, 12] = is_member(c, recent_pos)
    x[:, 13] = is_member(c, carted_pos)
    rows = item_to_cooccurrence[c] if item_to_cooccurrence is not None else None
    x[:, 17:19] = cooccurrence_scores(cooccurrence, recent, items.item_ids[c], rows).T
    return x
