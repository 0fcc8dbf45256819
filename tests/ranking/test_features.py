"""rank_features: the (user, candidate) matrix the ranker sees, on a hand-made ItemTable."""
from __future__ import annotations

import numpy as np
import pytest

from feature_repo.data.item_table import ItemTable
from ranking.features import (BRAND_COLUMN, CATEGORY_COLUMN, FEATURE_NAMES, PRICE_COLUMN, item_columns,
                              rank_features)

COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


@pytest.fixture()
def items() -> ItemTable:
    return ItemTable(
        item_ids=np.array(["A", "B", "C", "D", "E"], dtype=object),
        category=np.array(["shoes", "shoes", "books", "books", "toys"], dtype=object),
        brand=np.array(["b1", "b2", "b3", "b3", "b4"], dtype=object),
        price=np.array([10.0, 20.0, 30.0, 40.0, 50.0]),
        n_view=np.array([100.0, 50.0, 10.0, 0.0, 5.0]),
        n_purchase=np.array([10.0, 5.0, 1.0, 0.0, 0.0]),
        conversion_rate=np.array([0.1, 0.1, 0.1, 0.0, 0.0]),
    )


USER = {
    "recent_items": ["A", "B", "C", "X"],  # X is not in the catalog
    "recent_event_types": ["view", "add_to_cart", "click", "view"],
    "avg_purchase_price": 20.0,
    "n_view": 10,
    "n_purchase": 2,
    "conversion_rate": 0.2,
    "favourite_category": "shoes",
}
ALL = np.arange(5)


def test_shape_and_dtype(items):
    x = rank_features(USER, ALL, np.linspace(1, 0, 5), items)
    assert x.shape == (5, len(FEATURE_NAMES)) == (5, 19)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x[:, COL["retrieval_score"]], np.linspace(1, 0, 5))
    # candidate order follows the positions passed in
    y = rank_features(USER, np.array([4, 0]), np.zeros(2), items)
    np.testing.assert_array_equal(y, x[[4, 0]] * np.r_[0, np.ones(18)].astype(np.float32))


def test_recent_behaviour_features(items):
    x = rank_features(USER, ALL, np.zeros(5), items)
    # known recent items: A, B (shoes), C (books); X is left out of the shares
    np.testing.assert_allclose(x[:, COL["category_share_recent"]], [2 / 3, 2 / 3, 1 / 3, 1 / 3, 0.0], rtol=1e-6)
    np.testing.assert_allclose(x[:, COL["brand_share_recent"]], [1 / 3, 1 / 3, 1 / 3, 1 / 3, 0.0], rtol=1e-6)
    assert x[:, COL["seen_recently"]].tolist() == [1, 1, 1, 0, 0]
    assert x[:, COL["carted_recently"]].tolist() == [0, 1, 0, 0, 0]


def test_item_and_user_numbers(items):
    x = rank_features(USER, ALL, np.zeros(5), items)
    np.testing.assert_allclose(x[:, COL["item_log_views"]], np.log1p(items.n_view), rtol=1e-6)
    np.testing.assert_allclose(x[:, COL["item_log_purchases"]], np.log1p(items.n_purchase), rtol=1e-6)
    np.testing.assert_allclose(x[:, COL["item_conversion_rate"]], items.conversion_rate, rtol=1e-6)
    np.testing.assert_allclose(x[:, COL["item_log_price"]], np.log1p(items.price), rtol=1e-6)
    np.testing.assert_allclose(x[:, COL["price_vs_user_avg"]], np.log((items.price + 1) / 21.0), rtol=1e-5)
    assert x[1, COL["price_vs_user_avg"]] == pytest.approx(0.0, abs=1e-6)  # B costs the user's average
    assert (x[:, COL["user_has_purchased"]] == 1).all()
    assert x[0, COL["user_log_views"]] == pytest.approx(np.log1p(10))
    assert x[0, COL["user_log_purchases"]] == pytest.approx(np.log1p(2))
    assert x[0, COL["user_conversion_rate"]] == pytest.approx(0.2)


def test_price_vs_user_avg_is_zero_without_purchases(items):
    user = {**USER, "avg_purchase_price": 0.0, "n_purchase": 0}
    x = rank_features(user, ALL, np.zeros(5), items)
    assert (x[:, COL["price_vs_user_avg"]] == 0).all()
    assert (x[:, COL["user_has_purchased"]] == 0).all()


@pytest.mark.parametrize("user", [
    {},
    # what a Feast online read returns for an unknown user: every feature None
    {"recent_items": None, "recent_event_types": None, "avg_purchase_price": None, "n_view": None,
     "n_purchase": None, "conversion_rate": None, "favourite_category": None},
], ids=["empty", "all-none"])
def test_cold_user(items, user):
    x = rank_features(user, ALL, np.zeros(5), items)
    assert x.shape == (5, len(FEATURE_NAMES))
    assert np.isfinite(x).all()
    user_cols = ["price_vs_user_avg", "user_has_purchased", "user_log_views", "user_log_purchases",
                 "user_conversion_rate", "category_share_recent", "brand_share_recent", "seen_recently",
                 "carted_recently"]
    assert (x[:, [COL[c] for c in user_cols]] == 0).all()
    # item features are still there
    np.testing.assert_allclose(x[:, COL["item_log_views"]], np.log1p(items.n_view), rtol=1e-6)


def test_empty_candidates(items):
    x = rank_features(USER, np.array([], dtype=np.int64), np.array([], dtype=np.float32), items)
    assert x.shape == (0, len(FEATURE_NAMES))


def test_cooccurrence_cross_features(items):
    """Evidence between the recent items and a candidate, and with the last item alone."""
    from retrieval.cooccurrence import CooccurrenceModel

    # C is always followed by D; A by E.
    cooc = CooccurrenceModel.fit([["C", "D"], ["C", "D"], ["A", "E"], ["B", "A"]], item_ids=list(items.item_ids))
    x = rank_features(USER, ALL, np.zeros(5), items, cooc)  # recent: A, B, C, X (X unknown: ignored)
    recent, last = x[:, COL["cooc_recent"]], x[:, COL["cooc_last"]]
    assert recent[3] > 0 and recent[4] > 0  # D goes with C, E with A
    assert last.tolist() == [0, 0, 0, 0, 0]  # the last item X has no evidence
    user = {**USER, "recent_items": ["A", "B", "C"]}
    last = rank_features(user, ALL, np.zeros(5), items, cooc)[:, COL["cooc_last"]]
    assert last[3] > 0 and last[4] == 0  # only C's neighbour
    assert np.all(rank_features(USER, ALL, np.zeros(5), items)[:, [COL["cooc_recent"], COL["cooc_last"]]] == 0)
    # serving's precomputed ItemTable → model row map gives the same features as the id lookup
    rows = np.array([cooc.position.get(i, -1) for i in items.item_ids])
    np.testing.assert_array_equal(rank_features(USER, ALL[::-1], np.zeros(5), items, cooc, rows),
                                  rank_features(USER, ALL[::-1], np.zeros(5), items, cooc))


def test_trend_and_age_features():
    table = ItemTable(item_ids=np.array(["A", "B"], dtype=object), category=np.array(["c", "c"], dtype=object),
                      brand=np.array(["b", "b"], dtype=object), price=np.array([1.0, 2.0]),
                      n_view=np.array([10.0, 10.0]), n_purchase=np.array([1.0, 1.0]),
                      conversion_rate=np.array([0.1, 0.1]), n_view_7d=np.array([7.0, 0.0]),
                      n_purchase_7d=np.array([3.0, 0.0]), created_epoch=np.array([0.0, 86400.0 * 10]),
                      as_of_epoch=86400.0 * 12)
    x = rank_features(USER, np.arange(2), np.zeros(2), table)
    np.testing.assert_allclose(x[:, COL["item_log_views_7d"]], np.log1p([7.0, 0.0]), rtol=1e-6)
    np.testing.assert_allclose(x[:, COL["item_log_purchases_7d"]], np.log1p([3.0, 0.0]), rtol=1e-6)
    # B launched 2 days before the snapshot; A has no launch time (0): age feature 0
    np.testing.assert_allclose(x[:, COL["item_log_age_days"]], [0.0, np.log1p(2.0)], rtol=1e-6)


def test_a_missing_category_or_brand_is_a_code_of_its_own():
    table = ItemTable(item_ids=np.array(["A", "B", "C"], dtype=object),
                      category=np.array(["shoes", None, "books"], dtype=object),
                      brand=np.array([None, "b1", None], dtype=object), price=np.array([1.0, 2.0, 3.0]),
                      n_view=np.zeros(3), n_purchase=np.zeros(3), conversion_rate=np.zeros(3))
    assert (table.category_code >= 0).all() and len(set(table.category_code)) == table.category_count == 3
    assert table.brand_code[0] == table.brand_code[2] != table.brand_code[1] and table.brand_count == 2
    user = {"recent_items": ["B", "C"], "recent_event_types": ["view", "view"]}
    x = rank_features(user, np.arange(3), np.zeros(3), table)  # the recent B has no category
    np.testing.assert_allclose(x[:, COL["category_share_recent"]], [0.0, 0.5, 0.5])
    np.testing.assert_allclose(x[:, COL["brand_share_recent"]], [0.5, 0.5, 0.5])


def test_item_columns_are_made_once_from_the_item_arrays(items):
    block = item_columns(items)
    assert block is item_columns(items)  # kept with the table
    np.testing.assert_array_equal(block[:, 0], np.log1p(items.n_view))
    np.testing.assert_array_equal(block[:, PRICE_COLUMN], items.price)
    np.testing.assert_array_equal(block[:, CATEGORY_COLUMN], items.category_code)
    np.testing.assert_array_equal(block[:, BRAND_COLUMN], items.brand_code)
    x = rank_features({}, np.arange(len(items)), np.zeros(len(items), np.float32), items)
    np.testing.assert_array_equal(x[:, [1, 2, 3, 4, 14, 15, 16]], block[:, :PRICE_COLUMN].astype(np.float32))


def _rank_features_oracle(user, c, retrieval, items, cooc):
    """The features in whole-array numpy, as they were computed before the compiled loop."""
    recent = list(user.get("recent_items") or [])
    types = list(user.get("recent_event_types") or [])
    recent_pos = items.positions(recent)
    carted_pos = items.positions([i for i, t in zip(recent, types) if t == "add_to_cart"])
    avg = float(user.get("avg_purchase_price") or 0.0)
    block = item_columns(items)[c]
    x = np.zeros((len(c), len(FEATURE_NAMES)), dtype=np.float32)
    x[:, 0] = retrieval
    x[:, [1, 2, 3, 4, 14, 15, 16]] = block[:, :PRICE_COLUMN]
    x[:, 5] = np.log((items.price[c] + 1.0) / (avg + 1.0)) if avg > 0 else 0.0
    x[:, 6] = float(avg > 0)
    x[:, 7] = np.log1p(float(user.get("n_view") or 0))
    x[:, 8] = np.log1p(float(user.get("n_purchase") or 0))
    x[:, 9] = float(user.get("conversion_rate") or 0)
    for col, codes, n in ((10, items.category_code, items.category_count), (11, items.brand_code, items.brand_count)):
        if len(recent_pos):
            x[:, col] = np.bincount(codes[recent_pos], minlength=n)[codes[c]] / len(recent_pos)
    x[:, 12] = np.isin(c, recent_pos)
    x[:, 13] = np.isin(c, carted_pos)
    if cooc is not None and recent:
        dense = cooc.score_histories([recent, recent[-1:]])  # [2, model items]: the batch form
        rows = np.array([cooc.position.get(i, -1) for i in items.item_ids[c]])
        for col, scores in ((17, dense[0]), (18, dense[1])):
            x[:, col] = np.log1p(np.maximum(np.where(rows >= 0, scores[np.maximum(rows, 0)], 0.0), 0.0).astype(np.float32))
    return x


def test_rank_features_equal_the_array_formulation_on_a_random_shop():
    """The compiled loop against whole-array numpy: random catalog, users, candidates, model."""
    from retrieval.cooccurrence import CooccurrenceModel

    rng = np.random.default_rng(3)
    n = 300
    ids = np.array([f"i{j}" for j in range(n)], dtype=object)
    table = ItemTable(item_ids=ids, category=rng.choice(["a", "b", "c", None], n).astype(object),
                      brand=rng.choice([f"b{j}" for j in range(12)], n).astype(object),
                      price=rng.uniform(1, 100, n), n_view=rng.integers(0, 500, n).astype(float),
                      n_purchase=rng.integers(0, 20, n).astype(float), conversion_rate=rng.uniform(0, 0.2, n),
                      n_view_7d=rng.integers(0, 50, n).astype(float), n_purchase_7d=rng.integers(0, 5, n).astype(float),
                      created_epoch=rng.uniform(0, 86400 * 30, n), as_of_epoch=86400.0 * 40)
    cooc = CooccurrenceModel.fit([list(rng.choice(ids[:250], 8)) for _ in range(400)], item_ids=list(ids[:250]))
    for trial in range(40):
        history = list(rng.choice(np.r_[ids, ["unknown"]], int(rng.integers(0, 30))))
        user = {"recent_items": history, "recent_event_types": list(rng.choice(["view", "add_to_cart"], len(history))),
                "avg_purchase_price": float(rng.choice([0.0, 30.0])), "n_view": int(rng.integers(0, 99)),
                "n_purchase": 3, "conversion_rate": 0.1}
        c = rng.permutation(n)[: int(rng.integers(0, 120))]
        retrieval = rng.normal(size=len(c)).astype(np.float32)
        model = cooc if trial % 4 else None
        np.testing.assert_allclose(rank_features(user, c, retrieval, table, model),
                                   _rank_features_oracle(user, c, retrieval, table, model), rtol=1e-6, atol=1e-7)
