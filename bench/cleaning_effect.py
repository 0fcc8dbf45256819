"""What cleaning is worth: the same synthetic shop trained with and without the cleaning rules.

Both runs keep the contract rules (malformed rows, future clocks are always rejected); "raw"
keeps bots and double-sent events. Quality is the two-tower holdout metric (recall/NDCG@50 of
the purchases in the last 14 days, which bots never make, so the targets are the same).

    .venv/bin/python bench/cleaning_effect.py --preset default
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_repo.data.cleaning import CleaningRules  # noqa: E402
from feature_repo.workspace import Workspace  # noqa: E402
from shoprec import pipeline, training  # noqa: E402
from shoprec.table import render  # noqa: E402


def run(preset: str, seed: int, cleaning: CleaningRules | None) -> dict:
    ws = Workspace.at(tempfile.mkdtemp(prefix="cleaning_"))
    pipeline.generate(ws, preset, seed)
    report = pipeline.validate(ws, cleaning=cleaning)
    pipeline.build_features(ws)
    pipeline.materialize(ws)
    start = time.perf_counter()
    _, manifest = training.train_retrieval(ws, training.TrainingConfig(seed=seed, verbose=0))
    return {"cleaning": "on" if cleaning else "off", "events_kept": report.counts["events"]["kept"],
            "train_seconds": round(time.perf_counter() - start, 1), **manifest["metrics"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = [run(args.preset, args.seed, CleaningRules()), run(args.preset, args.seed, None)]
    print(json.dumps(rows, indent=2))
    print(render(rows, ["cleaning", "events_kept", "train_seconds", "recall_at_50", "ndcg_at_50",
                        "popularity_recall_at_50", "holdout_users"]))


if __name__ == "__main__":
    main()
