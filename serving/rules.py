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
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def pick_page(ranked: Sequence[int], k: int, category: Callable[[int], str], rules: Rules,
              other_category: Callable[[int], bool] | None = None,
              is_new: Callable[[int], bool] | None = None) -> tuple[list[int], dict[int, str]]:
    """The page (ranked order kept) and the slot that brought each slot item in.

    ``ranked``: candidates best first. ``other_category(p)``: p is outside the user's recent
    categories (None: no cross-category slot). ``is_new(p)``: p is a new item (None: no slot).
    """
    cap = max(1, math.ceil(rules.max_category_share * k))
    page: list[int] = []
    counts: Counter[str] = Counter()
    for p in ranked:
        if len(page) == k:
            break
        if counts[category(p)] < cap:
            page.append(p)
            counts[category(p)] += 1
    slots: dict[int, str] = {}
    for name, wanted, test in (("explore_new", rules.new_item_slots, is_new),
                               ("other_category", rules.cross_category_slots, other_category)):
        if test is None or not wanted:
            continue
        have = sum(1 for p in page if test(p))
        chosen = set(page)
        for p in ranked:
            if have >= wanted:
                break
            if p in chosen or not test(p):
                continue
            # The victim: the lowest-ranked pick no rule protects; a slot never breaks the cap.
            victims = [i for i in range(len(page) - 1, -1, -1) if page[i] not in slots and not test(page[i])
                       and (counts[category(p)] < cap or category(page[i]) == category(p))]
            if len(page) < k and counts[category(p)] < cap:
                page.append(p)
            elif victims:
                counts[category(page[victims[0]])] -= 1
                page[victims[0]] = p
            else:
                continue
            counts[category(p)] += 1
            slots[p] = name
            chosen.add(p)
            have += 1
    if len(page) < k:  # the rules left holes: fill them by score
        chosen = set(page)
        page += [p for p in ranked if p not in chosen][: k - len(page)]
    on_page, ordered = set(page), []
    for p in ranked:  # the page in ranked order; stops at the last pick, not the end of the list
        if p in on_page:
            ordered.append(p)
            if len(ordered) == len(on_page):
                break
    return ordered, slots
