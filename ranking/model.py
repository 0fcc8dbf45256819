"""The two rankers: re-score retrieved candidates with everything known about the user, the
item and their relation, with one head per funnel step.

- ``dcn``: a feature-crossing MLP (DCN-v2): explicit cross layers x_{l+1} = x0 * (W x_l + b) + x_l
  learn products such as "category share × retrieval score" that a plain MLP approximates
  badly, then a deep stack.
- ``lstm``: a GRU over the user's recent items and event types; the candidate attends over the
  GRU states (which of my recent steps does this item relate to?), and the attended state, the
  candidate's id embedding and the last state join the same dense features in a deep stack.

Both take the dense features of ranking/features.py (a Normalization layer adapted on the
training set is part of the model) and emit one logit per task. ``combined`` turns the head
probabilities into the ranking score with documented weights: conversion first.

Items and event types enter as integer ids (0 = padding, 1 = unknown); ``ItemVocabulary`` maps
strings to them in training, and the exported scorer does the same lookup in the graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

KINDS = ("dcn", "lstm")
FUNNEL_TASKS = ("click", "add_to_cart", "purchase")
# Ranking score = Σ weight × P(task). A purchase is what the shop is paid for; a cart is most of
# the way there; a click alone is weak evidence (curiosity) but breaks ties among items the user
# is unlikely to buy. The weights sum to 1 so the score stays a probability-like number.
DEFAULT_TASK_WEIGHTS = {"click": 0.1, "add_to_cart": 0.2, "purchase": 0.7}
EVENT_TYPE_IDS = {"view": 2, "click": 3, "add_to_cart": 4, "purchase": 5}  # 0 pad, 1 unknown
PAD, UNKNOWN = 0, 1
# The deep stack's widths per kind. The DCN scores ~560 candidates per request on the serving
# path, where its width is most of its cost: (64, 32) ranks as well as (128, 64) on the synthetic
# shops (holdout AUC and NDCG@10 within seed noise) at half the CPU per request
# (docs/benchmarks.md, twenty-sixth session).
DEFAULT_HIDDEN = {"dcn": (64, 32), "lstm": (128, 64)}


@dataclass(frozen=True)
class RankerSpec:
    """Architecture of a ranker (saved in its manifest)."""

    kind: str = "dcn"
    tasks: tuple[str, ...] = FUNNEL_TASKS
    task_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))
    hidden: tuple[int, ...] = ()  # () = the kind's default (DEFAULT_HIDDEN)
    cross_layers: int = 2  # dcn only
    history_len: int = 20  # lstm only: recent positions read (of the RECENT_N stored)
    item_dim: int = 32  # lstm only
    units: int = 32  # lstm only: GRU width
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"ranker kind={self.kind!r} is unknown; expected one of {KINDS}.")
        if not self.hidden:
            object.__setattr__(self, "hidden", DEFAULT_HIDDEN[self.kind])  # frozen: set once, here
        missing = [t for t in self.tasks if t not in self.task_weights]
        if missing:
            raise ValueError(f"task_weights lack {missing}; give every task in {self.tasks} a weight.")

    def weights(self) -> np.ndarray:
        return np.array([self.task_weights[t] for t in self.tasks], dtype=np.float32)


class ItemVocabulary:
    """Item id ↔ integer id (2.. in the given order; 0 padding, 1 unknown)."""

    def __init__(self, item_ids: list[str]):
        self.item_ids = list(dict.fromkeys(str(i) for i in item_ids))
        self.index = {item: k + 2 for k, item in enumerate(self.item_ids)}

    def __len__(self) -> int:
        return len(self.item_ids) + 2

    def encode(self, item_ids) -> np.ndarray:
        return np.array([self.index.get(i, UNKNOWN) for i in item_ids], dtype=np.int64)

    def encode_history(self, items: list[str], types: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
        """The last ``length`` entries, left-padded with 0 (the most recent is always last)."""
        items, types = list(items)[-length:], list(types)[-length:]
        types = types + ["view"] * (len(items) - len(types))  # a history without types: views
        h = np.zeros(length, dtype=np.int64)
        t = np.zeros(length, dtype=np.int64)
        if items:
            h[-len(items):] = self.encode(items)
            t[-len(items):] = [EVENT_TYPE_IDS.get(x, UNKNOWN) for x in types]
        return h, t


class Ranker(tf.keras.Model):
    """Inputs: dict(dense [B, F] float32, item [B] int64, history [G, L] int64, history_type [G, L] int64,
    and optionally group [B] int64: which history row each candidate belongs to).

    Output: one logit per task, [B, len(spec.tasks)]. Without ``group``, G must be B (one history
    per row) or 1 (one user's request: the attention broadcasts instead of copying). With
    ``group``, each history is encoded once and shared by its candidates.
    """

    def __init__(self, spec: RankerSpec, n_features: int, n_items: int):
        super().__init__()
        self.spec = spec
        self.n_features, self.n_items = n_features, n_items
        self.norm = tf.keras.layers.Normalization(axis=-1)
        if spec.kind == "dcn":
            self.cross = [tfrs.layers.dcn.Cross() for _ in range(spec.cross_layers)]
        else:
            self.item_embedding = tf.keras.layers.Embedding(n_items, spec.item_dim)
            self.type_embedding = tf.keras.layers.Embedding(len(EVENT_TYPE_IDS) + 2, 8)
            self.gru = tf.keras.layers.GRU(spec.units, return_sequences=True, return_state=True)
            self.query = tf.keras.layers.Dense(spec.units, use_bias=False)
        self.deep = [tf.keras.layers.Dense(h, activation="relu") for h in spec.hidden]
        self.drops = [tf.keras.layers.Dropout(spec.dropout) for _ in spec.hidden]
        self.heads = tf.keras.layers.Dense(len(spec.tasks))

    def adapt(self, dense: np.ndarray) -> None:
        self.norm.adapt(dense)

    def encode_history(self, history: tf.Tensor, history_type: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """GRU states [G, L, U], their mask [G, L] and the last state [G, U] (lstm only)."""
        mask = tf.not_equal(history, PAD)
        steps = tf.concat([self.item_embedding(history), self.type_embedding(history_type)], axis=-1)
        states, last = self.gru(steps, mask=mask)
        return states, mask, last

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        x = self.norm(inputs["dense"])
        if self.spec.kind == "dcn":
            h = x
            for layer in self.cross:
                h = layer(x, h)
        else:
            states, mask, last = self.encode_history(inputs["history"], inputs["history_type"])
            if "group" in inputs:
                states, mask, last = (tf.gather(t, inputs["group"]) for t in (states, mask, last))
            cand = self.item_embedding(inputs["item"])  # [B, D]
            q = self.query(cand)  # [B, U]
            logits = tf.reduce_sum(tf.expand_dims(q, 1) * states, axis=-1) / float(np.sqrt(self.spec.units))  # [B, L]
            logits = tf.where(mask, logits, -1e9)
            any_step = tf.cast(tf.reduce_any(mask, axis=-1, keepdims=True), tf.float32)  # [G, 1]
            att = tf.nn.softmax(logits, axis=-1) * any_step
            pooled = tf.reduce_sum(tf.expand_dims(att, -1) * states, axis=1)  # [B, U]
            last = tf.broadcast_to(last, tf.shape(pooled))
            # The match itself (DIN-style product and the best step's score) goes straight to the
            # deep stack: learning "candidate ≈ history" from a concatenation alone is slow.
            best = tf.reduce_max(logits, axis=-1, keepdims=True) * any_step
            h = tf.concat([x, cand, pooled, q * pooled, last, best], axis=-1)
        for dense, drop in zip(self.deep, self.drops):
            h = drop(dense(h), training=training)
        return self.heads(h)

    def combined(self, logits: tf.Tensor) -> tf.Tensor:
        """The ranking score: the task-weighted sum of head probabilities."""
        return tf.reduce_sum(tf.sigmoid(logits) * tf.constant(self.spec.weights()), axis=-1)
