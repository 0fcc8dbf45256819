"""Training, evaluation and export of the rankers.

Training data is a ``RankingSet``: one row per (request, candidate) with its dense features,
the candidate's integer id, the request's group (whose history it shares) and one 0/1 label per
task. Histories are stored once per group and gathered per batch, so a request with 300
candidates does not copy its history 300 times.

Export writes ``scorer/``: a SavedModel whose ``score`` tf.function scores one user's N
candidates in one call (serving never calls ``predict()``):
``score(features [N, F], items [N], history [L], history_types [L]) -> [N]`` (the combined score),
and ``score_heads`` with the same inputs returns ``[N, tasks]`` probabilities.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from ranking.model import EVENT_TYPE_IDS, ItemVocabulary, Ranker, RankerSpec

# Keras warns that our subclassed models have no get_config(); we export tf.functions instead.
tf.get_logger().setLevel("ERROR")


@dataclass
class RankingSet:
    """Rows of (request, candidate) examples; ``group`` indexes ``history``/``history_type`` rows."""

    dense: np.ndarray  # [R, F] float32
    item: np.ndarray  # [R] int64 (ItemVocabulary ids)
    group: np.ndarray  # [R] int64
    labels: np.ndarray  # [R, T] float32, one column per task
    history: np.ndarray  # [G, L] int64
    history_type: np.ndarray  # [G, L] int64
    retrieval_score: np.ndarray  # [R] float32: the retrieval-only order to compare against

    def __len__(self) -> int:
        return len(self.item)

    def take(self, groups: np.ndarray) -> "RankingSet":
        """The rows of the given groups (group ids kept, so histories still line up)."""
        rows = np.isin(self.group, groups)
        return RankingSet(self.dense[rows], self.item[rows], self.group[rows], self.labels[rows],
                          self.history, self.history_type, self.retrieval_score[rows])

    def inputs(self) -> dict[str, np.ndarray]:
        return {"dense": self.dense, "item": self.item, "history": self.history[self.group],
                "history_type": self.history_type[self.group]}

    def dataset(self, batch_size: int, shuffle: bool, seed: int) -> tf.data.Dataset:
        hist, htype = tf.constant(self.history), tf.constant(self.history_type)
        ds = tf.data.Dataset.from_tensor_slices((self.dense, self.item, self.group, self.labels))
        if shuffle:
            ds = ds.shuffle(min(len(self), 200_000), seed=seed, reshuffle_each_iteration=True)

        def gather(dense, item, group, labels):
            return ({"dense": dense, "item": item, "history": tf.gather(hist, group),
                     "history_type": tf.gather(htype, group)}, labels)

        return ds.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties averaged); 0.5 when one class is absent."""
    y = np.asarray(y).astype(bool)
    pos, neg = y.sum(), (~y).sum()
    if pos == 0 or neg == 0:
        return 0.5
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    sorted_scores = np.asarray(score)[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1  # average ranks over ties
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _groups(group: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    return np.split(order, bounds)


def gauc(y: np.ndarray, score: np.ndarray, group: np.ndarray) -> float:
    """Per-request AUC averaged with weights = rows, over requests that have both classes."""
    total, weight = 0.0, 0
    for rows in _groups(group):
        yy = y[rows]
        if 0 < yy.sum() < len(yy):
            total += auc(yy, score[rows]) * len(rows)
            weight += len(rows)
    return total / weight if weight else 0.5


def ndcg_at_k(gain: np.ndarray, score: np.ndarray, group: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over requests with any gain, ranking each request's rows by ``score``."""
    values = []
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    for rows in _groups(group):
        g = gain[rows]
        if g.max() <= 0:
            continue
        top = np.argsort(-score[rows], kind="stable")[:k]
        ideal = np.sort(g)[::-1][:k]
        values.append(float((g[top] * discount[:len(top)]).sum() / (ideal * discount[:len(ideal)]).sum()))
    return float(np.mean(values)) if values else 0.0


def evaluate(model: Ranker, data: RankingSet, batch_size: int = 8192) -> dict[str, float]:
    """AUC and GAUC per head, NDCG@10 of the combined score vs the retrieval-only order.

    NDCG uses the purchase label (or the only task) and, with funnel tasks, graded gain too
    (click 1, add_to_cart 2, purchase 3: the deepest step reached).
    """
    logits = predict_logits(model, data, batch_size)
    combined = model.combined(tf.constant(logits)).numpy()
    out: dict[str, float] = {"requests": int(len(np.unique(data.group))), "rows": int(len(data))}
    tasks = model.spec.tasks
    for t, task in enumerate(tasks):
        out[f"auc_{task}"] = round(auc(data.labels[:, t], logits[:, t]), 4)
        out[f"gauc_{task}"] = round(gauc(data.labels[:, t], logits[:, t], data.group), 4)
    main = data.labels[:, tasks.index("purchase") if "purchase" in tasks else -1]
    out["ndcg_at_10"] = round(ndcg_at_k(main, combined, data.group), 4)
    out["ndcg_at_10_retrieval_order"] = round(ndcg_at_k(main, data.retrieval_score, data.group), 4)
    out["hr_at_10"] = round(hit_rate(main, combined, data.group), 4)
    out["hr_at_10_retrieval_order"] = round(hit_rate(main, data.retrieval_score, data.group), 4)
    if len(tasks) > 1:
        graded = data.labels.sum(axis=1)
        out["ndcg_at_10_graded"] = round(ndcg_at_k(graded, combined, data.group), 4)
        out["ndcg_at_10_graded_retrieval_order"] = round(ndcg_at_k(graded, data.retrieval_score, data.group), 4)
    return out


def hit_rate(y: np.ndarray, score: np.ndarray, group: np.ndarray, k: int = 10) -> float:
    """Share of requests with a positive whose top k by ``score`` contains one."""
    hits = [float(y[rows][np.argsort(-score[rows], kind="stable")[:k]].max() > 0)
            for rows in _groups(group) if y[rows].max() > 0]
    return float(np.mean(hits)) if hits else 0.0


def predict_logits(model: Ranker, data: RankingSet, batch_size: int = 8192) -> np.ndarray:
    """Logits of every row, in row order; each request's history is encoded once per chunk."""
    out = np.zeros((len(data), len(model.spec.tasks)), np.float32)
    order = np.argsort(data.group, kind="stable")
    lo = 0
    while lo < len(order):
        hi = min(lo + batch_size, len(order))
        rows = order[lo:hi]
        groups, local = np.unique(data.group[rows], return_inverse=True)
        out[rows] = model({"dense": data.dense[rows], "item": data.item[rows], "group": local.astype(np.int64),
                           "history": data.history[groups], "history_type": data.history_type[groups]},
                          training=False).numpy()
        lo = hi
    return out


def train_ranker(spec: RankerSpec, vocab: ItemVocabulary, train: RankingSet, valid: RankingSet | None = None,
                 epochs: int = 5, batch_size: int = 1024, learning_rate: float = 2e-3, seed: int = 0,
                 verbose: int = 2) -> tuple[Ranker, dict[str, Any]]:
    """Fit a ranker on ``train`` (early stopping on ``valid`` loss, best weights kept)."""
    tf.keras.utils.set_random_seed(seed)
    model = Ranker(spec, train.dense.shape[1], len(vocab))
    model.adapt(train.dense)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                  loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
    callbacks = []
    val_ds = None
    if valid is not None and len(valid):
        val_ds = valid.dataset(4096, shuffle=False, seed=seed)
        callbacks.append(tf.keras.callbacks.EarlyStopping(patience=1, restore_best_weights=True))
    start = time.perf_counter()
    history = model.fit(train.dataset(batch_size, shuffle=True, seed=seed), validation_data=val_ds,
                        epochs=epochs, verbose=verbose, callbacks=callbacks)
    seconds = time.perf_counter() - start
    ran = len(history.history["loss"])
    facts: dict[str, Any] = {
        "kind": spec.kind, "tasks": list(spec.tasks), "task_weights": spec.task_weights,
        "rows": int(len(train)), "requests": int(len(np.unique(train.group))),
        "positives": {t: int(train.labels[:, i].sum()) for i, t in enumerate(spec.tasks)},
        "epochs": ran, "train_seconds": round(seconds, 2),
        "rows_per_second": round(len(train) * ran / max(seconds, 1e-9), 1)}
    return model, facts


class _ScorerExport(tf.Module):
    def __init__(self, model: Ranker, vocab: ItemVocabulary):
        super().__init__()
        self.model = model
        self.items = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(vocab.item_ids),
                                                tf.constant([vocab.index[i] for i in vocab.item_ids], tf.int64)),
            default_value=1)
        self.types = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(list(EVENT_TYPE_IDS)),
                                                tf.constant(list(EVENT_TYPE_IDS.values()), tf.int64)),
            default_value=1)
        self.history_len = model.spec.history_len

    def _logits(self, features, items, history, history_types):
        history, history_types = history[-self.history_len:], history_types[-self.history_len:]
        h = tf.where(tf.equal(history, ""), tf.constant(0, tf.int64), self.items.lookup(history))
        t = tf.where(tf.equal(history_types, ""), tf.constant(0, tf.int64), self.types.lookup(history_types))
        # A leading padding step keeps an empty history well-formed; masked steps change nothing.
        h, t = tf.pad(h, [[1, 0]]), tf.pad(t, [[1, 0]])
        inputs = {"dense": features, "item": self.items.lookup(items), "history": tf.expand_dims(h, 0), "history_type": tf.expand_dims(t, 0)}
        return self.model(inputs, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None], tf.string),
                                  tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string)])
    def score(self, features, items, history, history_types):
        return self.model.combined(self._logits(features, items, history, history_types))

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None], tf.string),
                                  tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string)])
    def score_heads(self, features, items, history, history_types):
        return tf.sigmoid(self._logits(features, items, history, history_types))


def export(model: Ranker, vocab: ItemVocabulary, out_dir: Path) -> None:
    tf.saved_model.save(_ScorerExport(model, vocab), str(Path(out_dir) / "scorer"))
