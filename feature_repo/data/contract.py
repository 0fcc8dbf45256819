"""The data contract: the three input tables shoprec accepts, whatever produced them.

events: user_id, item_id, event_type in EVENT_TYPES, timestamp (+ optional session_id, price,
quantity); items: item_id, category, brand, price, created_at (+ optional title, free
attributes); users: user_id, created_at (+ optional profile columns). Ids are strings; unknown
columns are kept as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from feature_repo.errors import ContractError

# Ordered by depth in the funnel; the index is used as an ordinal feature.
EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")


@dataclass(frozen=True)
class TableSpec:
    """Required columns of one table, by kind: ids (non-empty strings), timestamps, numbers."""

    name: str
    keys: tuple[str, ...]  # non-empty string columns that identify the row
    strings: tuple[str, ...] = ()  # other required non-empty string columns
    timestamps: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()  # required, finite and >= 0
    optional_numbers: tuple[str, ...] = ()  # may be absent or blank; if given, a number >= 0

    @property
    def required(self) -> tuple[str, ...]:
        return self.keys + self.strings + self.timestamps + self.numbers


EVENTS = TableSpec("events", keys=("user_id", "item_id"), strings=("event_type",), timestamps=("timestamp",),
                   optional_numbers=("price", "quantity"))
ITEMS = TableSpec("items", keys=("item_id",), strings=("category", "brand"), timestamps=("created_at",), numbers=("price",))
USERS = TableSpec("users", keys=("user_id",), timestamps=("created_at",))
SPECS = {spec.name: spec for spec in (EVENTS, ITEMS, USERS)}


def check_columns(df: pd.DataFrame, spec: TableSpec) -> None:
    """Raise ContractError naming every missing required column and how to fix it."""
    missing = [c for c in spec.required if c not in df.columns]
    if missing:
        raise ContractError(
            f"{spec.name} table is missing required column(s) {missing}; "
            f"expected at least {list(spec.required)}, got {list(df.columns)}. "
            f"Rename or add the columns (see 'Data contract' in README.md)."
        )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a contract table from parquet or CSV (ids stay strings, nothing is coerced here)."""
    path = Path(path)
    if not path.exists():
        raise ContractError(f"{path} does not exist; pass a parquet or CSV file.")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".csv", ".txt"):
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    raise ContractError(f"{path}: unknown file type {path.suffix!r}; expected .parquet or .csv.")


def write_table(df: pd.DataFrame, path: Path) -> None:
    """Write parquet atomically: a crash mid-write never leaves a half file in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
