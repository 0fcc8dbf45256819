"""The models one server version answers with, loaded together from the live artifacts.

``Models.load`` reads the live index (and the retrieval version it was built from), the
ranking model (the published one, or the newest of a kind), the item features and the
optional churn model, as one consistent set; ``disk_fingerprint`` tells when a newer set is
on disk (the hot reload in serving/recommender.py). The user tower and the ranker are called
through their exported graphs, or through TensorFlow Lite copies (``compile_lite``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feature_repo.artifacts import ArtifactStore
from feature_repo.errors import ArtifactError
from feature_repo.data.features import RECENT_N, pad_sequences
from feature_repo.data.item_table import ItemTable
from feature_repo.workspace import Workspace
from ranking.features import FEATURE_NAMES, item_columns
from retrieval.cooccurrence import CooccurrenceModel
from retrieval.index import INDEX_FILE, ItemIndex
from retrieval.user_features import activity_vector
from serving.churn import ChurnModel
from serving.errors import ModelNotLoaded

NO_ITEM_IDS = np.empty(0, dtype=str)  # the scorer's item ids (and history) for a ranker that reads none (the DCN)


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
    item_tower: Any = None  # content embedding of items the index does not hold yet
    head_weights: np.ndarray = field(default_factory=lambda: np.array([0.1, 0.2, 0.7], np.float32))
    head_index: tuple[int, int, int] = (0, 1, 2)  # columns of click, cart, purchase in the heads (-1: none)
    repeat_rate: np.ndarray | None = None  # per ItemTable position
    available: np.ndarray | None = None  # per ItemTable position: in the catalog and not marked unavailable
    fingerprint: tuple = ()  # what was loaded; a different one on disk means reload
    churn: Any = None  # serving.churn.ChurnModel (None: not trained yet)
    item_to_cooccurrence: np.ndarray | None = None  # ItemTable position → co-occurrence row (-1: none)
    ranker_kind: str = ""  # "dcn" or "lstm" (the ranking manifest's spec)
    mapped_files: tuple[Path, ...] = ()  # files requests read piecewise (mapped): serving/page_cache.py

    def __post_init__(self) -> None:
        # The exported functions have one input signature each: calling their graph directly
        # skips tf.function's argument matching (~0.1 ms per call, two calls a request).
        self._embed_user = _graph_call(self.user_tower.embed)
        self._score_heads = _graph_call(self.scorer.score_heads)
        self._tf_user, self._tf_scorer = _on_arrays(self._embed_user), _on_arrays(self._score_heads)
        self._lite_user = self._lite_scorer = None  # TensorFlow Lite copies, once ``compile_lite`` made them
        if self.cooccurrence is not None and self.item_to_cooccurrence is None:
            self.item_to_cooccurrence = np.array([self.cooccurrence.position.get(i, -1) for i in self.items.item_ids],
                                                 dtype=np.int64)
        # The ranking features' per-item columns are made here, with the rest of the load, not by
        # the first request that ranks (~0.1 s on a 1M-item catalog).
        item_columns(self.items)

    def embed_users(self, user_ids: list[str], history: np.ndarray, activity: np.ndarray) -> np.ndarray:
        """[B, D] user-tower embeddings: ``history`` [B, RECENT_N] padded ids, ``activity`` [B, A]."""
        return (self._lite_user or self._tf_user)(user_ids, history, activity)

    def compile_lite(self) -> None:
        """Serve the user tower and the ranker through TensorFlow Lite copies where they convert
        and agree with TensorFlow (serving/lite.py); the rest stays on TensorFlow."""
        import tensorflow as tf

        from serving.lite import compile_function

        ids = self.items.item_ids[:8].astype(str)
        activity = np.stack([activity_vector({}), activity_vector({"n_view": 12, "n_purchase": 2})]).astype(np.float32)
        history = pad_sequences([list(ids[:3]), list(ids[2:7])], RECENT_N).astype(str)
        self._lite_user = compile_function(
            self.user_tower.embed, self.user_tower,
            [tf.TensorSpec([None], tf.string), tf.TensorSpec([None, RECENT_N], tf.string),
             tf.TensorSpec([None, activity.shape[1]], tf.float32)],
            [np.array(["warm-up", "?"]), history, activity],
            self._tf_user, "user tower")
        features = np.random.default_rng(0).normal(size=(len(ids), len(FEATURE_NAMES))).astype(np.float32)
        self._lite_scorer = compile_function(
            self.scorer.score_heads, self.scorer,
            [tf.TensorSpec([None, len(FEATURE_NAMES)], tf.float32)] + [tf.TensorSpec([None], tf.string)] * 3,
            [features, ids, ids[:5], np.array(["view", "click", "view", "purchase", "add_to_cart"])],
            self._tf_scorer, f"ranker ({self.ranker_kind})")

    @property
    def ranker_scores_rows_alone(self) -> bool:
        """True when the ranker scores each row from its own dense features only (the DCN: no
        item id, no history), so that several users' candidates can go through one call with no
        item ids; the LSTM reads the item ids and the user's history."""
        return self.ranker_kind == "dcn"

    def score_heads(self, features: np.ndarray, item_ids: np.ndarray, history: np.ndarray,
                    history_types: np.ndarray) -> np.ndarray:
        """[N, tasks] head probabilities of one user's N candidates; ``item_ids``: theirs, or
        none (NO_ITEM_IDS) when ``ranker_scores_rows_alone``."""
        return (self._lite_scorer or self._tf_scorer)(features, item_ids, history, history_types)

    @classmethod
    def load(cls, ws: Workspace, ranker: str = "published") -> "Models":
        """The live versions; ``ranker``: "published" (the ranking store's live version) or a
        kind ("dcn", "lstm"): its newest version, for a deployment whose latency budget decides."""
        import tensorflow as tf

        fingerprint = disk_fingerprint(ws, ranker)
        try:
            index_store = ArtifactStore(ws.models_dir / "index")
            ranking_store = ArtifactStore(ws.models_dir / "ranking")
            index_version = index_store.current_version()
            retrieval_version = index_store.manifest(index_version)["retrieval_version"]
            retrieval_dir = ws.models_dir / "retrieval" / retrieval_version
            index_dir = index_store.root / index_version
            # Mapped, not copied: the server's processes share one copy of the index and the
            # embeddings (a published version's files never change), 0.5 GB each on 1M items.
            index = ItemIndex.load(index_dir, shared=True)
            ranking_version = ranking_version_for(ranking_store, ranker)
            ranking_manifest = ranking_store.manifest(ranking_version)
            if ranking_manifest["features"] != list(FEATURE_NAMES) or "spec" not in ranking_manifest:
                raise ModelNotLoaded(f"ranking model {ranking_version} was trained on other features "
                                     f"than this server computes; retrain it with `shoprec train ranking`.")
            user_tower = tf.saved_model.load(str(retrieval_dir / "user_tower"))
            item_tower = tf.saved_model.load(str(retrieval_dir / "item_tower"))
            scorer = tf.saved_model.load(str(ranking_store.root / ranking_version / "scorer"))
            embeddings_file = index_dir / "item_embeddings.npy"
            item_embeddings = np.load(embeddings_file, mmap_mode="r")  # aligned with the index
        except ModelNotLoaded:
            raise
        except Exception as e:  # any missing or broken artifact: say what to run
            raise ModelNotLoaded(f"cannot load models from {ws.models_dir}: {e}; run `shoprec train` "
                                 f"and `shoprec index` (or `shoprec demo`) first.") from e
        items = ItemTable.load(ws.features_dir)
        index_to_item = np.array([items.position.get(i, -1) for i in index.item_ids], dtype=np.int64)
        versions = {"retrieval": retrieval_version, "index": index_version, "ranking": ranking_version}
        cooc_dir = index_dir / "cooccurrence"
        cooccurrence = CooccurrenceModel.load(cooc_dir) if cooc_dir.exists() else None
        item_to_index = np.array([index.position.get(i, -1) for i in items.item_ids], dtype=np.int64)
        spec = ranking_manifest["spec"]
        tasks = list(spec["tasks"])
        weights = np.array([spec["task_weights"][t] for t in tasks], dtype=np.float32)
        head_index = tuple(tasks.index(t) if t in tasks else -1 for t in ("click", "add_to_cart", "purchase"))
        rates = repeat_purchase_rates(index_dir)
        repeat_rate = np.array([rates.get(i, 0.0) for i in items.item_ids], dtype=np.float32)
        try:
            churn = ChurnModel.load(ws)
            versions["churn"] = churn.version
        except ArtifactError:  # optional: GetUserInsights says what to run
            churn = None
        return cls(versions, user_tower, index, item_embeddings, scorer, items, index_to_item, item_to_index,
                   items.most_popular(len(items)), cooccurrence, item_tower, weights, head_index, repeat_rate,
                   catalog_availability(ws, items), fingerprint, churn, ranker_kind=spec.get("kind", ""),
                   mapped_files=(index_dir / INDEX_FILE, embeddings_file))


def _graph_call(function):
    """A fast way to call a restored tf.function that has one input signature and one output
    tensor: its graph with the flat inputs and captured variables, skipping the argument binding
    of ``ConcreteFunction.__call__`` (0.12 ms of a 0.4 ms user-tower call). That is TensorFlow's
    internal API (pinned in pyproject.toml): anything else falls back to the concrete function,
    or to the function itself. tests/serving/test_fast_call.py holds the outputs equal."""
    concrete = getattr(function, "concrete_functions", None)
    if not concrete or len(concrete) != 1:
        return function
    concrete = concrete[0]
    try:
        graph = concrete._inference_function
        captured = list(concrete.captured_inputs)
        single_output = len(concrete.function_type.flat_outputs) == 1
    except AttributeError:
        return concrete
    import tensorflow as tf

    if not single_output or not all(isinstance(c, tf.Tensor) for c in captured):
        return concrete  # e.g. distributed variables, which need the wrapper's handling

    def call(*tensors):
        return graph.call_flat(*tensors, *captured)[0]

    call.concrete = concrete  # for tests and debugging: the function this stands for
    return call


def _on_arrays(function):
    """A TensorFlow call with numpy arrays (or lists) in and a numpy array out."""
    import tensorflow as tf

    return lambda *arrays: function(*(tf.constant(a) for a in arrays)).numpy()


def repeat_purchase_rates(index_dir: Path) -> dict[str, float]:
    """{item id: share of its buyers who bought it again}, as `shoprec index rebuild` wrote it
    next to the index; empty for an index built before it did."""
    repeat_file = index_dir / "repeat_purchase.json"
    return json.loads(repeat_file.read_text()) if repeat_file.exists() else {}


def ranking_version_for(store: ArtifactStore, ranker: str) -> str:
    """The ranking version to serve: the live one, or the newest of kind ``ranker`` (the live
    one when it is of that kind, so that a rollback by re-publishing is respected)."""
    live = store.current_version()
    if ranker == "published" or store.manifest(live).get("model") == ranker:
        return live
    of_kind = [v for v in store.versions() if store.manifest(v).get("model") == ranker]
    if not of_kind:
        raise ModelNotLoaded(f"ranker = {ranker!r}: no {ranker} ranking model in {store.root}; train one with "
                             f"`shoprec train ranking --ranker {ranker}` (or `both`), or serve ranker = \"published\".")
    return of_kind[-1]


def disk_fingerprint(ws: Workspace, ranker: str = "published") -> tuple:
    """Live index, ranking (as ``ranker`` picks it) and churn versions plus the feature and
    catalog files' change times."""
    out = []
    for kind in ("index", "ranking", "churn"):
        try:
            store = ArtifactStore(ws.models_dir / kind)
            out.append(ranking_version_for(store, ranker) if kind == "ranking" else store.current_version())
        except Exception:  # noqa: BLE001 - nothing published yet: Models.load says what to run
            out.append(None)
    for path in (ws.features_dir / "item_stats.parquet", ws.clean_dir / "items.parquet"):
        out.append(path.stat().st_mtime_ns if path.exists() else None)
    return tuple(out)


def catalog_availability(ws: Workspace, items: ItemTable) -> np.ndarray:
    """True for items in the clean catalog, unless its optional ``available`` column says False."""
    path = ws.clean_dir / "items.parquet"
    if not path.exists():
        return np.ones(len(items), dtype=bool)
    import pandas as pd

    catalog = pd.read_parquet(path)
    keep = catalog["item_id"].astype(str)
    if "available" in catalog:
        keep = keep[catalog["available"].fillna(True).astype(bool).to_numpy()]
    return np.isin(items.item_ids.astype(str), keep.to_numpy(dtype=str))
