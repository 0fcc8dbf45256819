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
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

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


def pick_page(ranked: Sequence[int], k: int, category: Sequence[Hashable], rules: Rules,
              other_category: Sequence[bool] | None = None,
              is_new: Sequence[bool] | None = None) -> tuple[list[int], dict[int, str]]:
    """The page (ranked order kept) and the slot that brought each slot item in.

    ``ranked``: candidates best first, each once; ``category[p]``: candidate p's category.
    ``other_category[p]``: p is outside the user's recent categories (None: no cross-category
    slot). ``is_new[p]``: p is a new item (None: no slot). Both are per-candidate flags
    (arrays), so that a slot finds its items without a Python call per candidate: the page
    stops at the first ~k candidates, a slot looks only at the ones that pass its test.
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    order = ranked.tolist()
    cap = max(1, math.ceil(rules.max_category_share * k))
    picks: list[int] = []  # ranks (indices into ``ranked``) on the page
    counts: Counter[Hashable] = Counter()
    for i, p in enumerate(order):
        if len(picks) == k:
            break
        if counts[category[p]] < cap:
            picks.append(i)
            counts[category[p]] += 1
    slots: dict[int, str] = {}  # rank → the slot that brought it in
    for name, wanted, flags in (("explore_new", rules.new_item_slots, is_new),
                                ("other_category", rules.cross_category_slots, other_category)):
        if flags is None or not wanted or not len(order):
            continue
        passes = np.asarray(flags, dtype=bool)[ranked]  # by rank
        have = int(passes[picks].sum()) if picks else 0
        chosen = set(picks)
        for i in np.flatnonzero(passes).tolist():
            if have >= wanted:
                break
            if i in chosen:
                continue
            c = category[order[i]]
            # The victim: the lowest-ranked pick no rule protects; a slot never breaks the cap.
            victims = [j for j in range(len(picks) - 1, -1, -1) if picks[j] not in slots and not passes[picks[j]]
                       and (counts[c] < cap or category[order[picks[j]]] == c)]
            if len(picks) < k and counts[c] < cap:
                picks.append(i)
            elif victims:
                counts[category[order[picks[victims[0]]]]] -= 1
                picks[victims[0]] = i
            else:
                continue
            counts[c] += 1
            slots[i] = name
            chosen.add(i)
            have += 1
    if len(picks) < k:  # the rules left holes: fill them by score
        chosen = set(picks)
        picks += list(islice((i for i in range(len(order)) if i not in chosen), k - len(picks)))
    return [order[i] for i in sorted(picks)], {order[i]: name for i, name in slots.items()}
