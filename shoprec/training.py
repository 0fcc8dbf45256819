"""Model jobs: train the two-tower retriever, build the FAISS index, train the ranker.

Training sets come from Feast's offline store with point-in-time joins (each example sees the
user's features as of its own timestamp). The last ``holdout_days`` of events are kept out of
training and used to report retrieval quality against a popularity baseline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.artifacts import ArtifactStore
from feature_repo.data.features import collapse_sequence
from feature_repo.store import open_store
from feature_repo.workspace import Workspace
from retrieval.metrics import ndcg_at_k, recall_at_k
from shoprec.pipeline import load_clean

EVAL_K = 50  # the headline cut-off: what a page plus the ranker's reach looks like
HOLDOUT_KS = (5, 10, 20, 50, 100, 200, 500)


@dataclass
class TrainingConfig:
    """Knobs of the model jobs, each with its documented default."""

    holdout_days: int = 14  # events after (last event - holdout_days) are held out for evaluation
    retrieval_epochs: int = 10  # upper bound: early stopping on the validation HR@10 ends sooner
    retrieval_patience: int = 2
    retrieval_learning_rate: float = 1e-3
    retrieval_max_len: int = 20  # history positions the user tower reads (of the RECENT_N stored)
    retrieval_blocks: int = 1  # attention blocks: long-term taste matters more than order here
    retrieval_user_ids: bool = True  # user-id embedding (with an OOV slot for new users)
    retrieval_activity: bool = True  # profile/activity features in the user tower
    # Views count as positives too: they are 80% of the signal and measurably help (docs/benchmarks.md).
    retrieval_positives: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
    ranking_epochs: int = 10  # upper bound: early stopping on the validation loss ends sooner
    ranking_kinds: tuple[str, ...] = ("dcn", "lstm")  # rankers trained (and compared) by `train ranking`
    ranking_serve: str = "best"  # the one published: a kind, or "best" by validation NDCG@10
    ranking_negatives: int = 30  # sampled unclicked candidates kept per training request
    ranking_history_len: int = 20  # recent steps the LSTM ranker reads
    max_ranking_requests: int = 20_000  # visit days used to train the rankers
    ranking_eval_requests: int = 3_000  # holdout visit days the rankers are evaluated on
    embedding_dim: int = 64  # 32 trains 1.6x faster but lost 5 points of holdout recall on tiny
    index_factory: str = "Flat"  # any FAISS factory string; Flat is exact
    ranking_label_days: int = 21  # visits in the last N days before the holdout are the rankers' labels
    seed: int = 0
    verbose: int = 2


def stores(ws: Workspace) -> dict[str, ArtifactStore]:
    return {kind: ArtifactStore(ws.models_dir / kind) for kind in ("retrieval", "index", "ranking")}


def cutoff_time(events: pd.DataFrame, holdout_days: int) -> pd.Timestamp:
    return events["timestamp"].max() - pd.Timedelta(days=holdout_days) if holdout_days > 0 else events["timestamp"].max() + pd.Timedelta(seconds=1)


def _historical(ws: Workspace, entity_df: pd.DataFrame, features: Any) -> pd.DataFrame:
    """Point-in-time user features for (user_id, event_timestamp, row) rows, in ``row`` order."""
    store = open_store(ws)
    out = store.get_historical_features(entity_df=entity_df, features=features).to_df()
    return out.sort_values("row").reset_index(drop=True)


def _user_state(ws: Workspace, users: pd.Series, times: pd.Series) -> tuple[list[list[str]], np.ndarray]:
    """Point-in-time recent items and activity vectors (retrieval/user_features.py) per row."""
    from retrieval.user_features import ACTIVITY_FEATURES, activity_matrix

    entity = pd.DataFrame({"user_id": users.to_numpy(), "event_timestamp": pd.to_datetime(times.to_numpy(), utc=True),
                           "row": np.arange(len(users))})
    df = _historical(ws, entity, ["user_recent_fv:recent_items", *(f"user_activity_fv:{f}" for f in ACTIVITY_FEATURES)])
    histories = [list(h) if isinstance(h, (list, np.ndarray)) else [] for h in df["recent_items"]]
    return histories, activity_matrix(df[list(ACTIVITY_FEATURES)].to_dict("records"))



def train_retrieval(ws: Workspace, cfg: TrainingConfig = TrainingConfig()) -> tuple[str, dict[str, Any]]:
    """Train on every user's sequence before the cutoff, evaluate on the holdout, export, publish.

    Examples are (the user's recent items as of the day before, interacted item) pairs from
    Feast's point-in-time join; early stopping holds out the latest 5% of them.
    """
    from feature_repo.data.features import RECENT_N, item_attributes
    from retrieval.model import Catalog
    from retrieval.train import TrainSettings, export, train_two_tower

    events, items = load_clean(ws, "events"), load_clean(ws, "items")
    cutoff = cutoff_time(events, cfg.holdout_days)
    seq = collapse_sequence(events[events["timestamp"] < cutoff])
    positives = seq[seq["event_type"].isin(cfg.retrieval_positives)].reset_index(drop=True)
    # Each target sees the user's recent items as of the end of the previous day (Feast, point
    # in time): what the model must learn is long-term taste, not the current session.
    histories, activity = _user_state(ws, positives["user_id"], positives["timestamp"])
    users = positives["user_id"].astype(str).tolist()
    is_valid = positives["timestamp"] >= positives["timestamp"].quantile(0.95)  # the latest 5% validate
    sample = np.flatnonzero(is_valid.to_numpy())
    sample = np.random.default_rng(cfg.seed).choice(sample, size=min(3000, len(sample)), replace=False)
    train_rows = np.flatnonzero(~is_valid.to_numpy())
    targets = positives["item_id"].tolist()
    catalog = Catalog.from_items(items, item_attributes(items))
    settings = TrainSettings(dim=cfg.embedding_dim, epochs=cfg.retrieval_epochs, seed=cfg.seed,
                             learning_rate=cfg.retrieval_learning_rate, max_len=min(cfg.retrieval_max_len, RECENT_N),
                             blocks=cfg.retrieval_blocks, batch_size=512, patience=cfg.retrieval_patience)
    valid = ([histories[i] for i in sample], [targets[i] for i in sample], [users[i] for i in sample],
             activity[sample])
    model, facts = train_two_tower(None, catalog, settings, valid, verbose=cfg.verbose,
                                   pairs=([histories[i] for i in train_rows], [targets[i] for i in train_rows]),
                                   users=[users[i] for i in train_rows] if cfg.retrieval_user_ids else None,
                                   activity=activity[train_rows] if cfg.retrieval_activity else None)
    metrics = evaluate_holdout(ws, model, events, items, cutoff) if cfg.holdout_days > 0 else {}
    store = stores(ws)["retrieval"]
    with store.build(kind="retrieval", model="two_tower_sequential", cutoff=str(cutoff), training=facts,
                     metrics=metrics, config=cfg.__dict__) as b:
        b.manifest["export"] = export(model, catalog, b.path)
    store.publish(b.version)
    return b.version, b.manifest


def holdout_targets(events: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Users with history before the cutoff and their set of items purchased after it."""
    before = set(events.loc[events["timestamp"] < cutoff, "user_id"])
    after = events[(events["timestamp"] >= cutoff) & (events["event_type"] == "purchase") & events["user_id"].isin(before)]
    return after.groupby("user_id")["item_id"].agg(set).reset_index(name="relevant")


def evaluate_holdout(ws: Workspace, model, events: pd.DataFrame, items: pd.DataFrame,
                     cutoff: pd.Timestamp) -> dict[str, float]:
    """Recall/NDCG@50 of held-out purchases: the two-tower model against popularity."""
    from retrieval.index import exact_top_k
    from retrieval.train import embed_items, embed_users

    targets = holdout_targets(events, cutoff)
    if targets.empty:
        return {}
    hist, activity = _user_state(ws, targets["user_id"], pd.Series([cutoff] * len(targets)))
    user_emb = embed_users(model, hist, targets["user_id"].astype(str).tolist(), activity)
    item_ids = items["item_id"].astype(str).to_numpy()
    deepest = max(HOLDOUT_KS)
    top = exact_top_k(embed_items(model, item_ids.tolist()), user_emb, deepest)
    model_lists = [list(item_ids[row]) for row in top]
    train_buys = events[(events["timestamp"] < cutoff) & (events["event_type"] == "purchase")]
    popular = train_buys["item_id"].value_counts().index[:deepest].tolist()
    relevant = targets["relevant"].tolist()
    out: dict[str, float] = {"holdout_users": len(targets)}
    for k in HOLDOUT_KS:
        out[f"recall_at_{k}"] = round(recall_at_k(model_lists, relevant, k), 4)
        out[f"ndcg_at_{k}"] = round(ndcg_at_k(model_lists, relevant, k), 4)
        out[f"popularity_recall_at_{k}"] = round(recall_at_k([popular] * len(relevant), relevant, k), 4)
        out[f"popularity_ndcg_at_{k}"] = round(ndcg_at_k([popular] * len(relevant), relevant, k), 4)
    out["coverage_at_10"] = round(len({i for lst in model_lists for i in lst[:10]}) / len(item_ids), 4)
    # Slices: new users (at most 5 items of history at the cutoff) and new items (launched in
    # the 30 days before the cutoff or after it: few or no interactions to learn from).
    launched = items.set_index(items["item_id"].astype(str))["created_at"]
    new_items = set(launched.index[launched >= cutoff - pd.Timedelta(days=30)])
    slices = {"new_users": ([len(h) <= 5 for h in hist], relevant),
              "new_items": ([True] * len(relevant), [r & new_items for r in relevant])}
    for name, (mask, rel) in slices.items():
        chosen = [i for i, m in enumerate(mask) if m and rel[i]]
        out[f"{name}_targets"] = sum(len(rel[i]) for i in chosen)
        for label, lists in (("", [model_lists[i] for i in chosen]), ("popularity_", [popular] * len(chosen))):
            out[f"{name}_{label}recall_at_{EVAL_K}"] = round(recall_at_k(lists, [rel[i] for i in chosen], EVAL_K), 4)
    return out


def build_index(ws: Workspace, cfg: TrainingConfig = TrainingConfig()) -> tuple[str, dict[str, Any]]:
    """Index the current catalog with the live retrieval model (see shoprec/index_job.py)."""
    from shoprec.index_job import IndexSettings, rebuild

    return rebuild(ws, IndexSettings(factory=cfg.index_factory, seed=cfg.seed))


def train_ranking(ws: Workspace, cfg: TrainingConfig = TrainingConfig()) -> tuple[str, dict[str, Any]]:
    """Train the rankers on funnel labels over the live retrieval's candidates (shoprec/ranking_job.py)."""
    from shoprec.ranking_job import train_ranking as job

    return job(ws, cfg)
