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
from retrieval.marks import PerThreadMarks

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
    def merge(cls, parts: Sequence[tuple[Iterable[int], str]], seen: np.ndarray | None = None) -> "Candidates":
        """One candidate list from (positions, source) parts, earlier parts first.

        ``seen``: int32 scratch of -1 over every position that may occur (CandidateSources
        keeps a ``PerThreadMarks`` of the catalog's size); it is all -1 again when this returns.
        """
        # As few numpy calls as possible: each costs microseconds in a request (cold caches).
        arrays = [p if isinstance(p, np.ndarray) else list(p) for p, _ in parts]
        found = np.concatenate(arrays).astype(np.int64, copy=False) if arrays else np.zeros(0, np.int64)
        if not len(found):
            return cls(found, np.zeros(0, np.int64))
        if seen is None:
            seen = np.full(max(int(found.max()) + 1, 0), -1, np.int32)
        part_bits = np.array([(_BIT[s], len(a)) for (_, s), a in zip(parts, arrays)], np.int64)
        positions, masks = _first_findings(found, part_bits, seen)
        if positions is None:
            raise ValueError(f"candidate positions must be in [0, {len(seen)}); got {found.min()}..{found.max()}")
        return cls(positions, masks)

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
        self._seen = PerThreadMarks(len(items))  # Candidates.merge's scratch
        self.scores_exact = bool(getattr(index, "scores_exact", False))

    def two_tower(self, user_emb: np.ndarray) -> np.ndarray:
        """ItemTable positions of the index's nearest items to a [1, D] user embedding, best first."""
        return self.two_tower_scored(user_emb)[0]

    def two_tower_scored(self, user_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``two_tower``'s positions and their inner products with ``user_emb`` (float32) when
        the index computed them exactly (``ItemIndex.scores_exact``), else None."""
        if not self.quotas.two_tower:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        pos, scores = self.index.search(user_emb, self.quotas.two_tower)
        kept = pos[0] >= 0
        found = self.index_to_item[pos[0][kept]]
        known = found >= 0
        return found[known], (scores[0][kept][known] if self.scores_exact else None)

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
        return Candidates.merge(parts, self._seen.get())


@njit(cache=True, nogil=True)
def _first_findings(found, part_bits, seen):  # pragma: no cover - compiled
    """Each position of ``found`` once, in the order first found, with the OR of the source bits
    of its findings (``part_bits``: (bit, length) of each part of ``found``, in order).
    ``seen[p]``: where position p went in the output (-1: not yet), reset before returning:
    one pass, no sort (a sort-based merge cost ~10x more). (None, None) for a position outside
    ``seen``, which is left untouched."""
    for p in found:
        if p < 0 or p >= len(seen):
            return None, None
    positions, masks = np.empty(len(found), np.int64), np.empty(len(found), np.int64)
    m, at = 0, 0
    for part in range(len(part_bits)):
        bit, length = part_bits[part, 0], part_bits[part, 1]
        for j in range(at, at + length):
            p = found[j]
            if seen[p] < 0:
                seen[p] = m
                positions[m], masks[m] = p, bit
                m += 1
            else:
                masks[seen[p]] |= bit
        at += length
    for i in range(m):
        seen[positions[i]] = -1
    return positions[:m], masks[:m]


@njit(cache=True, nogil=True)
def passing(positions, blocked, available, category_code, category, price, max_price):  # pragma: no cover - compiled
    """The request filters of ``positions`` in one pass (a bool per position): not in
    ``blocked`` (sorted positions), ``available`` (empty: every item is), of the category code
    ``category`` (-1: any) and priced at most ``max_price`` (0: no limit). One compiled call
    instead of ~10 numpy ones, each of which costs microseconds in a request."""
    ok = np.empty(len(positions), np.bool_)
    n_blocked = len(blocked)
    for i in range(len(positions)):
        p = positions[i]
        good = True
        if n_blocked:
            at = np.searchsorted(blocked, p)
            good = at == n_blocked or blocked[at] != p
        if good and len(available):
            good = available[p]
        if good and category != -1:
            good = category_code[p] == category
        if good and max_price > 0:
            good = price[p] <= max_price
        ok[i] = good
    return ok
