"""`shoprec index rebuild`: embed the current catalog with the live item tower, verify, go live.

New items (ids the model never saw) are embedded from their content through the item tower's
``embed_content`` signature, so they become retrievable as soon as they are in the catalog and
the index is rebuilt. The new index is built and verified (item count, dimension against the
user tower, ANN recall against exact search) before anything is written; it is written to a new
version directory and published by an atomic pointer switch, so a crash or a failed verification
never changes the live version. Old versions beyond the retention are pruned.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from feature_repo.errors import ArtifactError
from feature_repo.workspace import Workspace
from shoprec.pipeline import load_clean


class IndexVerificationFailed(ArtifactError):
    """A rebuilt index failed a check; the live version was left as it was."""


@dataclass(frozen=True)
class IndexSettings:
    """Args:
      factory: FAISS factory string (Flat, HNSW32, IVF1024,Flat, IVF1024,PQ16, ...).
      min_recall: lowest acceptable recall@100 of the index against exact search.
      keep: index versions kept on disk (the live one always is).
      nprobe: IVF lists searched per query, saved with the index (ignored by Flat/HNSW); 0
        picks the smallest that reaches ``target_recall`` at ``recall_k`` on real users.
      target_recall, recall_k: what nprobe = 0 aims for: recall of the exact top-``recall_k``
        for users' embeddings (``recall_k`` 500: serving's ≥ 500-candidate setups).
      probe_users: users embedded as the probe's queries (a seeded sample).
    """

    factory: str = "Flat"
    min_recall: float = 0.9
    keep: int = 5
    seed: int = 0
    nprobe: int = 0
    target_recall: float = 0.95
    recall_k: int = 500
    probe_users: int = 200

    def __post_init__(self) -> None:
        if self.nprobe < 0:
            raise ValueError(f"nprobe={self.nprobe}: use 0 (chosen for target_recall) or a list count >= 1")
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target_recall={self.target_recall}: use a share in (0, 1], e.g. 0.95")
        if self.recall_k < 1 or self.probe_users < 1:
            raise ValueError(f"recall_k={self.recall_k}, probe_users={self.probe_users}: both must be >= 1")


def embed_catalog(ws: Workspace, retrieval_dir) -> tuple[list[str], np.ndarray, int]:
    """Embeddings of every current catalog item; returns ids, embeddings and how many were new."""
    import tensorflow as tf

    from feature_repo.data.features import item_attributes, price_bucket

    items = load_clean(ws, "items")
    known = set(json.loads((retrieval_dir / "item_ids.json").read_text()))
    tower = tf.saved_model.load(str(retrieval_dir / "item_tower"))
    is_new = ~items["item_id"].isin(known).to_numpy()
    emb = np.zeros((len(items), 0), dtype=np.float32)
    parts = []
    if (~is_new).any():
        old = items[~is_new]
        parts.append((np.flatnonzero(~is_new), tower.embed(tf.constant(old["item_id"].astype(str).to_numpy())).numpy()))
    if is_new.any():
        new = items[is_new]
        attrs = item_attributes(new).tolist()
        width = max(1, max(len(a) for a in attrs))
        padded = np.array([list(a) + [""] * (width - len(a)) for a in attrs], dtype=str)
        parts.append((np.flatnonzero(is_new), tower.embed_content(
            tf.constant(new["item_id"].astype(str).to_numpy()), tf.constant(new["category"].astype(str).to_numpy()),
            tf.constant(new["brand"].astype(str).to_numpy()), tf.constant(price_bucket(new["price"]).astype(np.int64)),
            tf.constant(padded)).numpy()))
    emb = np.zeros((len(items), parts[0][1].shape[1]), dtype=np.float32)
    for rows, values in parts:
        emb[rows] = values
    return items["item_id"].astype(str).tolist(), emb, int(is_new.sum())


class _UserTower:
    """The live user tower, loaded once for the rebuild's dimension check and its probe queries."""

    def __init__(self, retrieval_dir):
        import tensorflow as tf

        self.n_activity = json.loads((retrieval_dir / "manifest.json").read_text())["export"].get(
            "activity_features", 0)
        self._tower = tf.saved_model.load(str(retrieval_dir / "user_tower"))

    def embed(self, users: list[str], history: np.ndarray, activity: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return self._tower.embed(tf.constant(users), tf.constant(history), tf.constant(activity)).numpy()

    @property
    def dim(self) -> int:
        return int(self.embed(["probe"], np.array([[""]]), np.zeros((1, self.n_activity), np.float32)).shape[-1])


def user_queries(ws: Workspace, tower: _UserTower, n: int, seed: int = 0) -> np.ndarray:
    """User-tower embeddings of ``n`` sampled users with history, from their newest feature rows
    (the queries serving sends the index); empty when the feature tables are not built."""
    import pandas as pd

    from feature_repo.data.features import RECENT_N, pad_sequences
    from retrieval.user_features import activity_vector

    recent_file, activity_file = ws.features_dir / "user_recent.parquet", ws.features_dir / "user_activity.parquet"
    if not recent_file.exists():
        return np.zeros((0, 0), np.float32)
    recent = pd.read_parquet(recent_file, columns=["user_id", "event_timestamp", "recent_items"])
    recent = recent.sort_values("event_timestamp", kind="stable").drop_duplicates("user_id", keep="last")
    recent = recent[recent["recent_items"].map(lambda r: r is not None and len(r) > 0)]
    recent = recent.sample(min(n, len(recent)), random_state=seed)
    if recent.empty:
        return np.zeros((0, 0), np.float32)
    users = recent["user_id"].astype(str).tolist()
    activity = np.zeros((len(users), tower.n_activity), np.float32)
    if tower.n_activity and activity_file.exists():
        rows = (pd.read_parquet(activity_file, filters=[("user_id", "in", users)])
                .sort_values("event_timestamp", kind="stable").drop_duplicates("user_id", keep="last")
                .set_index("user_id"))
        activity = np.stack([activity_vector(rows.loc[u].to_dict() if u in rows.index else None) for u in users])
    history = pad_sequences(recent["recent_items"].tolist(), RECENT_N).astype(str)
    return tower.embed(users, history, activity).astype(np.float32)


def rebuild(ws: Workspace, settings: IndexSettings = IndexSettings()) -> tuple[str, dict[str, Any]]:
    """Build, verify, publish and prune; raises IndexVerificationFailed with the live version untouched."""
    from retrieval.index import build_and_probe
    from shoprec.training import stores

    s = stores(ws)
    retrieval_version = s["retrieval"].current_version()
    retrieval_dir = s["retrieval"].current()
    ids, emb, new_items = embed_catalog(ws, retrieval_dir)
    tower = _UserTower(retrieval_dir)
    queries = user_queries(ws, tower, settings.probe_users, settings.seed)
    index, facts = build_and_probe(emb, ids, settings.factory, seed=settings.seed, nprobe=settings.nprobe or None,
                                   user_queries=queries, target_recall=settings.target_recall,
                                   recall_k=settings.recall_k)
    problems = []
    if len(index) != len(ids):
        problems.append(f"index holds {len(index)} items, the catalog {len(ids)}")
    user_dim = tower.dim  # one tower call
    if index.dim != user_dim:
        problems.append(f"index dimension {index.dim} != user tower output {user_dim}")
    if facts["recall_at_100_vs_exact"] < settings.min_recall:
        problems.append(f"recall@100 vs exact {facts['recall_at_100_vs_exact']} < {settings.min_recall} "
                        f"(use a larger HNSW M / efSearch or IVF nprobe, or --factory Flat)")
    if not np.isfinite(emb).all():
        problems.append("some item embeddings are not finite")
    if problems:
        raise IndexVerificationFailed("index rebuild rejected, live version unchanged: " + "; ".join(problems))
    events = load_clean(ws, "events")
    cooccurrence = _cooccurrence(events, ids)
    repeats = repeat_purchase_rates(events)
    with s["index"].build(kind="index", retrieval_version=retrieval_version, new_items=new_items,
                          cooccurrence_items=len(cooccurrence), repeat_purchase_items=len(repeats), **facts) as b:
        index.save(b.path)
        np.save(b.path / "item_embeddings.npy", emb)
        cooccurrence.save(b.path / "cooccurrence")
        (b.path / "repeat_purchase.json").write_text(json.dumps(repeats, sort_keys=True))
    s["index"].publish(b.version)
    b.manifest["pruned"] = s["index"].prune(settings.keep)
    return b.version, b.manifest


def _cooccurrence(events, item_ids: list[str]):
    """Item-to-item co-occurrence over every user's clean sequence, versioned with the index."""
    from feature_repo.data.features import collapse_sequence
    from retrieval.cooccurrence import CooccurrenceModel, sequences_from_events

    return CooccurrenceModel.fit(sequences_from_events(collapse_sequence(events)), item_ids=item_ids)


def repeat_purchase_rates(events, min_purchases: int = 5) -> dict[str, float]:
    """Per item: the share of its purchases made by a customer who had bought it before.

    Serving shows an already-bought item again only when this is high (coffee, skincare),
    never a phone twice. Items with fewer than ``min_purchases`` purchases are left out (0).
    """
    buys = events[events["event_type"] == "purchase"].sort_values("timestamp", kind="stable")
    if buys.empty:
        return {}
    again = buys.duplicated(["user_id", "item_id"])
    stats = again.groupby(buys["item_id"]).agg(["mean", "size"])
    stats = stats[(stats["size"] >= min_purchases) & (stats["mean"] > 0)]
    return {str(item): round(float(rate), 4) for item, rate in stats["mean"].items()}
