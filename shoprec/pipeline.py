"""The offline data jobs of one workspace: generate → validate → features → materialize.

Each function is one CLI subcommand and reads only what earlier jobs wrote to the workspace,
so jobs can run on their own (e.g. on a schedule) or chained by ``shoprec demo``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from feature_repo.data import features as feature_tables
from feature_repo.data.contract import read_table, write_table
from feature_repo.data.cleaning import CleaningRules
from feature_repo.data.synthetic import ShopPreset, write_shop
from feature_repo.data.validation import ValidationReport, validate as validate_tables
from feature_repo.workspace import Workspace

TABLES = ("events", "items", "users")


def generate(ws: Workspace, preset: str | ShopPreset = "default", seed: int = 0, progress=None) -> dict[str, int]:
    """Stream the synthetic shop's raw tables (and its hidden truth, for evaluation only)."""
    for stale in ws.raw_dir.glob("*.csv"):  # an earlier import must not shadow the new tables
        stale.unlink()
    return write_shop(ws.raw_dir, preset, seed, progress)


def source_info(ws: Workspace) -> dict[str, Any]:
    """What produced the raw tables (generator or importer), from ``data/raw/source.json``."""
    path = ws.raw_dir / "source.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _raw_path(ws: Workspace, name: str) -> Path:
    for suffix in (".parquet", ".csv"):
        if (ws.raw_dir / f"{name}{suffix}").exists():
            return ws.raw_dir / f"{name}{suffix}"
    return ws.require(ws.raw_dir / f"{name}.parquet", "generate")


def validate(ws: Workspace, now: pd.Timestamp | None = None,
             cleaning: CleaningRules | None = CleaningRules()) -> ValidationReport:
    """Validate the raw tables; write the clean ones, quarantine.csv and validation.json.

    ``now`` defaults to the data's ``as_of`` time when its source says when it was exported
    (the synthetic shop does), else the wall clock.
    """
    raw = {name: read_table(_raw_path(ws, name)) for name in TABLES}
    as_of = source_info(ws).get("as_of")
    now = now if now is not None else (pd.Timestamp(as_of) if as_of else None)
    report = validate_tables(raw["events"], raw["items"], raw["users"], now=now, cleaning=cleaning)
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
    mode = feast_store.materialize(store, ws)
    return {"registered": objects, "online_store": feast_store.online_store_config(ws, online_store)["type"],
            "mode": mode}
