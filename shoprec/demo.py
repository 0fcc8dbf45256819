"""`shoprec demo`: every job on the synthetic shop, then real Recommend calls over gRPC."""
from __future__ import annotations

import json
import time

from feature_repo.workspace import Workspace
from shoprec.progress import Progress
from shoprec.table import render


def pick_demo_users(ws: Workspace, n_active: int = 2) -> list[str]:
    """The most active users, one light user, and a user id nobody has seen (cold start)."""
    from shoprec.pipeline import load_clean

    counts = load_clean(ws, "events")["user_id"].value_counts()
    light = counts[counts.between(3, 10)]
    users = counts.index[:n_active].tolist() + (light.index[:1].tolist() if len(light) else [])
    return users + ["new-visitor-1"]


def holdout_table(metrics: dict) -> str:
    """Held-out purchases of the last days: the two-tower against popularity, per cut-off."""
    from shoprec.training import HOLDOUT_KS

    if not metrics:
        return "no holdout (holdout_days=0)"
    rows = [{"model": name, **{f"R@{k}": metrics[f"{prefix}recall_at_{k}"] for k in HOLDOUT_KS},
             "NDCG@10": metrics[f"{prefix}ndcg_at_10"]} for name, prefix in (("two-tower", ""), ("popularity", "popularity_"))]
    return (f"held-out purchases of {metrics['holdout_users']} users (recall at K, full catalog):\n" + render(rows)
            + f"\nnew users R@50 {metrics['new_users_recall_at_50']} (popularity {metrics['new_users_popularity_recall_at_50']}), "
              f"new items R@50 {metrics['new_items_recall_at_50']} (popularity {metrics['new_items_popularity_recall_at_50']})")


def run_demo(ws: Workspace, preset: str = "default", seed: int = 0, cfg=None) -> dict[str, float]:
    from shoprec import pipeline, training

    cfg = cfg or training.TrainingConfig(seed=seed)
    progress = Progress(total=10)
    started = time.perf_counter()
    progress.say(f"shoprec demo: preset={preset} seed={seed} workspace={ws.root}")
    with progress.step("generate the synthetic shop"):
        counts = pipeline.generate(ws, preset, seed)
        progress.say(render([{"table": k, "rows": v} for k, v in counts.items()]))
    with progress.step("validate against the data contract"):
        report = pipeline.validate(ws)
        progress.say(render([{"table": t, **c} for t, c in report.counts.items()]))
    with progress.step("build feature tables"):
        progress.say(render(pipeline.build_features(ws).to_dict("records")))
    with progress.step("apply Feast repo and materialize into the online store"):
        pipeline.materialize(ws)
    with progress.step("train the two-tower retrieval model"):
        _, manifest = training.train_retrieval(ws, cfg)
        progress.say(holdout_table(manifest["metrics"]))
    with progress.step("build the FAISS index"):
        _, manifest = training.build_index(ws, cfg)
        progress.say(f"{manifest['items']} items, {manifest['factory']}, recall@100 vs exact "
                     f"{manifest['recall_at_100_vs_exact']}")
    with progress.step("train the rankers (DCN and LSTM, click/cart/purchase heads)"):
        from shoprec.ranking_job import ranking_table

        _, manifest = training.train_ranking(ws, cfg)
        progress.say(ranking_table(ws))
        progress.say(f"serving the {manifest['model']} ranker (better validation NDCG@10)")

    with progress.step("train the churn early-warning model"):
        from shoprec.churn import train_churn

        _, manifest = train_churn(ws, verbose=0)
        m = manifest["metrics"]
        progress.say(f"churn within {manifest['horizon_days']} days: AUC {m['auc']:.3f} (days since last visit "
                     f"alone {m['baseline_auc_days_since_last_visit']:.3f}), Brier {m['brier']:.3f}")

    from serving.client import RecommenderClient
    from serving.recommender import Recommender
    from serving.server import start
    from shoprec.cli import print_recommendations

    with progress.step("start the gRPC server"):
        running = start(Recommender(ws), port=0)
    try:
        with progress.step("query the server over gRPC"):
            with RecommenderClient(running.address) as client:
                client.wait_ready()
                progress.say(f"server {running.address} healthy={client.healthy()}")
                users = pick_demo_users(ws)
                for user in users:
                    print_recommendations(client.recommend(user, k=8))
                # The other surfaces: a product page for a first-time visitor, "more like this",
                # and the cart's complements.
                top = client.recommend(users[0], k=2).items
                if top:
                    item = top[0].item_id
                    print_recommendations(client.recommend("first-time-visitor", k=5, surface="product", viewed=item),
                                          f"first-time visitor on the page of {item}")
                    print_recommendations(client.similar_items(item, k=5), f"similar to {item}")
                    print_recommendations(client.cart_recommendations([item], k=5), f"cart [{item}]")
                insights = [client.user_insights(u) for u in users]
                progress.say("\nchurn early warning (GetUserInsights):\n" + render(
                    [{"user": r.user_id, "risk": round(r.churn_risk, 3), "segment": r.segment,
                      "main driver": r.drivers[0].description if r.drivers else ""} for r in insights]))
    finally:
        running.stop()
    timings = {**progress.timings, "total": round(time.perf_counter() - started, 2)}
    (ws.root / "demo_timings.json").write_text(json.dumps(timings, indent=2))
    progress.say("\nwall time per step (s):\n" + render([{"step": k, "seconds": v} for k, v in timings.items()]))
    return timings
