"""The two-tower model as a ``Recommender`` of the evaluation harness, served through FAISS.

``fit`` trains on the view's sequences (every position predicts the next item; early stopping
on each sampled user's last item), embeds the catalog and builds the FAISS index the way
`shoprec index` does; ``score_batch`` embeds the users and takes the index's top items, so the
reported numbers are what serving would retrieve (not a brute-force upper bound, unless the
factory is "Flat", which is exact).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoprec.evaluation import TrainingView

# What a catalog row defaults to when the dataset has no content for an item.
_DEFAULT_CONTENT = {"category": "unknown", "brand": "unknown", "price": 0.0}


def load_items(path: Path) -> pd.DataFrame:
    """The catalog (with content) of an Amazon directory or a workspace, for the item tower."""
    from feature_repo.data.importers import import_amazon

    path = Path(path)
    if path.is_dir() and any(path.glob("*_item2attributes.json")):
        return import_amazon(path).items
    items = path / "data" / "clean" / "items.parquet"
    return pd.read_parquet(items) if items.exists() else pd.DataFrame(columns=["item_id", *_DEFAULT_CONTENT])


class TwoTowerRecommender:
    """Train the sequential two-tower on a view, index it in FAISS, retrieve the top ``search_k``.

    Args:
      items: catalog content (category, brand, price, attributes) by item_id; missing → defaults.
      settings: retrieval.train.TrainSettings (None: the defaults).
      factory: FAISS factory string of the index (Flat = exact).
      search_k: items retrieved per user before the harness removes the history (must cover
        the largest K reported plus the history).
      valid_users: users sampled for early stopping.
    """

    def __init__(self, items: pd.DataFrame, settings: Any = None, factory: str = "Flat", search_k: int = 600,
                 valid_users: int = 3000, seed: int = 0, verbose: int = 1):
        self.items, self.settings, self.factory = items, settings, factory
        self.search_k, self.valid_users, self.seed, self.verbose = search_k, valid_users, seed, verbose
        self.facts: dict[str, Any] = {}

    def _catalog(self, item_ids: list[str]):
        from feature_repo.data.features import item_attributes
        from retrieval.model import Catalog

        items = self.items.drop_duplicates("item_id").set_index(self.items["item_id"].astype(str).rename("key"))
        table = items.reindex(item_ids).drop(columns="item_id", errors="ignore").reset_index(names="item_id")
        for column, default in _DEFAULT_CONTENT.items():
            table[column] = table[column].fillna(default) if column in table else default
        return Catalog.from_items(table, item_attributes(table).reset_index(drop=True))

    def fit(self, split: TrainingView) -> None:
        from retrieval.index import build_and_probe
        from retrieval.train import TrainSettings, embed_items, train_two_tower

        settings = self.settings or TrainSettings(seed=self.seed)
        catalog = self._catalog(split.item_ids)
        rng = np.random.default_rng(self.seed)
        eligible = [s for s in split.sequences if len(s) >= 2]
        pick = rng.choice(len(eligible), size=min(self.valid_users, len(eligible)), replace=False)
        valid = ([eligible[i][:-1] for i in pick], [eligible[i][-1] for i in pick])
        self.model, self.facts = train_two_tower([s[:-1] for s in split.sequences], catalog, settings, valid,
                                                 verbose=self.verbose)
        self.index, self.facts["index"] = build_and_probe(embed_items(self.model, split.item_ids), split.item_ids,
                                                          self.factory, seed=self.seed)
        self.n_items = len(split.item_ids)

    def score_batch(self, users: list[str], histories: list[list[str]]) -> np.ndarray:
        from retrieval.train import embed_users

        k = min(self.n_items, self.search_k + max((len(h) for h in histories), default=0))
        positions, scores = self.index.search(embed_users(self.model, histories), k)
        out = np.full((len(users), self.n_items), -np.inf, dtype=np.float32)
        rows = np.repeat(np.arange(len(users)), positions.shape[1])
        ok = positions.ravel() >= 0
        out[rows[ok], positions.ravel()[ok]] = scores.ravel()[ok]
        return out
