"""Candidates.merge: each item once, in first-found order, with every source that found it."""
from __future__ import annotations

import numpy as np
import pytest

from serving.candidates import Candidates, passing


def test_merge_keeps_first_found_order_and_every_source():
    c = Candidates.merge([(np.array([5, 3]), "two_tower"), ([3, 7], "cooccurrence"), ([], "trending"),
                          (np.array([9, 5]), "popular"), ([7], "cart")])
    assert c.positions.tolist() == [5, 3, 7, 9] and list(c) == [5, 3, 7, 9] and len(c) == 4
    assert [Candidates.names(int(m)) for m in c.masks] == [
        ["two_tower", "popular"], ["two_tower", "cooccurrence"], ["cooccurrence", "cart"], ["popular"]]


def test_merge_of_nothing_is_empty():
    c = Candidates.merge([([], "two_tower")])
    assert len(c) == 0 and c.masks.dtype == np.int64
    assert len(Candidates.merge([])) == 0


def test_merge_equals_a_dict_of_first_findings_on_random_parts():
    rng = np.random.default_rng(0)
    seen = np.full(40, -1, np.int32)  # one scratch for every merge, as a serving thread keeps it
    sources = ["two_tower", "cooccurrence", "trending", "new", "popular", "cart", "viewed", "similar"]
    for _ in range(200):
        parts = [(rng.integers(0, 40, size=int(rng.integers(0, 30))), str(rng.choice(sources)))
                 for _ in range(int(rng.integers(1, 6)))]
        want: dict[int, set[str]] = {}
        for positions, source in parts:
            for p in positions.tolist():
                want.setdefault(p, set()).add(source)
        c = Candidates.merge(parts, seen)
        assert c.positions.tolist() == list(want)
        assert [set(Candidates.names(int(m))) for m in c.masks] == list(want.values())
        assert (seen == -1).all()  # the scratch is clean for the next request


def test_a_position_outside_the_scratch_is_an_error_that_leaves_it_clean():
    seen = np.full(10, -1, np.int32)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        Candidates.merge([(np.array([1, 2]), "two_tower"), ([12], "cart")], seen)
    assert (seen == -1).all()
    assert Candidates.merge([(np.array([1, 2]), "two_tower")], seen).positions.tolist() == [1, 2]


@pytest.mark.parametrize("seed", range(6))
def test_passing_equals_the_numpy_filters_on_random_requests(seed):
    """The compiled request filters against their numpy formulation: blocked items, availability,
    a category (one that exists, one that does not, or any) and a price limit."""
    rng = np.random.default_rng(seed)
    n = 300
    category_code, price = rng.integers(0, 7, n), rng.uniform(1, 100, n).round(1)
    price[rng.integers(0, n, 5)] = np.nan  # unknown prices fail a price limit, as in numpy
    available = rng.random(n) < 0.8 if seed % 2 else np.zeros(0, dtype=bool)  # empty: every item
    positions = rng.integers(0, n, rng.integers(0, 400))
    blocked = np.sort(rng.choice(n, rng.integers(0, 30), replace=False))
    category = [-1, 3, -2][seed % 3]  # any, one of them, no such category
    max_price = [0.0, 40.0][seed % 2 == 0]
    want = ~np.isin(positions, blocked)
    if len(available):
        want &= available[positions]
    if category != -1:
        want &= category_code[positions] == category
    if max_price > 0:
        want &= price[positions] <= max_price
    got = passing(positions, blocked, available, category_code, category, price, max_price)
    assert got.dtype == bool and np.array_equal(got, want)
