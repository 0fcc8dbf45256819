"""Build the 100k-item serving workspace the load benchmarks use (docs/benchmarks.md).

The full ``large`` preset (1M users) does not fit this machine class's 24 GiB through the whole
pipeline, so the serving benchmarks use its catalog (100,000 items) with its first 100,000
users. The generator seeds each user chunk by its index, so these are exactly the preset's
first five chunks. Then the same commands a user runs, timed one by one:

    validate; features; materialize;
    train all --holdout-days 0 --retrieval-epochs 2 --ranking-epochs 2 --ranker dcn;
    index rebuild --factory IVF1024,Flat

About 30–45 minutes on 2 cores (the two-tower's two epochs are most of it: 22 min of 29 here).

    .venv/bin/python bench/shop_100k.py --workspace /tmp/ws100k
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_repo.data.synthetic import PRESETS  # noqa: E402
from feature_repo.workspace import Workspace  # noqa: E402
from shoprec.pipeline import generate  # noqa: E402

STEPS = [
    ["validate"],
    ["features"],
    ["materialize"],
    ["train", "all", "--holdout-days", "0", "--retrieval-epochs", "2", "--ranking-epochs", "2",
     "--ranker", "dcn"],
    ["index", "rebuild", "--factory", "IVF1024,Flat"],
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", required=True, help="directory to build in (created)")
    ap.add_argument("--users", type=int, default=100_000, help="first N users of the large preset")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ws = Workspace.at(args.workspace)
    shoprec = str(Path(sys.executable).with_name("shoprec"))
    timings: dict[str, float] = {}
    t = time.perf_counter()
    preset = dataclasses.replace(PRESETS["large"], n_users=args.users)
    counts = generate(ws, preset, args.seed, progress=lambda m: print(m, flush=True))
    timings["generate"] = round(time.perf_counter() - t, 1)
    print(f"generated {counts} in {timings['generate']} s", flush=True)
    for step in STEPS:
        name, t = " ".join(step[:2]), time.perf_counter()
        subprocess.run([shoprec, "--workspace", str(ws.root), *step], check=True)
        timings[name] = round(time.perf_counter() - t, 1)
        print(f"{' '.join(step)}: {timings[name]} s", flush=True)
    print(json.dumps({"workspace": str(ws.root), "counts": counts, "seconds": timings}, indent=2))


if __name__ == "__main__":
    main()
