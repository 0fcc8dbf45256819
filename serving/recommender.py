"""The request pipeline: one user in, k ranked items with scores, sources and reasons out.

Per request: ONE Feast online read for the user → user tower (exported tf.function) → FAISS
top-N, plus popular items as a second candidate source → filters (already bought, excluded,
category) → ranker over [user, item, cross] features (item features from memory) → top-k.
A user with no known history gets popular items; an unreachable feature store degrades to that
same path with ``degraded=True`` instead of failing the request.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from feature_repo.artifacts import ArtifactStore
from feature_repo.data.features import RECENT_N, pad_sequences
from feature_repo.data.item_table import ItemTable
from feature_repo.workspace import Workspace
from ranking.features import FEATURE_NAMES, rank_features
from retrieval.cooccurrence import CooccurrenceModel
from retrieval.index import ItemIndex
from retrieval.user_features import activity_vector
from serving.candidates import CandidateSources, Quotas
from serving.errors import ModelNotLoaded

log = logging.getLogger(__name__)
USER_FEATURE_SERVICE = "ranking_user_v1"


@dataclass
class Recommendation:
    item_id: str
    score: float
    retrieval_score: float
    source: str
    reason: str
    category: str
    brand: str
    price: float


@dataclass
class RecommendResult:
    user_id: str
    items: list[Recommendation]
    personalized: bool
    degraded: bool
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class Models:
    """Everything loaded from one consistent set of artifact versions."""

    versions: dict[str, str]
    user_tower: Any
    index: ItemIndex
    item_embeddings: np.ndarray
    scorer: Any
    items: ItemTable
    index_to_item: np.ndarray  # index position → ItemTable position (-1 if unknown)
    item_to_index: np.ndarray  # ItemTable position → index position (-1 if not indexed)
    popular: np.ndarray  # ItemTable positions, most popular first
    cooccurrence: Any = None  # item-to-item model built with the index (None: not available)

    @classmethod
    def load(cls, ws: Workspace) -> "Models":
        import tensorflow as tf

        try:
            index_store = ArtifactStore(ws.models_dir / "index")
            ranking_store = ArtifactStore(ws.models_dir / "ranking")
            index_version = index_store.current_version()
            retrieval_version = index_store.manifest(index_version)["retrieval_version"]
            retrieval_dir = ws.models_dir / "retrieval" / retrieval_version
            index = ItemIndex.load(index_store.current())
            ranking_dir = ranking_store.current()
            if ranking_store.manifest()["features"] != list(FEATURE_NAMES):
                raise ModelNotLoaded(f"ranking model {ranking_dir.name} was trained on other features "
                                     f"than this server computes; retrain it with `shoprec train`.")
            user_tower = tf.saved_model.load(str(retrieval_dir / "user_tower"))
            scorer = tf.saved_model.load(str(ranking_dir / "scorer"))
            item_embeddings = np.load(index_store.current() / "item_embeddings.npy")  # aligned with the index
        except ModelNotLoaded:
            raise
        except Exception as e:  # any missing or broken artifact: say what to run
            raise ModelNotLoaded(f"cannot load models from {ws.models_dir}: {e}; run `shoprec train` "
                                 f"and `shoprec index` (or `shoprec demo`) first.") from e
        items = ItemTable.load(ws.features_dir)
        index_to_item = np.array([items.position.get(i, -1) for i in index.item_ids], dtype=np.int64)
        versions = {"retrieval": retrieval_version, "index": index_version, "ranking": ranking_dir.name}
        cooc_dir = index_store.current() / "cooccurrence"
        cooccurrence = CooccurrenceModel.load(cooc_dir) if cooc_dir.exists() else None
        item_to_index = np.array([index.position.get(i, -1) for i in items.item_ids], dtype=np.int64)
        return cls(versions, user_tower, index, item_embeddings, scorer, items, index_to_item, item_to_index,
                   items.most_popular(len(items)), cooccurrence)


class Recommender:
    """Serves recommendations from a workspace's live artifacts and its Feast online store.

    Args:
      ws: the workspace (artifacts, feature tables, Feast registry and online store).
      quotas: candidates per source (serving/candidates.py) before filtering and ranking.
      feature_store: a Feast FeatureStore; opened from the workspace when omitted.
      store_retry_seconds: how long a failed online store is skipped before it is tried again.
    """

    def __init__(self, ws: Workspace, quotas: Quotas = Quotas(), feature_store=None,
                 store_retry_seconds: float = 5.0):
        from feature_repo.store import open_store

        self.ws = ws
        self.quotas = quotas
        # After a failed read the store is skipped for this long, so that an outage costs one
        # slow request (client retries/timeouts) instead of every request.
        self.store_retry_seconds = store_retry_seconds
        self._store_down_until = 0.0
        self.models = Models.load(ws)
        m = self.models
        self.sources = CandidateSources(m.items, m.index, m.index_to_item, m.cooccurrence, quotas)
        self.store = feature_store or open_store(ws)
        self.feature_service = self.store.get_feature_service(USER_FEATURE_SERVICE)
        self.recommend("warm-up", 10)  # first Feast read and first tf.function call are slow

    def user_features(self, user_id: str) -> tuple[dict[str, Any], bool]:
        """The user's online features (one read) and whether the store failed."""
        if time.monotonic() < self._store_down_until:
            return {}, True
        try:
            row = self.store.get_online_features(features=self.feature_service,
                                                 entity_rows=[{"user_id": user_id}]).to_dict()
        except Exception:  # store down: serve without personal features rather than fail
            log.exception("online feature read failed; skipping the store for %.0fs", self.store_retry_seconds)
            self._store_down_until = time.monotonic() + self.store_retry_seconds
            return {}, True
        return {k: v[0] for k, v in row.items() if k != "user_id"}, False

    def recommend(self, user_id: str, k: int, exclude: tuple[str, ...] = (), category: str = "") -> RecommendResult:
        import tensorflow as tf

        m = self.models
        user, degraded = self.user_features(user_id)
        history = list(user.get("recent_items") or [])
        types = list(user.get("recent_event_types") or [])
        personalized = bool(history)
        blocked = set(exclude) | {i for i, t in zip(history, types) if t == "purchase"}

        user_emb = None
        if personalized:
            user_emb = m.user_tower.embed(tf.constant([user_id]),
                                          tf.constant(pad_sequences([history], RECENT_N).astype(str)),
                                          tf.constant(activity_vector(user)[None])).numpy()
        cand = self.sources.gather(user_emb, history)  # ItemTable position → source names

        items = m.items
        keep = [p for p in cand if items.item_ids[p] not in blocked and (not category or items.category[p] == category)]
        if category and len(keep) < k:  # a category filter must still fill the page
            extra = [p for p in m.popular if items.category[p] == category and items.item_ids[p] not in blocked]
            keep += [p for p in extra if p not in cand][: k - len(keep)]
        if not keep:
            return RecommendResult(user_id, [], personalized, degraded, m.versions)
        positions = np.array(keep, dtype=np.int64)
        if user_emb is not None:
            index_pos = m.item_to_index[positions]
            retrieval = np.where(index_pos >= 0, m.item_embeddings[np.maximum(index_pos, 0)] @ user_emb[0], 0.0)
            retrieval = retrieval.astype(np.float32)
        else:
            retrieval = np.zeros(len(positions), dtype=np.float32)

        if personalized:
            x = rank_features(user, positions, retrieval, items, m.cooccurrence)
            types = (types + ["view"] * len(history))[: len(history)]  # aligned with the history
            final = m.scorer.score(tf.constant(x), tf.constant(items.item_ids[positions].astype(str)),
                                   tf.constant(np.asarray(history, dtype=str)),
                                   tf.constant(np.asarray(types, dtype=str))).numpy()
        else:  # cold start: popularity order (the ranker has nothing personal to work with)
            final = 1.0 - np.arange(len(positions), dtype=np.float32) / len(positions)
        top = np.argsort(-final, kind="stable")[:k]
        recent_cats = {items.category[p] for p in items.positions(history)}
        out = []
        for t in top:
            p = int(positions[t])
            sources = cand.get(p, ["popular"])
            out.append(Recommendation(items.item_ids[p], float(final[t]), float(retrieval[t]), "+".join(sources),
                                      _reason(sources, items.category[p] in recent_cats),
                                      items.category[p], items.brand[p], float(items.price[p])))
        return RecommendResult(user_id, out, personalized, degraded, m.versions)


def _reason(sources: list[str], recent_category: bool) -> str:
    """A short code the shop can turn into copy ("Because you viewed ...", "New in", ...)."""
    if "cooccurrence" in sources:
        return "goes_with_recent"
    if "two_tower" in sources:
        return "recent_category" if recent_category else "personalized"
    return {"trending": "trending", "new": "new_arrival"}.get(sources[0], "popular")
