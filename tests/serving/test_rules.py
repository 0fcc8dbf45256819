"""Page rules (serving/rules.py) on hand-made ranked lists: pure logic, no models."""
from __future__ import annotations

import pytest

from feature_repo.errors import ConfigError
from serving.rules import Rules, pick_page

# Candidates 0..9 best first; 0-5 are phones, 6-7 cases, 8 books, 9 toys; 7 and 9 are new.
CATEGORY = ["phones"] * 6 + ["cases"] * 2 + ["books", "toys"]
NEW = {7, 9}


def test_diversity_caps_one_category():
    page, slots = pick_page(range(10), 4, CATEGORY.__getitem__, Rules(0.5, 0, 0))
    assert page == [0, 1, 6, 7] and slots == {}  # at most ceil(0.5 * 4) = 2 phones, ranked order kept


def test_slots_replace_the_lowest_unprotected_pick():
    page, slots = pick_page(range(10), 4, CATEGORY.__getitem__, Rules(1.0, 1, 1),
                            other_category=lambda p: CATEGORY[p] in ("books", "toys"), is_new=NEW.__contains__)
    # New-item slot: 7 is new and replaces 3; cross-category slot: 8 replaces 2 (7 is protected).
    assert page == [0, 1, 7, 8] and slots == {7: "explore_new", 8: "other_category"}


def test_a_slot_already_filled_by_score_costs_nothing():
    page, slots = pick_page([9, 0, 1, 2], 3, CATEGORY.__getitem__, Rules(1.0, 1, 1),
                            other_category=lambda p: CATEGORY[p] == "toys", is_new=NEW.__contains__)
    assert page == [9, 0, 1] and slots == {}


def test_the_page_is_never_short():
    # Only phones: the cap cannot be met, the page is filled by score instead.
    page, _ = pick_page(range(6), 5, CATEGORY.__getitem__, Rules(0.2, 1, 1),
                        other_category=lambda p: False, is_new=lambda p: False)
    assert page == [0, 1, 2, 3, 4]
    assert pick_page([], 5, CATEGORY.__getitem__, Rules())[0] == []


@pytest.mark.parametrize("kwargs, field", [({"max_category_share": 0}, "max_category_share"),
                                           ({"new_item_slots": -1}, "slots"),
                                           ({"repeat_purchase_rate": 2}, "repeat_purchase_rate")])
def test_rules_are_validated(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        Rules(**kwargs)


def test_a_slot_never_breaks_the_category_cap():
    # The only new item is a phone and phones are at the cap (2 of 4): it replaces the lower
    # phone, not a case, so the page still holds 2 phones.
    page, slots = pick_page(range(10), 4, CATEGORY.__getitem__, Rules(0.5, 0, 1), is_new=lambda p: p == 4)
    assert page == [0, 4, 6, 7] and slots == {4: "explore_new"}
