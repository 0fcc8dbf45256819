"""Candidate sources merged with per-source quotas: what the ranker gets to choose from.

The idea: no single retriever finds everything a user may buy. The two-tower model finds items
that match the user's taste, item-to-item co-occurrence finds what goes with the last items
(accessories, the next book of a series), trending finds what everybody buys this week, new
items get a chance before they have any history, and popular items fill the rest and serve cold
starts. Each source contributes up to its quota; an item found by several sources is kept once
and remembers all of them (reported to the client, and useful to judge the sources).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feature_repo.data.item_table import ItemTable

SOURCES = ("two_tower", "cooccurrence", "trending", "new", "popular")


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


class CandidateSources:
    """Gathers candidates as ItemTable positions → list of source names, in source order."""

    def __init__(self, items: ItemTable, index, index_to_item: np.ndarray, cooccurrence=None,
                 quotas: Quotas = Quotas()):
        self.items, self.index, self.index_to_item = items, index, index_to_item
        self.cooccurrence, self.quotas = cooccurrence, quotas
        # Request-independent lists are computed once per loaded item table.
        self.trending = items.trending(quotas.trending)
        self.new = items.newest(quotas.new, quotas.new_item_days)
        self.popular = items.most_popular(max(quotas.popular, 1))

    def gather(self, user_emb: np.ndarray | None, history: list[str]) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {}

        def add(positions, source: str) -> None:
            for p in positions:
                found.setdefault(int(p), []).append(source)

        q = self.quotas
        if user_emb is not None and q.two_tower:
            pos, _ = self.index.search(user_emb, q.two_tower)
            add((self.index_to_item[p] for p in pos[0] if p >= 0 and self.index_to_item[p] >= 0), "two_tower")
        if self.cooccurrence is not None and history and q.cooccurrence:
            recs = self.cooccurrence.recommend(history, q.cooccurrence)
            add((self.items.position[i] for i, _ in recs if i in self.items.position), "cooccurrence")
        add(self.trending, "trending")
        add(self.new, "new")
        add(self.popular[: q.popular], "popular")
        return found
