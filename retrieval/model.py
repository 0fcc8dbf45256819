"""The two-tower retrieval model (TensorFlow Recommenders).

The idea: a user and an item are each embedded into the same space so that the inner product
ranks items for the user; training pushes a user's next interacted item above the other items
of the batch (in-batch softmax). The user tower sees the user id (unknown ids fall into an
out-of-vocabulary slot) and the mean of the embeddings of their recent items, which it shares
with the item tower, so a user with history but no trained id still gets a meaningful vector.
The item tower sees the item id and its category. Both outputs are L2-normalised, so the FAISS
inner-product index ranks exactly as training scores.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

PAD = ""  # padding token of the history; also the mask value of the item lookup


class ItemTower(tf.keras.Model):
    """Item id + category → normalised embedding."""

    def __init__(self, item_ids: list[str], categories: list[str], dim: int = 32):
        super().__init__()
        self.item_lookup = tf.keras.layers.StringLookup(vocabulary=item_ids, mask_token=PAD)
        self.item_embedding = tf.keras.layers.Embedding(len(item_ids) + 2, dim, mask_zero=True)
        self.category_lookup = tf.keras.layers.StringLookup(vocabulary=categories)
        self.category_embedding = tf.keras.layers.Embedding(len(categories) + 1, dim)
        self.project = tf.keras.layers.Dense(dim)

    def id_embedding(self, ids: tf.Tensor) -> tf.Tensor:
        return self.item_embedding(self.item_lookup(ids))

    def call(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        x = tf.concat([self.id_embedding(inputs["item_id"]),
                       self.category_embedding(self.category_lookup(inputs["category"]))], axis=-1)
        return tf.math.l2_normalize(self.project(x), axis=-1)


class UserTower(tf.keras.Model):
    """User id + mean of recent item embeddings (shared with the item tower) → normalised embedding."""

    def __init__(self, user_ids: list[str], items: ItemTower, dim: int = 32):
        super().__init__()
        self.items = items
        self.user_lookup = tf.keras.layers.StringLookup(vocabulary=user_ids)
        self.user_embedding = tf.keras.layers.Embedding(len(user_ids) + 1, dim)
        self.hidden = tf.keras.layers.Dense(2 * dim, activation="relu")
        self.project = tf.keras.layers.Dense(dim)

    def call(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        history = inputs["history"]  # [batch, L] strings, PAD-padded
        mask = tf.cast(tf.not_equal(history, PAD), tf.float32)[..., None]
        hist = tf.reduce_sum(self.items.id_embedding(history) * mask, axis=1)
        hist = hist / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        x = tf.concat([self.user_embedding(self.user_lookup(inputs["user_id"])), hist], axis=-1)
        return tf.math.l2_normalize(self.project(self.hidden(x)), axis=-1)


class TwoTower(tfrs.Model):
    """Trains both towers with an in-batch softmax over L2-normalised embeddings.

    Args:
      user_ids / item_ids / categories: vocabularies (anything else maps to an OOV slot).
      dim: embedding size (32 is plenty for a few thousand items).
      temperature: divides the logits; small values sharpen the softmax over cosine scores.
    """

    def __init__(self, user_ids: list[str], item_ids: list[str], categories: list[str],
                 dim: int = 32, temperature: float = 0.1):
        super().__init__()
        self.item_tower = ItemTower(item_ids, categories, dim)
        self.user_tower = UserTower(user_ids, self.item_tower, dim)
        self.task = tfrs.tasks.Retrieval(temperature=temperature)

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        users = self.user_tower({"user_id": features["user_id"], "history": features["history"]})
        items = self.item_tower({"item_id": features["item_id"], "category": features["category"]})
        # logQ correction: in-batch negatives are drawn in proportion to popularity, so without it
        # the softmax learns to push popular items down.
        return self.task(users, items, candidate_sampling_probability=features.get("item_probability"),
                         compute_metrics=not training)
