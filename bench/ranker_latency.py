"""Ranker scoring latency: one call of the exported scorer for one user's N candidates.

For each ranker kind in the workspace (the newest version of each) and N in 100, 500, 1000:
the SavedModel's ``score`` (features, candidate ids, history, event types → N scores), and the
numpy feature build that precedes it on the request path (``rank_features`` with co-occurrence).
Baseline in the same run: the DCN scorer at the same N (ratios are LSTM / DCN). Sequential
calls on one thread; medians are what to quote, these machines are noisy.

    .venv/bin/python -m bench.ranker_latency --workspace var --calls 300
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench.latency import percentiles  # noqa: E402


def main() -> None:
    import tensorflow as tf

    from feature_repo.artifacts import ArtifactStore
    from feature_repo.data.item_table import ItemTable
    from feature_repo.workspace import Workspace
    from ranking.features import rank_features
    from retrieval.cooccurrence import CooccurrenceModel
    from shoprec.table import render

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", default="var")
    p.add_argument("--calls", type=int, default=300, help="timed calls per (kind, N)")
    p.add_argument("--sizes", default="100,500,1000")
    args = p.parse_args()

    ws = Workspace.at(args.workspace)
    store = ArtifactStore(ws.models_dir / "ranking")
    newest = {}
    for version in store.versions():
        newest[store.manifest(version)["model"]] = store.root / version
    scorers = {kind: tf.saved_model.load(str(path / "scorer")) for kind, path in sorted(newest.items())}
    items = ItemTable.load(ws.features_dir)
    index_dir = ArtifactStore(ws.models_dir / "index").current()
    cooc = CooccurrenceModel.load(index_dir / "cooccurrence") if (index_dir / "cooccurrence").exists() else None
    rng = np.random.default_rng(0)
    history = [str(i) for i in rng.choice(items.item_ids, size=20, replace=False)]
    types = rng.choice(["view", "click", "add_to_cart", "purchase"], size=20).tolist()
    user = {"recent_items": history, "recent_event_types": types, "avg_purchase_price": 30.0, "n_view": 40,
            "n_purchase": 3, "conversion_rate": 0.07}

    rows, results = [], {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                         "workspace": str(ws.root), "versions": {k: p.name for k, p in newest.items()}, "runs": {}}
    for n in (int(s) for s in args.sizes.split(",")):
        positions = rng.choice(len(items), size=min(n, len(items)), replace=False)
        scores = rng.normal(size=len(positions)).astype(np.float32)
        samples = []
        for _ in range(args.calls):
            t = time.perf_counter()
            x = rank_features(user, positions, scores, items, cooc)
            samples.append(time.perf_counter() - t)
        feats = percentiles(samples)
        args_tf = (tf.constant(x), tf.constant(items.item_ids[positions].astype(str)), tf.constant(history),
                   tf.constant(types))
        per_kind = {}
        for kind, scorer in scorers.items():
            for _ in range(20):  # warm-up: the first calls trace and allocate
                scorer.score(*args_tf)
            samples = []
            for _ in range(args.calls):
                t = time.perf_counter()
                scorer.score(*args_tf).numpy()
                samples.append(time.perf_counter() - t)
            per_kind[kind] = percentiles(samples)
        results["runs"][n] = {"features": feats, **per_kind}
        base = per_kind.get("dcn")
        for kind, r in [("features (numpy)", feats), *per_kind.items()]:
            rows.append({"candidates": len(positions), "step": kind, "p50 ms": r["p50_ms"], "p90 ms": r["p90_ms"],
                         "p99 ms": r["p99_ms"],
                         "p50 vs dcn": round(r["p50_ms"] / base["p50_ms"], 2) if base else None})
    print(json.dumps(results, indent=2))
    print(render(rows))


if __name__ == "__main__":
    main()
