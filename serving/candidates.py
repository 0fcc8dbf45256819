"""Candidate sources merged with per-source quotas: what the ranker gets to choose from.

The idea: no single retriever finds everything a user may buy. The two-tower model finds items
that match the user's taste, item-to-item co-occurrence finds what goes with the last items
(accessories, the next book of a series), trending finds what everybody buys this week, new
items get a chance before they have any history, and popular items fill the rest and serve cold
starts. Each source contributes up to its quota; an item found by several sources is kept once
and remembers all of them (reported to the client, and useful to judge the sources).

Candidates are arrays, not Python dicts: a request merges 300-600 of them, and per-item Python
work here was a measurable share of a request's CPU (docs/benchmarks.md); the merge is one
compiled loop (numba).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from numba import njit

from feature_repo.data.item_table import ItemTable

SOURCES = ("two_tower", "cooccurrence", "trending", "new", "popular")
# Request-context sources (serving/recommender.py) share the same bits.
ALL_SOURCES = SOURCES + ("cart", "viewed", "similar")
_BIT = {name: 1 << i for i, name in enumerate(ALL_SOURCES)}
# The sources of every possible mask, in source order: looked up for each item on a page.
_NAMES = [[name for name in ALL_SOURCES if mask & _BIT[name]] for mask in range(1 << len(ALL_SOURCES))]


@dataclass(frozen=True)
class Quotas:
    """Candidates per source and request (documented defaults; 310 at most in total, 390 with a
    cart or a viewed item in the request context)."""

    two_tower: int = 200
    cooccurrence: int = 50
    trending: int = 20
    new: int = 10
    popular: int = 30
    new_item_days: float = 14.0  # "new" = launched within this many days of the data's now
    context: int = 50  # co-occurrence neighbours of the cart's and the viewed item
    similar: int = 30  # embedding neighbours of the viewed item (product pages)


@dataclass(frozen=True)
class Candidates:
    """ItemTable positions, each once, in the order first found; per position a bit per source."""

    positions: np.ndarray  # int64
    masks: np.ndarray  # int64, bit i set when ALL_SOURCES[i] found the item

    @classmethod
    def merge(cls, parts: Sequence[tuple[Iterable[int], str]]) -> "Candidates":
        """One candidate list from (positions, source) parts, earlier parts first."""
        arrays = [np.asarray(p if isinstance(p, np.ndarray) else list(p), dtype=np.int64) for p, _ in parts]
        found = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
        if not len(found):
            return cls(found, np.zeros(0, np.int64))
        bits = np.repeat(np.array([_BIT[s] for _, s in parts], np.int64), [len(a) for a in arrays])
        return cls(*_first_findings(found, bits))

    def __len__(self) -> int:
        return len(self.positions)

    def __iter__(self):
        return iter(self.positions.tolist())

    @staticmethod
    def names(mask: int) -> list[str]:
        """The sources of one candidate, in source order (a new list: the caller may change it)."""
        return list(_NAMES[mask])


class CandidateSources:
    """Gathers candidates (ItemTable positions and the sources that found them)."""

    def __init__(self, items: ItemTable, index, index_to_item: np.ndarray, cooccurrence=None,
                 quotas: Quotas = Quotas()):
        self.items, self.index, self.index_to_item = items, index, index_to_item
        self.cooccurrence, self.quotas = cooccurrence, quotas
        # Request-independent lists are computed once per loaded item table.
        self.trending = items.trending(quotas.trending)
        self.new = items.newest(quotas.new, quotas.new_item_days)
        self.popular = items.most_popular(max(quotas.popular, 1))
        # co-occurrence model row → ItemTable position (-1: not in the table)
        self.cooc_to_item = (None if cooccurrence is None else
                             np.array([items.position.get(i, -1) for i in cooccurrence.item_ids], dtype=np.int64))

    def two_tower(self, user_emb: np.ndarray) -> np.ndarray:
        """ItemTable positions of the index's nearest items to a [1, D] user embedding, best first."""
        if not self.quotas.two_tower:
            return np.zeros(0, np.int64)
        pos, _ = self.index.search(user_emb, self.quotas.two_tower)
        found = self.index_to_item[pos[0][pos[0] >= 0]]
        return found[found >= 0]

    def gather(self, user_emb: np.ndarray | None, history: list[str],
               context: Sequence[tuple[Iterable[int], str]] = (), two_tower: np.ndarray | None = None) -> Candidates:
        """The user's candidates; ``context`` parts (the request's cart and viewed item) go last.
        ``two_tower``: ``self.two_tower(user_emb)`` when the caller already has it."""
        q = self.quotas
        parts: list[tuple[Iterable[int], str]] = []
        if user_emb is not None and q.two_tower:
            parts.append((self.two_tower(user_emb) if two_tower is None else two_tower, "two_tower"))
        if self.cooccurrence is not None and history and q.cooccurrence:
            rows, _ = self.cooccurrence.top(history, q.cooccurrence)
            found = self.cooc_to_item[rows]
            parts.append((found[found >= 0], "cooccurrence"))
        parts += [(self.trending, "trending"), (self.new, "new"), (self.popular[: q.popular], "popular")]
        parts += list(context)
        return Candidates.merge(parts)


@njit(cache=True, nogil=True)
def _first_findings(found, bits):  # pragma: no cover - compiled
    """Each position of ``found`` once, in the order first found, with the OR of its ``bits``:
    a stable sort puts every position's first finding first among its copies."""
    order = np.argsort(found, kind="mergesort")
    first, masks, m = np.empty(len(found), np.int64), np.empty(len(found), np.int64), -1
    for j in order:
        if m >= 0 and found[first[m]] == found[j]:
            masks[m] |= bits[j]
        else:
            m += 1
            first[m], masks[m] = j, bits[j]
    keep = np.argsort(first[: m + 1])
    return found[first[: m + 1][keep]], masks[: m + 1][keep]
