"""The offline data jobs of one workspace: generate → validate → features → materialize.

Each function is one CLI subcommand and reads only what earlier jobs wrote to the workspace,
so jobs can run on their own (e.g. on a schedule) or chained by ``shoprec demo``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.data import features as feature_tables
from feature_repo.data.contract import read_table, write_table
from feature_repo.data.synthetic import generate as generate_shop
from feature_repo.data.validation import ValidationReport, validate as validate_tables
from feature_repo.workspace import Workspace

TABLES = ("events", "items", "users")


def generate(ws: Workspace, preset: str = "default", seed: int = 0) -> dict[str, int]:
    """Write the synthetic shop's raw tables (and its hidden truth, for evaluation only)."""
    shop = generate_shop(preset, seed=seed)
    for name in TABLES:
        write_table(getattr(shop, name), ws.raw_dir / f"{name}.parquet")
    np.savez_compressed(ws.raw_dir / "truth.npz", **shop.truth)
    (ws.raw_dir / "source.json").write_text(json.dumps({"generator": "synthetic", "preset": preset, "seed": seed}))
    return {name: len(getattr(shop, name)) for name in TABLES}


def _raw_path(ws: Workspace, name: str) -> Path:
    for suffix in (".parquet", ".csv"):
        if (ws.raw_dir / f"{name}{suffix}").exists():
            return ws.raw_dir / f"{name}{suffix}"
    return ws.require(ws.raw_dir / f"{name}.parquet", "generate")


def validate(ws: Workspace, now: pd.Timestamp | None = None) -> ValidationReport:
    """Validate the raw tables; write the clean ones, quarantine.csv and validation.json."""
    raw = {name: read_table(_raw_path(ws, name)) for name in TABLES}
    report = validate_tables(raw["events"], raw["items"], raw["users"], now=now)
    for name, df in report.tables.items():
        write_table(df, ws.clean_dir / f"{name}.parquet")
    report.write(ws.clean_dir)
    return report


def load_clean(ws: Workspace, name: str) -> pd.DataFrame:
    return pd.read_parquet(ws.require(ws.clean_dir / f"{name}.parquet", "validate"))


def build_features(ws: Workspace) -> pd.DataFrame:
    """Compute the feature tables from the clean data; returns their summary."""
    from feature_repo.store import feature_summary

    tables = feature_tables.build_all(load_clean(ws, "events"), load_clean(ws, "items"))
    for name, df in tables.items():
        write_table(df, ws.features_dir / f"{name}.parquet")
    return feature_summary(ws)


def materialize(ws: Workspace, online_store: str | dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply the Feast repo and materialize incrementally into the online store."""
    from feature_repo import store as feast_store

    store = feast_store.open_store(ws, online_store)
    objects = feast_store.apply(store, ws)
    feast_store.materialize(store, ws)
    return {"registered": objects, "online_store": feast_store.online_store_config(ws, online_store)["type"]}
