"""Where a Recommend request's CPU goes: process CPU per pipeline step, in process, one thread.

The served configuration of one process per core: TensorFlow limited to one thread
(serving/launcher.py), the real Recommender on a trained workspace, real users one after the
other. Each step is timed with ``time.process_time`` around the Recommender's own calls, so
the steps add up to the request (``page``: final scores, the page rules and the response items;
``rest``: preparing the history, the filters and the retrieval scores).

    .venv/bin/python bench/request_cpu.py --workspace var --ranker dcn --two-tower 520 --batch 1 2 4 8

``--batch``: requests answered together (``Recommender.recommend_many``, as the server's
pipeline thread does under load); the steps are then CPU per request of the batch.
``--runtime lite tensorflow``: the models through their TensorFlow Lite copies, then through
TensorFlow (serving/lite.py). Each (ranker, runtime) serves the same users at every batch size:
the first size measured sees first visits (the user tower and FAISS run for each), the later
ones repeats answered by the user cache. ``--first-visits`` gives each batch size users of its
own instead, so that every size measures the cache-miss path.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from serving.config import MODEL_RUNTIMES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", default="var")
    p.add_argument("--ranker", nargs="+", default=["dcn", "lstm"], help="ranker kinds to measure, in turn")
    p.add_argument("--two-tower", type=int, default=520, help="two-tower candidate quota (520: >= 500 ranked)")
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes to measure, in turn")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--first-visits", action="store_true",
                   help="other users for each batch size: every size measures first visits (cache misses)")
    p.add_argument("--runtime", nargs="+", default=["lite"], choices=MODEL_RUNTIMES,
                   help="model runtimes to measure, in turn (serving's model_runtime)")
    args = p.parse_args()

    from serving.launcher import limit_tensorflow_threads

    limit_tensorflow_threads(1)
    import pandas as pd

    import serving.recommender as pipeline
    from feature_repo.workspace import Workspace
    from serving.candidates import Quotas
    from serving.recommender import RequestContext
    from shoprec.table import render

    ws = Workspace.at(Path(args.workspace))
    per_size = args.users + args.warmup
    sizes_apart = len(args.batch) if args.first_visits else 1
    known = pd.read_parquet(ws.clean_dir / "events.parquet", columns=["user_id"])["user_id"].drop_duplicates()
    if per_size * sizes_apart > len(known):
        raise SystemExit(f"--users {args.users} + --warmup {args.warmup}"
                         f"{f' for each of {sizes_apart} batch sizes (--first-visits)' if sizes_apart > 1 else ''}"
                         f" needs {per_size * sizes_apart} users; the workspace has {len(known)}: ask for fewer")
    sampled = known.sample(per_size * sizes_apart, random_state=args.seed).tolist()
    spent: dict[str, float] = defaultdict(float)

    def timed(owner, name: str, step: str) -> None:
        inner = getattr(owner, name)

        def call(*a, **k):
            start = time.process_time()
            try:
                return inner(*a, **k)
            finally:
                spent[step] += time.process_time() - start

        setattr(owner, name, call)

    rows, results = {}, {}
    for kind, runtime in [(k, r) for k in args.ranker for r in args.runtime]:
        rec = pipeline.Recommender(ws, quotas=Quotas(two_tower=args.two_tower), ranker=kind, model_runtime=runtime)
        m = rec.models
        # Module-level functions are patched where the pipeline looks them up; restored below.
        originals = {name: getattr(pipeline, name) for name in ("rank_features",)}
        timed(rec, "users_features", "feast_read")
        timed(m, "embed_users", "user_tower")
        timed(rec._live.sources, "gather", "candidates")
        timed(pipeline, "rank_features", "features")
        timed(m, "score_heads", "ranker")
        timed(rec, "_page", "page")
        for n_size, batch in enumerate(args.batch):
            users = sampled[(n_size % sizes_apart) * per_size:][:per_size]

            def run(some: list[str]) -> None:
                for i in range(0, len(some), batch):
                    rec.recommend_many([(u, 20, RequestContext()) for u in some[i:i + batch]])

            run(users[: args.warmup])
            spent.clear()
            start = time.process_time()
            run(users[args.warmup:])
            total = time.process_time() - start
            n = len(users) - args.warmup
            steps = {k: round(v / n * 1000, 3) for k, v in spent.items()}
            steps["rest"] = round((total - sum(spent.values())) / n * 1000, 3)
            steps["total"] = round(total / n * 1000, 3)
            name = kind + (f" {runtime}" if len(args.runtime) > 1 else "") + (f" x{batch}" if len(args.batch) > 1 else "")
            if args.batch.count(batch) > 1:  # the same size again: its repeat visits, or other users
                name += f" ({args.batch[:n_size + 1].count(batch)})"
            results[name] = {"version": m.versions["ranking"], "runtime": runtime, "requests": n, "batch": batch,
                             "cpu_ms_per_request": steps}
            rows[name] = steps
        for name, fn in originals.items():
            setattr(pipeline, name, fn)
        rec.close()
    print(json.dumps({"workspace": str(ws.root), "two_tower": args.two_tower, "results": results}, indent=2))
    order = ["feast_read", "user_tower", "candidates", "features", "ranker", "page", "rest", "total"]
    print(render([{"step": s, **{f"{k} ms": rows[k].get(s, 0.0) for k in rows}} for s in order]))


if __name__ == "__main__":
    main()
