"""Grow a trained workspace's catalog to N items, for serving benchmarks at catalog scale.

The added items are a content-only long tail, as in a large shop where most of the catalog has
never been bought: each copies the category, brand and department of a random existing item,
with its price jittered (log-normal, sigma 0.3), launched at the catalog's first launch date (so
none counts as "new") and without any event. They go wherever serving reads the catalog:
``data/clean/items.parquet`` (catalog, availability) and ``features/item_stats.parquet`` (one
zero-activity snapshot at the newest feature time: serving's in-memory item features). Then
``shoprec index rebuild`` embeds them with the live item tower from their content (the path a
brand-new item takes), indexes every item with the given FAISS factory, and publishes.

Users, events, the online store and the trained models are unchanged: the load on the server is
the same request mix against a catalog ten times larger.

    .venv/bin/python bench/shop_100k.py --workspace /tmp/ws_100k   # the trained 100k-item workspace
    cp -r /tmp/ws_100k /tmp/ws_1m
    .venv/bin/python bench/big_catalog.py --workspace /tmp/ws_1m --items 1000000 \\
        --factory IVF4096,Flat --nprobe 128
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from feature_repo.data.features import item_attributes, price_bucket  # noqa: E402
from feature_repo.workspace import Workspace  # noqa: E402
from shoprec.table import render  # noqa: E402


def long_tail(catalog: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` new catalog rows modelled on random existing ones (ids ``x0000000``...)."""
    rng = np.random.default_rng(seed)
    template = catalog.iloc[rng.integers(0, len(catalog), size=n)].reset_index(drop=True)
    out = template.copy()
    out["item_id"] = [f"x{j:07d}" for j in range(n)]
    out["price"] = np.round(template["price"].to_numpy() * rng.lognormal(0.0, 0.3, size=n), 2)
    out["created_at"] = catalog["created_at"].min()
    if "available" in out:
        out["available"] = True
    return out


def zero_stats(new: pd.DataFrame, stats: pd.DataFrame) -> pd.DataFrame:
    """One item_stats snapshot per new item: its content, no activity, at the newest time."""
    rows = pd.DataFrame({"item_id": new["item_id"].to_numpy(),
                         "event_timestamp": stats["event_timestamp"].max()})
    for column in stats.columns:
        if column.startswith("n_") or column.startswith("conversion_rate"):
            rows[column] = np.zeros(len(new), dtype=stats[column].dtype)
    rows["category"] = new["category"].to_numpy()
    rows["brand"] = new["brand"].to_numpy()
    rows["price"] = new["price"].to_numpy()
    rows["created_epoch"] = new["created_at"].astype("int64").to_numpy() / 1e9
    rows["attributes"] = item_attributes(new).to_numpy()
    rows["price_bucket"] = price_bucket(new["price"])
    return rows[stats.columns]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", required=True, help="a trained workspace (a copy: it is changed in place)")
    p.add_argument("--items", type=int, default=1_000_000, help="catalog size to reach")
    p.add_argument("--factory", default="IVF4096,Flat", help="FAISS factory of the rebuilt index")
    p.add_argument("--nprobe", type=int, default=0,
                   help="IVF lists searched per query (0: the fewest that reach 0.95 recall for sampled users)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the JSON here too")
    args = p.parse_args()

    ws = Workspace.at(Path(args.workspace))
    items_path, stats_path = ws.clean_dir / "items.parquet", ws.features_dir / "item_stats.parquet"
    catalog = pd.read_parquet(items_path)
    result = {"workspace": str(ws.root), "items_before": len(catalog), "items": args.items,
              "factory": args.factory, "nprobe": args.nprobe}
    start = time.perf_counter()
    if len(catalog) < args.items:
        new = long_tail(catalog, args.items - len(catalog), args.seed)
        stats = pd.read_parquet(stats_path)
        # Written beside and renamed: an interrupted run leaves the old tables, not half of new ones.
        for path, table in ((stats_path, pd.concat([stats, zero_stats(new, stats)], ignore_index=True)),
                            (items_path, pd.concat([catalog, new], ignore_index=True))):
            tmp = path.with_suffix(".growing.parquet")
            table.to_parquet(tmp, index=False)
            os.replace(tmp, path)
        print(f"catalog: {len(catalog):,} -> {args.items:,} items ({time.perf_counter() - start:.1f} s)",
              file=sys.stderr, flush=True)
    result["grow_seconds"] = round(time.perf_counter() - start, 1)

    from shoprec.index_job import IndexSettings, rebuild

    start = time.perf_counter()
    version, manifest = rebuild(ws, IndexSettings(factory=args.factory, nprobe=args.nprobe))
    result.update(index_version=version, index_seconds=round(time.perf_counter() - start, 1),
                  indexed=manifest["items"], new_items=manifest["new_items"],
                  recall_at_100_vs_exact=manifest["recall_at_100_vs_exact"],
                  peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    print(json.dumps(result, indent=2))
    print(render([result], list(result)))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
