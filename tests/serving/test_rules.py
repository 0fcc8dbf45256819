"""Page rules (serving/rules.py) on hand-made ranked lists: pure logic, no models."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from feature_repo.errors import ConfigError
from serving.rules import SLOT_NAMES, Rules, category_cap, pick_item_ranks, pick_page

# Candidates 0..9 best first; 0-5 are phones, 6-7 cases, 8 books, 9 toys; 7 and 9 are new.
CATEGORY = ["phones"] * 6 + ["cases"] * 2 + ["books", "toys"]
NEW = [p in (7, 9) for p in range(10)]  # per candidate: is it new?


def test_diversity_caps_one_category():
    page, slots = pick_page(range(10), 4, CATEGORY, Rules(0.5, 0, 0))
    assert page == [0, 1, 6, 7] and slots == {}  # at most ceil(0.5 * 4) = 2 phones, ranked order kept


def test_slots_replace_the_lowest_unprotected_pick():
    page, slots = pick_page(range(10), 4, CATEGORY, Rules(1.0, 1, 1),
                            other_category=[c in ("books", "toys") for c in CATEGORY], is_new=NEW)
    # New-item slot: 7 is new and replaces 3; cross-category slot: 8 replaces 2 (7 is protected).
    assert page == [0, 1, 7, 8] and slots == {7: "explore_new", 8: "other_category"}


def test_a_slot_already_filled_by_score_costs_nothing():
    page, slots = pick_page([9, 0, 1, 2], 3, CATEGORY, Rules(1.0, 1, 1),
                            other_category=[c == "toys" for c in CATEGORY], is_new=NEW)
    assert page == [9, 0, 1] and slots == {}


def test_the_page_is_never_short():
    # Only phones: the cap cannot be met, the page is filled by score instead.
    page, _ = pick_page(range(6), 5, CATEGORY, Rules(0.2, 1, 1),
                        other_category=[False] * 10, is_new=[False] * 10)
    assert page == [0, 1, 2, 3, 4]
    assert pick_page([], 5, CATEGORY, Rules())[0] == []


@pytest.mark.parametrize("kwargs, field", [({"max_category_share": 0}, "max_category_share"),
                                           ({"new_item_slots": -1}, "slots"),
                                           ({"repeat_purchase_rate": 2}, "repeat_purchase_rate")])
def test_rules_are_validated(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        Rules(**kwargs)


def test_a_slot_never_breaks_the_category_cap():
    # The only new item is a phone and phones are at the cap (2 of 4): it replaces the lower
    # phone, not a case, so the page still holds 2 phones.
    page, slots = pick_page(range(10), 4, CATEGORY, Rules(0.5, 0, 1), is_new=[p == 4 for p in range(10)])
    assert page == [0, 4, 6, 7] and slots == {4: "explore_new"}


def _reference_pick_page(ranked, k, category, rules, other_category=None, is_new=None):
    """The rules as first written, one Python test per candidate: the oracle for pick_page."""
    cap = max(1, math.ceil(rules.max_category_share * k))
    page, counts = [], Counter()
    for p in ranked:
        if len(page) == k:
            break
        if counts[category[p]] < cap:
            page.append(p)
            counts[category[p]] += 1
    slots = {}
    for name, wanted, flags in (("explore_new", rules.new_item_slots, is_new),
                                ("other_category", rules.cross_category_slots, other_category)):
        if flags is None or not wanted:
            continue
        have, chosen = sum(1 for p in page if flags[p]), set(page)
        for p in ranked:
            if have >= wanted:
                break
            if p in chosen or not flags[p]:
                continue
            victims = [i for i in range(len(page) - 1, -1, -1) if page[i] not in slots and not flags[page[i]]
                       and (counts[category[p]] < cap or category[page[i]] == category[p])]
            if len(page) < k and counts[category[p]] < cap:
                page.append(p)
            elif victims:
                counts[category[page[victims[0]]]] -= 1
                page[victims[0]] = p
            else:
                continue
            counts[category[p]] += 1
            slots[p] = name
            chosen.add(p)
            have += 1
    if len(page) < k:
        chosen = set(page)
        page += [p for p in ranked if p not in chosen][: k - len(page)]
    return [p for p in ranked if p in set(page)], slots


def test_pages_equal_the_one_candidate_at_a_time_rules_on_random_lists():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(0, 60))
        category = rng.integers(0, int(rng.integers(1, 6)), size=n)
        flags = [rng.random(n) < share for share in rng.choice([0.0, 0.02, 0.1, 0.5], size=2)]
        rules = Rules(float(rng.choice([0.2, 0.5, 1.0])), int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        ranked, k = rng.permutation(n), int(rng.integers(1, 25))
        got = pick_page(ranked, k, category, rules, other_category=flags[0], is_new=flags[1])
        assert got == _reference_pick_page(ranked.tolist(), k, category, rules, flags[0], flags[1])


def test_the_served_variant_equals_the_rules_on_item_table_arrays():
    """pick_item_ranks (what Recommender._page calls) on a catalog's arrays: the same page and
    slots as the oracle given the flags those arrays imply."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        catalog, n = 200, int(rng.integers(0, 60))
        category_code = rng.integers(0, int(rng.integers(1, 6)), size=catalog)
        created = rng.choice([0.0, 50.0, 100.0], size=catalog)
        recent = rng.random(category_code.max() + 1) < rng.choice([0.0, 0.3])
        new_cut = float(rng.choice([0.0, 60.0]))
        positions = rng.choice(catalog, size=n, replace=False)
        order = rng.permutation(n)
        rules = Rules(float(rng.choice([0.2, 0.5, 1.0])), int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        k = int(rng.integers(1, 25))
        ranks, kinds = pick_item_ranks(order, positions, category_code, created, new_cut, recent, k,
                                       category_cap(rules, k), rules.new_item_slots, rules.cross_category_slots)
        got = (order[ranks].tolist(), {int(c): SLOT_NAMES[s] for c, s in zip(order[ranks], kinds) if s})
        want = _reference_pick_page(order.tolist(), k, category_code[positions], rules,
                                    ~recent[category_code[positions]] if recent.any() else None,
                                    created[positions] >= new_cut if new_cut > 0 else None)
        assert got == want


def test_any_category_labels_give_the_same_page():
    as_text = pick_page(range(10), 4, CATEGORY, Rules(0.5, 1, 1), is_new=NEW)
    codes = {"phones": -1, "cases": 7, "books": 0, "toys": -5}  # negative codes too
    assert pick_page(range(10), 4, [codes[c] for c in CATEGORY], Rules(0.5, 1, 1), is_new=NEW) == as_text
