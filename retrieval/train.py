"""Training and export of the two-tower model.

Export writes three things into an artifact directory: ``user_tower/`` and ``item_tower/``
(SavedModels with one tf.function signature each, so serving never imports this code nor calls
``predict()``), and ``item_embeddings.npy`` + ``item_ids.json`` for the index build.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from feature_repo.data.features import RECENT_N, pad_sequences
from retrieval.model import TwoTower

# Keras warns that our subclassed models have no get_config(); we export tf.functions instead.
tf.get_logger().setLevel("ERROR")


def _dataset(examples: pd.DataFrame, batch_size: int, shuffle_seed: int | None) -> tf.data.Dataset:
    freq = examples["item_id"].map(examples["item_id"].value_counts(normalize=True))
    ds = tf.data.Dataset.from_tensor_slices({
        "item_probability": freq.to_numpy(dtype="float32"),
        "user_id": examples["user_id"].astype(str).to_numpy(),
        "history": pad_sequences(examples["history"].tolist(), RECENT_N).astype(str),
        "item_id": examples["item_id"].astype(str).to_numpy(),
        "category": examples["category"].astype(str).to_numpy(),
    })
    if shuffle_seed is not None:
        ds = ds.shuffle(len(examples), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_two_tower(
    examples: pd.DataFrame,
    user_ids: list[str],
    items: pd.DataFrame,
    epochs: int = 5,
    batch_size: int = 512,
    dim: int = 32,
    learning_rate: float = 0.01,
    seed: int = 0,
    verbose: int = 2,
) -> tuple[TwoTower, dict[str, float]]:
    """Fit on (user_id, history, item_id, category) rows; returns the model and throughput facts."""
    tf.keras.utils.set_random_seed(seed)
    model = TwoTower(sorted(set(user_ids)), items["item_id"].astype(str).tolist(),
                     sorted(items["category"].astype(str).unique()), dim=dim)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate))
    start = time.perf_counter()
    model.fit(_dataset(examples, batch_size, seed), epochs=epochs, verbose=verbose)
    seconds = time.perf_counter() - start
    return model, {"examples": len(examples), "epochs": epochs, "train_seconds": round(seconds, 2),
                   "examples_per_second": round(len(examples) * epochs / max(seconds, 1e-9), 1)}


class _UserTowerExport(tf.Module):
    def __init__(self, tower: tf.keras.Model):
        super().__init__()
        self.tower = tower

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.string)])
    def embed(self, user_id: tf.Tensor, history: tf.Tensor) -> tf.Tensor:
        return self.tower({"user_id": user_id, "history": history})


class _ItemTowerExport(tf.Module):
    def __init__(self, tower: tf.keras.Model):
        super().__init__()
        self.tower = tower

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string)])
    def embed(self, item_id: tf.Tensor, category: tf.Tensor) -> tf.Tensor:
        return self.tower({"item_id": item_id, "category": category})


def embed_items(model: TwoTower, items: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
    """Item-tower embeddings of the catalog, in the row order of ``items`` (float32)."""
    out = []
    for lo in range(0, len(items), batch_size):
        chunk = items.iloc[lo:lo + batch_size]
        out.append(model.item_tower({"item_id": tf.constant(chunk["item_id"].astype(str).to_numpy()),
                                     "category": tf.constant(chunk["category"].astype(str).to_numpy())}).numpy())
    return np.concatenate(out).astype("float32")


def export(model: TwoTower, items: pd.DataFrame, out_dir: Path) -> dict[str, int]:
    """Write both towers and the catalog's embeddings; returns sizes for the manifest."""
    tf.saved_model.save(_UserTowerExport(model.user_tower), str(out_dir / "user_tower"))
    tf.saved_model.save(_ItemTowerExport(model.item_tower), str(out_dir / "item_tower"))
    emb = embed_items(model, items)
    np.save(out_dir / "item_embeddings.npy", emb)
    (out_dir / "item_ids.json").write_text(json.dumps(items["item_id"].astype(str).tolist()))
    return {"items": int(emb.shape[0]), "dim": int(emb.shape[1])}
