"""What an IVF index's probe count does to the pages shoppers see, not only to retrieval recall.

The index job picks nprobe as the fewest lists that reach a recall@500 target against exact
search (`shoprec index --target-recall`, 0.95 by default). Recall@500 counts every one of the
~500 two-tower candidates alike, but the ranker then keeps 20, and a candidate the search missed
is replaced by the next-best one. This measures what reaches the page: real users of the
workspace get a home page (k = 20, >= 500 candidates ranked, the DCN, no user cache) with the
served index searching every list (exact), then at each nprobe given. Per nprobe: the share of
the exact page's items still on the page (top 20 and top 5), the share of pages identical, the
recall@500 of the two-tower search, and CPU per request (one thread; the search is part of it).

    .venv/bin/python bench/probe_pages.py --workspace /tmp/ws/1m --users 400 --nprobe 32 64 128

Only for IVF indexes. Results: docs/benchmarks.md (thirtieth session).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def overlap(pages: list[list[str]], exact: list[list[str]], top: int) -> float:
    """Mean share of each exact page's first ``top`` items that the other page has in its first ``top``."""
    shares = [len(set(p[:top]) & set(e[:top])) / len(e[:top]) for p, e in zip(pages, exact) if e]
    return sum(shares) / len(shares) if shares else 1.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", default="var")
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--nprobe", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--out", default=None, help="write the JSON here too")
    args = p.parse_args()

    from serving.launcher import limit_tensorflow_threads

    limit_tensorflow_threads(1)
    import faiss
    import numpy as np
    import pandas as pd

    from feature_repo.workspace import Workspace
    from retrieval.index import exact_top_k, recall_vs_exact
    from serving.candidates import Quotas
    from serving.recommender import Recommender
    from shoprec.table import render

    ws = Workspace.at(Path(args.workspace))
    rec = Recommender(ws, quotas=Quotas(two_tower=520), ranker="dcn", user_cache=0)
    ivf = faiss.try_extract_index_ivf(rec.models.index.index)
    if ivf is None:
        raise SystemExit(f"the served index ({rec.models.index.factory}) has no inverted lists to probe")
    served_nprobe = ivf.nprobe
    users = (pd.read_parquet(ws.clean_dir / "events.parquet", columns=["user_id"])["user_id"].drop_duplicates()
             .sample(args.users, random_state=args.seed).tolist())
    embeddings = np.asarray(rec.models.item_embeddings, dtype=np.float32)
    queries: list[np.ndarray] = []
    embed = rec.models.embed_users

    def recording(*a, **k):  # the user tower's outputs: the queries the recall is measured on
        out = embed(*a, **k)
        queries.extend(out)
        return out

    rec.models.embed_users = recording

    def pages(nprobe: int) -> tuple[list[list[str]], float]:
        ivf.nprobe = nprobe
        start = time.process_time()
        out = [[x.item_id for x in rec.recommend(u, 20).items] for u in users]
        return out, (time.process_time() - start) / len(users) * 1000

    for u in users[:20]:  # warm-up: first calls of the models and the compiled loops
        rec.recommend(u, 20)
    queries.clear()
    exact, exact_ms = pages(ivf.nlist)
    q = np.stack(queries[: len(users)])
    truth = exact_top_k(embeddings, q, 500)
    rows = [{"nprobe": f"all ({ivf.nlist})", "page_overlap@20": 1.0, "page_overlap@5": 1.0, "identical_pages": 1.0,
             "recall@500": 1.0, "cpu_ms_per_request": round(exact_ms, 3)}]
    for nprobe in args.nprobe:
        got, ms = pages(nprobe)
        recall = recall_vs_exact(rec.models.index, embeddings, q, 500, exact=truth)
        rows.append({"nprobe": str(nprobe) + (" (served)" if nprobe == served_nprobe else ""),
                     "page_overlap@20": round(overlap(got, exact, 20), 4), "page_overlap@5": round(overlap(got, exact, 5), 4),
                     "identical_pages": round(float(np.mean([g == e for g, e in zip(got, exact)])), 4),
                     "recall@500": round(recall, 4), "cpu_ms_per_request": round(ms, 3)})
    rec.close()
    result = {"workspace": str(ws.root), "index": rec.models.index.factory, "items": len(rec.models.index),
              "served_nprobe": served_nprobe, "users": len(users), "rows": rows}
    print(json.dumps(result, indent=2))
    print(render(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
