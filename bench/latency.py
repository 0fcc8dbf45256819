"""Recommend latency on a trained workspace: in-process pipeline vs real gRPC over loopback.

Baseline in the same run: GetInfo, a trivial unary gRPC call, so the table shows what the
pipeline adds on top of the transport. Sequential calls (concurrency 1); medians are what to
quote, these machines are noisy.

    .venv/bin/python bench/latency.py --workspace var --requests 500
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


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "n": len(ms)}


def timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    import pandas as pd

    from feature_repo.workspace import Workspace
    from serving.client import RecommenderClient
    from serving.recommender import Recommender
    from serving.server import start
    from shoprec.table import render

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", default="var")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--k", type=int, default=20)
    args = p.parse_args()

    ws = Workspace.at(args.workspace)
    users = pd.read_parquet(ws.clean_dir / "events.parquet")["user_id"].value_counts().index[:200].tolist()
    rec = Recommender(ws)
    running = start(rec, port=0)
    results = {}
    try:
        with RecommenderClient(running.address) as client:
            client.wait_ready()
            for _ in range(50):  # warm-up
                client.recommend(users[0], args.k)
                client.info()
            results["grpc_getinfo_baseline"] = percentiles(timed(lambda i: client.info(), args.requests))
            results["inprocess_recommend"] = percentiles(
                timed(lambda i: rec.recommend(users[i % len(users)], args.k), args.requests))
            results["grpc_recommend"] = percentiles(
                timed(lambda i: client.recommend(users[i % len(users)], args.k), args.requests))
            results["grpc_recommend_cold_user"] = percentiles(
                timed(lambda i: client.recommend(f"new-{i}", args.k), args.requests))
    finally:
        running.stop()
    base = results["grpc_getinfo_baseline"]["p50_ms"]
    for r in results.values():
        r["p50_vs_getinfo"] = round(r["p50_ms"] / base, 1)
    machine = {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
               "candidate_quotas": rec.quotas.__dict__, "k": args.k,
               "items": len(rec.models.items)}
    print(json.dumps({"machine": machine, "results": results}, indent=2))
    print(render([{"path": k, **v} for k, v in results.items()]))


if __name__ == "__main__":
    main()
