"""Features of (user, candidate) pairs, computed the same way in training and in serving.

numpy, and numba for the one per-request loop (``_fill_rows``): serving imports this module
without TensorFlow-side training code. The user's
features are the dict a Feast read of the ``ranking_user_v1`` service returns (one value per
field); item features come from the in-memory ItemTable; ``retrieval_scores`` are the two-tower
inner products of the candidates; ``cooccurrence`` (optional) is the item-to-item model whose
evidence between the user's recent items and each candidate becomes two cross features.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from numba import njit

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


# The features that depend on the candidate alone, in their FEATURE_NAMES columns: computed
# for every item once per table (item_columns), so that a request gathers one row per candidate.
_ITEM_ONLY = [1, 2, 3, 4, 14, 15, 16]
_ITEM_ONLY_T = tuple(_ITEM_ONLY)  # the compiled kernel's copy (a constant)
PRICE_COLUMN, CATEGORY_COLUMN, BRAND_COLUMN = 7, 8, 9  # item_columns' columns after the _ITEM_ONLY ones


def item_columns(items: ItemTable) -> np.ndarray:
    """[len(items), 10] float64: the _ITEM_ONLY features of every item, then its price, category
    code and brand code (exact in float64); made on first use and kept with the table. One row per
    candidate instead of a read in several arrays: a large catalog's candidates are scattered
    over memory, and under load each read is a cache miss (an 80-byte row is two cache lines,
    the three arrays it replaces were three to four; docs/benchmarks.md, twenty-fifth session)."""
    block = items.derived.get("ranking_item_columns")
    if block is None:
        created = items.created_epoch
        age = np.where(created > 0, np.log1p(np.maximum(items.as_of_epoch - created, 0.0) / 86400.0), 0.0)
        block = np.column_stack([np.log1p(items.n_view), np.log1p(items.n_purchase), items.conversion_rate,
                                 np.log1p(items.price), np.log1p(items.n_view_7d), np.log1p(items.n_purchase_7d),
                                 age, items.price, items.category_code, items.brand_code]).astype(np.float64, copy=False)
        items.derived["ranking_item_columns"] = block
    return block


def rank_features(user: Mapping[str, Any], candidates: np.ndarray, retrieval_scores: np.ndarray,
                  items: ItemTable, cooccurrence: Any = None, item_to_cooccurrence: np.ndarray | None = None) -> np.ndarray:
    """[len(candidates), len(FEATURE_NAMES)] float32 matrix; ``candidates`` are ItemTable positions.

    ``item_to_cooccurrence``: optional ItemTable position → co-occurrence row map (serving keeps
    one; it saves a dict lookup per candidate). ``cooccurrence`` (optional): the item-to-item
    model whose evidence between the recent items (and the last one) and each candidate fills
    cooc_recent and cooc_last (log1p of the score; 0 = no evidence)."""
    c = np.asarray(candidates, dtype=np.int64)
    recent = list(user.get("recent_items") or [])
    types = list(user.get("recent_event_types") or [])
    recent_positions, carted_positions = _positions_of_recent(items, recent, types)
    avg_price = _num(user, "avg_purchase_price")
    user_values = np.array([math.log1p(_num(user, "n_view")), math.log1p(_num(user, "n_purchase")),
                            _num(user, "conversion_rate")])
    if cooccurrence is not None and recent and len(c):
        rows = (item_to_cooccurrence[c] if item_to_cooccurrence is not None else
                np.array([cooccurrence.position.get(i, -1) for i in items.item_ids[c]], dtype=np.int64))
        # The recent items' evidence is shared with the co-occurrence candidates (sorted rows,
        # found by halving); the last item's is its neighbour list as stored, found through the
        # model's row marks (sorting that one list cost a request ~40 us).
        found_all, scores_all = cooccurrence.sparse_scores(recent)
        last_rows, last_scores = cooccurrence.neighbour_rows(recent[-1])
        marks = cooccurrence.marks()
    else:
        rows, (found_all, scores_all, last_rows, last_scores) = np.full(len(c), -1, np.int64), _NO_EVIDENCE
        marks = _NO_MARKS
    x = np.empty((len(c), len(FEATURE_NAMES)), dtype=np.float32)
    _fill_rows(x, c, np.asarray(retrieval_scores, dtype=np.float32), item_columns(items), avg_price, user_values,
               recent_positions, carted_positions, items.category_code, items.category_count,
               items.brand_code, items.brand_count, np.asarray(rows, dtype=np.int64),
               found_all.astype(np.int64, copy=False), scores_all.astype(np.float64, copy=False),
               last_rows.astype(np.int32, copy=False), last_scores.astype(np.float32, copy=False), marks)
    return x


def _positions_of_recent(items: ItemTable, recent: list[str], types: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """ItemTable positions of the recent items in the catalog, and of those added to the cart
    (a type missing at the end counts as no cart), in one pass over the history."""
    get, seen, carted = items.position.get, [], []
    for i, item in enumerate(recent):
        p = get(item)
        if p is not None:
            seen.append(p)
            if i < len(types) and types[i] == "add_to_cart":
                carted.append(p)
    return np.array(seen, dtype=np.int64), np.array(carted, dtype=np.int64)


_NO_EVIDENCE = np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int32), np.zeros(0, np.float32)
_NO_MARKS = np.zeros(0, np.int32)


@njit(cache=True, nogil=True)
def _find(sorted_values: np.ndarray, value: int) -> int:
    """The index of ``value`` in an ascending array, or -1 (halving without a branch to mispredict)."""
    n = len(sorted_values)
    if n == 0:
        return -1
    base = 0
    while n > 1:
        half = n >> 1
        base = base + half if sorted_values[base + half] <= value else base
        n -= half
    return base if sorted_values[base] == value else -1


@njit(cache=True, nogil=True)
def _fill_rows(x, c, retrieval, block, avg_price, user_values, recent, carted, category_code, category_count,
               brand_code, brand_count, cooc_rows, found_all, scores_all, last_rows, last_scores, marks):  # pragma: no cover - compiled
    """Every feature of every candidate in one pass (numba: a request's ~600 rows cost what a few
    numpy calls would; the numpy formulation is the test's oracle, tests/ranking/test_features.py).
    ``marks``: -1 per co-occurrence row; the last item's neighbours are marked there with their
    place in ``last_rows`` while the rows are filled, and reset before returning."""
    for j in range(len(last_rows)):
        marks[last_rows[j]] = j
    n_recent = max(len(recent), 1)  # without recent items every count is 0
    in_category = np.zeros(category_count, np.int64)
    in_brand = np.zeros(brand_count, np.int64)
    for r in recent:
        in_category[category_code[r]] += 1
        in_brand[brand_code[r]] += 1
    recent_sorted, carted_sorted = np.sort(recent), np.sort(carted)
    for i in range(len(c)):
        p = c[i]
        x[i, 0] = retrieval[i]
        for j in range(7):  # the _ITEM_ONLY columns, in their order
            x[i, _ITEM_ONLY_T[j]] = block[p, j]
        x[i, 5] = np.log((block[p, PRICE_COLUMN] + 1.0) / (avg_price + 1.0)) if avg_price > 0 else 0.0
        x[i, 6] = 1.0 if avg_price > 0 else 0.0
        x[i, 7], x[i, 8], x[i, 9] = user_values[0], user_values[1], user_values[2]
        x[i, 10] = in_category[int(block[p, CATEGORY_COLUMN])] / n_recent
        x[i, 11] = in_brand[int(block[p, BRAND_COLUMN])] / n_recent
        x[i, 12] = 1.0 if _find(recent_sorted, p) >= 0 else 0.0
        x[i, 13] = 1.0 if _find(carted_sorted, p) >= 0 else 0.0
        row = cooc_rows[i]
        x[i, 17] = x[i, 18] = 0.0
        if row >= 0:
            j = _find(found_all, row)
            if j >= 0:
                x[i, 17] = np.log1p(np.float32(max(scores_all[j], 0.0)))
            j = marks[row] if len(last_rows) else -1
            if j >= 0:
                x[i, 18] = np.log1p(np.float32(max(last_scores[j], np.float32(0.0))))
    for j in range(len(last_rows)):
        marks[last_rows[j]] = -1
