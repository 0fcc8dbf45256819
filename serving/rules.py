"""Business rules over the ranked list: what a shop wants on a page besides the best scores.

The idea: the ranker orders by expected conversion, which happily fills a page with ten
near-identical phone cases. The page is then picked from the ranked list under three rules:
- diversity: at most ``max_category_share`` of the page from one category;
- a cross-category slot: at least ``cross_category_slots`` items from categories the user has
  not looked at recently (discovery; only for users with a history);
- an exploration slot: at least ``new_item_slots`` new items when any is a candidate, so new
  arrivals get exposure before they have data.
A slot item replaces the lowest-ranked pick that no rule protects. When the rules cannot be met
(a category filter, too few candidates) the page is filled by score instead: never fewer items.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from feature_repo.errors import ConfigError


@dataclass(frozen=True)
class Rules:
    """Page rules (documented defaults)."""

    max_category_share: float = 0.5  # of k, rounded up; 1.0 turns diversity off
    cross_category_slots: int = 1
    new_item_slots: int = 1
    repeat_purchase_rate: float = 0.2  # an item bought before is shown again only above this repeat rate

    def __post_init__(self) -> None:
        if not 0 < self.max_category_share <= 1:
            raise ConfigError(f"rules.max_category_share={self.max_category_share} must be in (0, 1]; 1 turns "
                              "diversity off.")
        if self.cross_category_slots < 0 or self.new_item_slots < 0:
            raise ConfigError("rules.cross_category_slots and rules.new_item_slots must be >= 0 (0 turns the slot off).")
        if not 0 <= self.repeat_purchase_rate <= 1:
            raise ConfigError(f"rules.repeat_purchase_rate={self.repeat_purchase_rate} must be in [0, 1]; 1 never "
                              "shows a bought item again.")


SLOT_NAMES = ("", "explore_new", "other_category")  # pick_ranks' slot codes
_NO_FLAGS = np.zeros(0, dtype=np.bool_)


def pick_page(ranked: Sequence[int], k: int, category: Sequence[Hashable], rules: Rules,
              other_category: Sequence[bool] | None = None,
              is_new: Sequence[bool] | None = None) -> tuple[list[int], dict[int, str]]:
    """The page (ranked order kept) and the slot that brought each slot item in.

    ``ranked``: candidates best first, each once; ``category[p]``: candidate p's category.
    ``other_category[p]``: p is outside the user's recent categories (None: no cross-category
    slot). ``is_new[p]``: p is a new item (None: no slot). Both are per-candidate flags.
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    if not len(ranked):
        return [], {}
    codes = np.asarray(category)
    if codes.dtype.kind not in "iu" or codes.min() < 0:  # any other labels: numbered from 0
        codes = np.unique(codes, return_inverse=True)[1]

    def by_rank(flags: Sequence[bool] | None) -> np.ndarray:
        return _NO_FLAGS if flags is None else np.asarray(flags, dtype=np.bool_)[ranked]

    ranks, slots = pick_ranks(codes.astype(np.int64)[ranked], k, category_cap(rules, k), by_rank(is_new),
                              rules.new_item_slots, by_rank(other_category), rules.cross_category_slots)
    page = ranked[ranks].tolist()
    return page, {p: SLOT_NAMES[s] for p, s in zip(page, slots.tolist()) if s}


def category_cap(rules: Rules, k: int) -> int:
    """Items of one category allowed on a page of k."""
    return max(1, math.ceil(rules.max_category_share * k))


@njit(cache=True, nogil=True)
def pick_ranks(category, k, cap, is_new, new_wanted, other_category, other_wanted):  # pragma: no cover - compiled
    """The rules on a ranked list, compiled (a page is ~40 steps of Python per request otherwise).

    Arrays by rank (0 = best): ``category`` codes (>= 0); ``is_new`` and ``other_category``
    flags, or empty for no such slot. Returns the page's ranks (ascending) and, per rank, its
    slot (an index into SLOT_NAMES: 0 for an item there by score). tests/serving/test_rules.py
    holds it to a one-candidate-at-a-time Python version.
    """
    n = len(category)
    counts = np.zeros(category.max() + 1 if n else 0, np.int64)
    picks = np.empty(k, np.int64)  # ranks on the page, in the order picked
    slot = np.zeros(k, np.int8)
    taken = 0
    for i in range(n):
        if taken == k:
            break
        if counts[category[i]] < cap:
            picks[taken] = i
            taken += 1
            counts[category[i]] += 1
    for kind in (1, 2):
        passes, wanted = (is_new, new_wanted) if kind == 1 else (other_category, other_wanted)
        if wanted == 0 or len(passes) == 0:
            continue
        chosen = np.zeros(n, np.bool_)  # on the page when this slot began (one it replaces is not taken back)
        for j in range(taken):
            chosen[picks[j]] = True
        have = 0
        for j in range(taken):
            have += passes[picks[j]]
        for i in range(n):
            if have >= wanted:
                break
            if not passes[i] or chosen[i]:
                continue
            c = category[i]
            below_cap = counts[c] < cap
            if taken < k and below_cap:
                at = taken
                taken += 1
            else:
                # The victim: the lowest-ranked pick no rule protects; a slot never breaks the cap.
                at = -1
                for j in range(taken - 1, -1, -1):
                    if slot[j] == 0 and not passes[picks[j]] and (below_cap or category[picks[j]] == c):
                        at = j
                        break
                if at < 0:
                    continue
                counts[category[picks[at]]] -= 1
            picks[at] = i
            slot[at] = kind
            counts[c] += 1
            chosen[i] = True
            have += 1
    if taken < k:  # the rules left holes: fill them by score
        on_page = np.zeros(n, np.bool_)
        for j in range(taken):
            on_page[picks[j]] = True
        for i in range(n):
            if taken == k:
                break
            if not on_page[i]:
                picks[taken] = i
                slot[taken] = 0
                taken += 1
    order = np.argsort(picks[:taken])
    return picks[:taken][order], slot[:taken][order]


@njit(cache=True, nogil=True)
def pick_item_ranks(order, positions, category_code, created_epoch, new_cut, recent_categories, k, cap,
                    new_wanted, other_wanted):  # pragma: no cover - compiled
    """``pick_ranks`` for a request's candidates (ItemTable ``positions``) in ``order`` (indices
    into positions, best first): new items are those created at or after ``new_cut`` (none
    when it is <= 0), and the cross-category slot looks outside ``recent_categories`` (a mask
    over category codes; no slot when none is set). One compiled call instead of a numpy call
    per flag (serving/recommender.py)."""
    n = len(order)
    category = np.empty(n, np.int64)
    for i in range(n):
        category[i] = category_code[positions[order[i]]]
    is_new = _NO_FLAGS
    if new_cut > 0:
        is_new = np.empty(n, np.bool_)
        for i in range(n):
            is_new[i] = created_epoch[positions[order[i]]] >= new_cut
    other = _NO_FLAGS
    if recent_categories.any():
        other = np.empty(n, np.bool_)
        for i in range(n):
            other[i] = not recent_categories[category[i]]
    return pick_ranks(category, k, cap, is_new, new_wanted, other, other_wanted)
