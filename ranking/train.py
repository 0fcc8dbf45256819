"""Training and export of the ranker.

Export writes ``scorer/``: a SavedModel whose ``score`` tf.function takes one user's candidate
feature matrix [N, F] and returns N purchase probabilities in one call (serving never calls
``predict()``).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from ranking.model import MLPRanker

# Keras warns that our subclassed models have no get_config(); we export tf.functions instead.
tf.get_logger().setLevel("ERROR")


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties averaged); 0.5 when one class is absent."""
    y = np.asarray(y).astype(bool)
    pos, neg = y.sum(), (~y).sum()
    if pos == 0 or neg == 0:
        return 0.5
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    sorted_scores = np.asarray(score)[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def train_ranker(x: np.ndarray, y: np.ndarray, x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
                 epochs: int = 5, batch_size: int = 1024, learning_rate: float = 3e-3, seed: int = 0,
                 verbose: int = 2) -> tuple[MLPRanker, dict[str, float]]:
    """Fit the MLP on feature rows and 0/1 purchase labels; returns the model and facts."""
    tf.keras.utils.set_random_seed(seed)
    model = MLPRanker(x.shape[1])
    model.adapt(x)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                  loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
    start = time.perf_counter()
    model.fit(x, y.astype("float32"), epochs=epochs, batch_size=batch_size, shuffle=True, verbose=verbose)
    seconds = time.perf_counter() - start
    facts = {"examples": int(len(x)), "positives": int(y.sum()), "epochs": epochs,
             "train_seconds": round(seconds, 2),
             "examples_per_second": round(len(x) * epochs / max(seconds, 1e-9), 1)}
    if x_val is not None and len(x_val):
        facts["val_auc"] = round(auc(y_val, model(x_val).numpy()), 4)
    return model, facts


class _ScorerExport(tf.Module):
    def __init__(self, model: MLPRanker):
        super().__init__()
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
    def score(self, features: tf.Tensor) -> tf.Tensor:
        return tf.sigmoid(self.model(features, training=False))


def export(model: MLPRanker, out_dir: Path) -> None:
    tf.saved_model.save(_ScorerExport(model), str(out_dir / "scorer"))
