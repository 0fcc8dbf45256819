"""Training and export of the two-tower model.

Training data are per-user item sequences in time order; every position of every sequence is a
next-item example. Validation is leave-one-out (each validation user's last item from the rest);
training keeps the epoch with the best validation HR@10 and stops after ``patience`` epochs
without improvement.

Export writes ``user_tower/`` and ``item_tower/`` (SavedModels with tf.function signatures, so
serving never imports this code nor calls ``predict()``), and ``item_embeddings.npy`` +
``item_ids.json`` for the index build.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from retrieval.model import PAD, Catalog, TwoTower

# Keras warns that our subclassed models have no get_config(); we export tf.functions instead.
tf.get_logger().setLevel("ERROR")


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of the two-tower training, each a documented default.

    Chosen on the Amazon Beauty validation target and the synthetic shop (docs/benchmarks.md).
    """

    dim: int = 64
    max_len: int = 50  # history positions the user tower reads
    blocks: int = 2
    heads: int = 2
    dropout: float = 0.2
    temperature: float = 0.05
    learning_rate: float = 1e-3
    batch_size: int = 128  # sequences per step (each contributes up to max_len examples)
    epochs: int = 30  # upper bound; early stopping usually ends sooner
    patience: int = 3  # epochs without validation improvement before stopping
    seed: int = 0


def next_item_examples(sequences: list[list[str]], max_len: int) -> dict[str, np.ndarray]:
    """Right-aligned [n, max_len] inputs and targets: targets[t] follows inputs[..t]."""
    seqs = [s[-(max_len + 1):] for s in sequences if len(s) >= 2]
    inputs = np.full((len(seqs), max_len), PAD, dtype=object)
    targets = np.full((len(seqs), max_len), PAD, dtype=object)
    for i, s in enumerate(seqs):
        n = len(s) - 1
        inputs[i, max_len - n:] = s[:-1]
        targets[i, max_len - n:] = s[1:]
    return {"inputs": inputs.astype(str), "targets": targets.astype(str)}


def pair_examples(histories: list[list[str]], targets: list[str], max_len: int) -> dict[str, np.ndarray]:
    """(history, target) pairs: right-aligned [n, max_len] histories and [n] targets."""
    history = np.full((len(histories), max_len), PAD, dtype=object)
    for i, h in enumerate(histories):
        h = list(h)[-max_len:]
        if h:
            history[i, max_len - len(h):] = h
    return {"history": history.astype(str), "item_id": np.asarray(targets, dtype=str)}


def _probability(targets: np.ndarray) -> np.ndarray:
    """Each target's share of all targets: the sampling probability of in-batch negatives."""
    counts = np.bincount(targets.ravel(), minlength=int(targets.max()) + 1).astype(np.float64)
    counts[0] = 0  # PAD
    return (counts / max(counts.sum(), 1.0))[targets].astype(np.float32)


def _indices(vocabulary: list[str], values: np.ndarray) -> np.ndarray:
    """Strings → StringLookup indices (0 PAD, 1 unknown, vocabulary from 2)."""
    index = {item: i + 2 for i, item in enumerate(vocabulary)}
    index[PAD] = 0
    return np.vectorize(lambda v: index.get(v, 1), otypes=[np.int64])(values) if values.size else values.astype(np.int64)


def _dataset(examples: dict[str, np.ndarray], catalog: Catalog, users: list[str], batch_size: int,
             seed: int) -> tf.data.Dataset:
    examples = {k: (v if k == "activity" else _indices(users if k == "user_id" else catalog.item_ids, v))
                for k, v in examples.items()}
    if "targets" in examples:
        examples["target_probability"] = _probability(examples["targets"])
    else:
        examples["item_probability"] = _probability(examples["item_id"])
    n = len(next(iter(examples.values())))
    ds = tf.data.Dataset.from_tensor_slices(examples)
    return ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(batch_size).prefetch(2)


def embed_users(model: TwoTower, histories: list[list[str]], users: list[str] | None = None,
                activity: np.ndarray | None = None, batch_size: int = 1024) -> np.ndarray:
    """User-tower embeddings for histories (oldest first), with ids and activity if given, float32."""
    out = []
    width = model.user_tower.max_len
    for lo in range(0, len(histories), batch_size):
        chunk = histories[lo:lo + batch_size]
        padded = np.full((len(chunk), width), PAD, dtype=object)
        for i, h in enumerate(chunk):
            h = list(h)[-width:]
            if h:
                padded[i, width - len(h):] = h
        inputs = {"history": tf.constant(padded.astype(str))}
        if users is not None:
            inputs["user_id"] = tf.constant(np.asarray(users[lo:lo + batch_size], dtype=str))
        if activity is not None and model.user_tower.n_activity:
            inputs["activity"] = tf.constant(activity[lo:lo + batch_size], dtype=tf.float32)
        out.append(model.user_tower(inputs).numpy())
    return np.concatenate(out).astype("float32") if out else np.zeros((0, model.item_tower.item_embedding.output_dim), "float32")


def embed_items(model: TwoTower, item_ids: list[str], batch_size: int = 8192) -> np.ndarray:
    """Item-tower embeddings of known items by id (content looked up in the catalog), float32."""
    out = [model.item_tower.by_id(tf.constant(np.asarray(item_ids[lo:lo + batch_size], dtype=str))).numpy()
           for lo in range(0, len(item_ids), batch_size)]
    return np.concatenate(out).astype("float32")


def hit_rate(model: TwoTower, catalog: Catalog, histories: list[list[str]], targets: list[str], k: int = 10,
             users: list[str] | None = None, activity: np.ndarray | None = None) -> float:
    """Leave-one-out HR@k over the whole catalog, the history's items excluded (full ranking)."""
    position = {item: i for i, item in enumerate(catalog.item_ids)}
    scores = embed_users(model, histories, users, activity) @ embed_items(model, catalog.item_ids).T
    for row, h in enumerate(histories):
        scores[row, [position[i] for i in h if i in position]] = -np.inf
    target_scores = scores[np.arange(len(targets)), [position[t] for t in targets]]
    rank = (scores > target_scores[:, None]).sum(axis=1)
    return float((rank < k).mean())


def train_two_tower(sequences: list[list[str]] | None, catalog: Catalog, settings: TrainSettings = TrainSettings(),
                    valid: tuple | None = None, verbose: int = 2,
                    pairs: tuple[list[list[str]], list[str]] | None = None, users: list[str] | None = None,
                    activity: np.ndarray | None = None) -> tuple[TwoTower, dict[str, object]]:
    """Fit on item sequences (every position) or on (history, target) ``pairs``.

    ``users`` (one per sequence or pair) turn on the user-id embedding, ``activity`` (rows
    aligned the same way, retrieval/user_features.py) the profile features. ``valid`` is
    (histories, targets[, users, activity]). Returns the model at its best validation epoch and
    the training facts.
    """
    tf.keras.utils.set_random_seed(settings.seed)
    s = settings
    vocabulary = sorted(set(users)) if users is not None else None
    n_activity = activity.shape[1] if activity is not None else 0
    model = TwoTower(catalog, s.dim, s.max_len, s.blocks, s.heads, s.dropout, s.temperature, vocabulary, n_activity)
    model.compile(optimizer=tf.keras.optimizers.Adam(s.learning_rate))
    if pairs is not None:
        examples = pair_examples(*pairs, s.max_len)
        n_examples = len(examples["item_id"])
        keep = np.arange(len(pairs[1]))
    else:
        keep = np.array([i for i, seq in enumerate(sequences or []) if len(seq) >= 2], dtype=np.int64)
        examples = next_item_examples(sequences or [], s.max_len)
        n_examples = int((examples["targets"] != PAD).sum())
    if users is not None:
        examples["user_id"] = np.asarray(users, dtype=str)[keep]
    if activity is not None:
        examples["activity"] = np.asarray(activity, dtype=np.float32)[keep]
    ds = _dataset(examples, catalog, vocabulary or [], s.batch_size, s.seed)
    history, best, best_weights, waited, epochs = [], -1.0, None, 0, 0
    start = time.perf_counter()
    for epoch in range(s.epochs):
        fit = model.fit(ds, epochs=1, verbose=0)
        epochs += 1
        loss = float(fit.history["loss"][-1])
        score = hit_rate(model, catalog, *valid[:2], 10, *valid[2:]) if valid else -loss
        history.append({"epoch": epoch + 1, "loss": round(loss, 4), "valid_hr_at_10": round(score, 4) if valid else None})
        if verbose:
            print(f"  epoch {epoch + 1}/{s.epochs}  loss {loss:.4f}" + (f"  valid HR@10 {score:.4f}" if valid else ""),
                  flush=True)
        if score > best:
            best, best_weights, waited = score, model.get_weights(), 0
        else:
            waited += 1
            if waited >= s.patience:
                break
    seconds = time.perf_counter() - start
    if best_weights is not None:
        model.set_weights(best_weights)
    return model, {"mode": "pairs" if pairs is not None else "sequences", "examples": n_examples, "epochs_run": epochs,
                   "best_valid_hr_at_10": round(best, 4) if valid else None, "train_seconds": round(seconds, 2),
                   "examples_per_second": round(n_examples * epochs / max(seconds, 1e-9), 1),
                   "history": history, "settings": s.__dict__}


class _UserTowerExport(tf.Module):
    def __init__(self, tower: tf.keras.Model):
        super().__init__()
        self.tower = tower

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.string),
                                  tf.TensorSpec([None, None], tf.float32)])
    def embed(self, user_id: tf.Tensor, history: tf.Tensor, activity: tf.Tensor) -> tf.Tensor:
        """``activity``: [batch, n] from retrieval.user_features.activity_matrix (zeros if unknown)."""
        inputs = {"history": history, "user_id": user_id}
        if self.tower.n_activity:
            inputs["activity"] = activity
        return self.tower(inputs)


class _ItemTowerExport(tf.Module):
    def __init__(self, tower: tf.keras.Model):
        super().__init__()
        self.tower = tower

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def embed(self, item_id: tf.Tensor) -> tf.Tensor:
        return self.tower.by_id(item_id)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string),
                                  tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int64),
                                  tf.TensorSpec([None, None], tf.string)])
    def embed_content(self, item_id: tf.Tensor, category: tf.Tensor, brand: tf.Tensor, price_bucket: tf.Tensor,
                      attributes: tf.Tensor) -> tf.Tensor:
        """A new item (unknown id) from its content alone."""
        return self.tower({"item_id": item_id, "category": category, "brand": brand,
                           "price_bucket": price_bucket, "attributes": attributes})


def export(model: TwoTower, catalog: Catalog, out_dir: Path) -> dict[str, int]:
    """Write both towers and the catalog's embeddings; returns sizes for the manifest."""
    tf.saved_model.save(_UserTowerExport(model.user_tower), str(out_dir / "user_tower"))
    item_export = _ItemTowerExport(model.item_tower)
    tf.saved_model.save(item_export, str(out_dir / "item_tower"),
                        signatures={"embed": item_export.embed, "embed_content": item_export.embed_content})
    emb = embed_items(model, catalog.item_ids)
    np.save(out_dir / "item_embeddings.npy", emb)
    (out_dir / "item_ids.json").write_text(json.dumps(catalog.item_ids))
    return {"items": int(emb.shape[0]), "dim": int(emb.shape[1]), "activity_features": model.user_tower.n_activity}
