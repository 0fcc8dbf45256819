"""Item features held in memory as arrays: what ranking reads for hundreds of candidates.

A Feast online read costs ~6 ms for 100 entities (DESIGN.md), so serving keeps the latest
item_stats row of every item in memory and rebuilds this table when materialization or the
catalog changes. Positions are row numbers; ``position`` maps item ids to them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.data.features import latest


@dataclass
class ItemTable:
    """Latest features of every catalog item, column-wise."""

    item_ids: np.ndarray
    category: np.ndarray
    brand: np.ndarray
    price: np.ndarray
    n_view: np.ndarray
    n_purchase: np.ndarray
    conversion_rate: np.ndarray
    n_view_7d: np.ndarray | None = None
    n_purchase_7d: np.ndarray | None = None
    created_epoch: np.ndarray | None = None
    as_of_epoch: float = 0.0  # time of the newest snapshot: "now" for the data
    attributes: np.ndarray | None = None  # per item a list of attribute strings (content embedding of new items)
    price_bucket: np.ndarray | None = None
    # Arrays its users derive from the table once (e.g. ranking's per-item feature columns),
    # by name; the table is never changed after it is made, so they cannot go stale.
    derived: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.position = {item: i for i, item in enumerate(self.item_ids)}
        # Integer codes of category and brand: per-candidate comparisons without Python strings.
        # A missing value is a code of its own: pandas' default -1 would crash np.bincount and
        # index the last code of a lookup table (e.g. an item read from a store without features).
        self.category_code, categories = pd.factorize(self.category, use_na_sentinel=False)
        self.code_of_category = {name: code for code, name in enumerate(categories)}
        self.brand_code = pd.factorize(self.brand, use_na_sentinel=False)[0]
        # How many codes there are: per-request lookup tables over categories and brands.
        self.category_count = int(self.category_code.max()) + 1 if len(self.category_code) else 0
        self.brand_count = int(self.brand_code.max()) + 1 if len(self.brand_code) else 0
        zeros = np.zeros(len(self.item_ids))
        self.n_view_7d = zeros if self.n_view_7d is None else self.n_view_7d
        self.n_purchase_7d = zeros if self.n_purchase_7d is None else self.n_purchase_7d
        self.created_epoch = zeros if self.created_epoch is None else self.created_epoch

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_stats(cls, item_stats: pd.DataFrame) -> "ItemTable":
        """From an item_stats feature table (all snapshots or only the latest ones)."""
        # Positions in item id order, whatever order the rows came in (Feast's output order is
        # not stable): ties in the popularity lists break the same way every time.
        df = latest(item_stats, "item_id").sort_values("item_id", kind="stable").reset_index(drop=True)

        def column(name: str) -> np.ndarray | None:
            return df[name].to_numpy(dtype="float64") if name in df else None

        as_of = item_stats["event_timestamp"].max()
        return cls(
            item_ids=df["item_id"].astype(str).to_numpy(dtype=object),
            category=df["category"].astype(str).to_numpy(dtype=object),
            brand=df["brand"].astype(str).to_numpy(dtype=object),
            price=df["price"].to_numpy(dtype="float64"),
            n_view=df["n_view"].to_numpy(dtype="float64"),
            n_purchase=df["n_purchase"].to_numpy(dtype="float64"),
            conversion_rate=df["conversion_rate"].to_numpy(dtype="float64"),
            n_view_7d=column("n_view_7d"), n_purchase_7d=column("n_purchase_7d"),
            created_epoch=column("created_epoch"),
            attributes=df["attributes"].to_numpy(dtype=object) if "attributes" in df else None,
            price_bucket=df["price_bucket"].to_numpy(dtype="int64") if "price_bucket" in df else None,
            as_of_epoch=float(as_of.timestamp()) if pd.notna(as_of) else 0.0,
        )

    @classmethod
    def load(cls, features_dir: Path) -> "ItemTable":
        return cls.from_stats(pd.read_parquet(Path(features_dir) / "item_stats.parquet"))

    def positions(self, item_ids: list[str]) -> np.ndarray:
        """Row numbers of known ids (unknown ids are left out)."""
        get = self.position.get
        return np.array([p for i in item_ids if (p := get(i)) is not None], dtype=np.int64)

    def category_mask(self, positions: np.ndarray) -> np.ndarray:
        """[category_count] bool: True for the categories of the items at ``positions``, so that
        "is a candidate in one of them" is one lookup per candidate (``mask[category_code[c]]``)."""
        mask = np.zeros(self.category_count, dtype=bool)
        mask[self.category_code[positions]] = True
        return mask

    def most_popular(self, n: int) -> np.ndarray:
        """Positions of the ``n`` most purchased items (views break ties)."""
        order = np.lexsort((-self.n_view, -self.n_purchase))
        return order[:n]

    def trending(self, n: int) -> np.ndarray:
        """Positions of the ``n`` items bought most in the last 7 days (views break ties)."""
        return np.lexsort((-self.n_view_7d, -self.n_purchase_7d))[:n]

    def newest(self, n: int, days: float = 14.0) -> np.ndarray:
        """Positions of up to ``n`` items launched in the last ``days``, newest first."""
        recent = np.flatnonzero(self.created_epoch >= self.as_of_epoch - days * 86400)
        return recent[np.argsort(-self.created_epoch[recent], kind="stable")][:n]
