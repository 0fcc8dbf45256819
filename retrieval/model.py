"""The two-tower retrieval model (TensorFlow Recommenders) with a sequential user tower.

The idea: embed a user's recent behaviour and every item into one space so that the inner
product ranks the next item. The item tower sums embeddings of the item id and of its content
(category, brand, price bucket, attribute ids), so an item the model never saw (out-of-vocabulary
id) still gets a useful vector from its content. The user tower reads the user's last items
through the same item tower, adds positions and runs causal self-attention (SASRec-style);
the output at the last position, plus a projection of the mean of all items so far (long-term
taste), is the user's embedding. Training takes either whole sequences (every position predicts
the next item: efficient for data where each step is a separate visit, like reviews) or
(history as of before the target's day, target) pairs from Feast's point-in-time joins (for
session-structured shop data, where the next click is mostly the same session's context and
the future purchases we care about depend on long-term taste). Either way the softmax runs over
the batch's targets with logQ correction for popularity and accidental hits removed. Outputs are
L2-normalised, so FAISS inner-product search ranks exactly as training scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

PAD = ""  # padding token of histories; also the mask token of the item lookup


@dataclass
class Catalog:
    """Item ids and content, row-aligned; what the item tower knows about every known item."""

    item_ids: list[str]
    category: list[str]
    brand: list[str]
    price_bucket: list[int]
    attributes: list[list[str]]

    @classmethod
    def from_items(cls, items, attributes) -> "Catalog":
        """From a contract items table and its attribute lists (features.item_attributes)."""
        from feature_repo.data.features import price_bucket

        return cls(items["item_id"].astype(str).tolist(), items["category"].astype(str).tolist(),
                   items["brand"].astype(str).tolist(), price_bucket(items["price"]).tolist(),
                   [list(a) for a in attributes])


def _padded(lists: list[list[str]], width: int) -> np.ndarray:
    out = np.full((len(lists), width), PAD, dtype=object)
    for i, values in enumerate(lists):
        values = list(values)[:width]
        out[i, : len(values)] = values
    return out


class ItemTower(tf.keras.Model):
    """Item id (+OOV) and content → normalised embedding; content alone for unseen items.

    Args:
      catalog: the known items; their content is looked up by id inside the model.
      dim: embedding size.
      max_attributes: attribute ids kept per item.
    """

    def __init__(self, catalog: Catalog, dim: int = 64, max_attributes: int = 8):
        super().__init__()
        # Only as many attribute slots as the catalog uses: they are gathered at every position.
        max_attributes = max(1, min(max_attributes, max((len(a) for a in catalog.attributes), default=1)))
        self.max_attributes = max_attributes
        self.item_lookup = tf.keras.layers.StringLookup(vocabulary=catalog.item_ids, mask_token=PAD)
        self.category_lookup = tf.keras.layers.StringLookup(vocabulary=sorted(set(catalog.category)), mask_token=PAD)
        self.brand_lookup = tf.keras.layers.StringLookup(vocabulary=sorted(set(catalog.brand)), mask_token=PAD)
        attrs = sorted({a for row in catalog.attributes for a in row})
        self.attribute_lookup = tf.keras.layers.StringLookup(vocabulary=attrs or ["none"], mask_token=PAD)
        self.item_embedding = tf.keras.layers.Embedding(self.item_lookup.vocabulary_size(), dim)
        self.category_embedding = tf.keras.layers.Embedding(self.category_lookup.vocabulary_size(), dim)
        self.brand_embedding = tf.keras.layers.Embedding(self.brand_lookup.vocabulary_size(), dim)
        self.price_embedding = tf.keras.layers.Embedding(8, dim)
        self.attribute_embedding = tf.keras.layers.Embedding(self.attribute_lookup.vocabulary_size(), dim)
        # Content of known items by lookup index (row 0: PAD, row 1: OOV → empty content).
        n = len(catalog.item_ids)
        self.content_category = tf.constant(np.r_[[PAD, PAD], catalog.category].astype(str))
        self.content_brand = tf.constant(np.r_[[PAD, PAD], catalog.brand].astype(str))
        self.content_price = tf.constant(np.r_[[0, 0], catalog.price_bucket].astype(np.int64))
        self.content_attributes = tf.constant(
            np.r_[np.full((2, max_attributes), PAD, dtype=object), _padded(catalog.attributes, max_attributes)].astype(str))
        assert self.content_category.shape[0] == n + 2

        # The same content as lookup indices, so training never touches strings (much faster).
        self.index_category = self.category_lookup(self.content_category)
        self.index_brand = self.brand_lookup(self.content_brand)
        self.index_attributes = self.attribute_lookup(self.content_attributes)

    def index(self, item_id: tf.Tensor) -> tf.Tensor:
        """Lookup indices: 0 for PAD, 1 for unknown ids, known items from 2 in catalog order."""
        return self.item_lookup(item_id)

    def _sum(self, item_idx, category_idx, brand_idx, price_bucket, attribute_idx) -> tf.Tensor:
        mask = tf.expand_dims(tf.cast(tf.not_equal(attribute_idx, 0), tf.float32), -1)
        attr = tf.reduce_sum(self.attribute_embedding(attribute_idx) * mask, axis=-2) / tf.maximum(
            tf.reduce_sum(mask, -2), 1.0)
        return (self.item_embedding(item_idx) + self.category_embedding(category_idx)
                + self.brand_embedding(brand_idx) + self.price_embedding(tf.clip_by_value(price_bucket, 0, 7)) + attr)

    def raw_by_index(self, idx: tf.Tensor) -> tf.Tensor:
        """Unnormalised embeddings of items by lookup index (any leading shape)."""
        return self._sum(idx, tf.gather(self.index_category, idx), tf.gather(self.index_brand, idx),
                         tf.gather(self.content_price, idx), tf.gather(self.index_attributes, idx))

    def raw(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        """Unnormalised embedding from explicit content (for items the catalog does not know)."""
        return self._sum(self.item_lookup(inputs["item_id"]), self.category_lookup(inputs["category"]),
                         self.brand_lookup(inputs["brand"]), inputs["price_bucket"],
                         self.attribute_lookup(inputs["attributes"]))

    def call(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.math.l2_normalize(self.raw(inputs), axis=-1)

    def by_index(self, idx: tf.Tensor) -> tf.Tensor:
        return tf.math.l2_normalize(self.raw_by_index(idx), axis=-1)

    def by_id(self, item_id: tf.Tensor) -> tf.Tensor:
        """Normalised embeddings of known items by id (content looked up in the catalog)."""
        return self.by_index(self.index(item_id))


class UserTower(tf.keras.Model):
    """User id (+OOV), profile/activity features and recent items → normalised embedding.

    The recent items (right-aligned, PAD-padded) go through causal self-attention; the id and
    the dense activity features (retrieval/user_features.py) are added to the output, so a new
    user (OOV id, zero activity) is embedded from the history alone.

    Args:
      items: the shared item tower (history items are embedded by it).
      max_len: positions of history read (older items are dropped).
      blocks / heads / dropout: transformer size; two small blocks suit CPU training.
      user_ids: the known users (None: no id embedding).
      n_activity: width of the activity vector.
    """

    def __init__(self, items: ItemTower, max_len: int = 50, dim: int = 64, blocks: int = 2, heads: int = 2,
                 dropout: float = 0.2, user_ids: list[str] | None = None, n_activity: int = 0):
        super().__init__()
        self.items, self.max_len, self.n_activity = items, max_len, n_activity
        self.user_lookup = tf.keras.layers.StringLookup(vocabulary=list(user_ids or ["none"]), mask_token=PAD)
        self.user_embedding = tf.keras.layers.Embedding(self.user_lookup.vocabulary_size(), dim,
                                                        embeddings_initializer="zeros")
        self.activity = tf.keras.layers.Dense(dim) if n_activity else None
        self.positions = tf.keras.layers.Embedding(max_len, dim)
        self.input_dropout = tf.keras.layers.Dropout(dropout)
        self.attention = [tf.keras.layers.MultiHeadAttention(heads, dim // heads, dropout=dropout) for _ in range(blocks)]
        self.norm1 = [tf.keras.layers.LayerNormalization() for _ in range(blocks)]
        self.norm2 = [tf.keras.layers.LayerNormalization() for _ in range(blocks)]
        self.ffn = [tf.keras.Sequential([tf.keras.layers.Dense(dim, activation="relu"), tf.keras.layers.Dropout(dropout),
                                         tf.keras.layers.Dense(dim)]) for _ in range(blocks)]
        self.final_norm = tf.keras.layers.LayerNormalization()
        # Long-term taste: the (causal) mean of all items so far, next to attention's recency.
        self.pooled = tf.keras.layers.Dense(dim)

    def sequence(self, history: tf.Tensor, training: bool = False, user: tf.Tensor | None = None,
                 activity: tf.Tensor | None = None) -> tf.Tensor:
        """Normalised outputs at every position [batch, max_len, dim]; position t sees items ≤ t.

        ``history``: item lookup indices (int, 0 = PAD), right-aligned; any width. ``user``: user
        lookup indices [batch] (1 = unknown); ``activity``: [batch, n_activity] floats.
        """
        history = history[:, -self.max_len:]
        missing = self.max_len - tf.shape(history)[1]
        history = tf.pad(history, [[0, 0], [missing, 0]])
        valid = tf.not_equal(history, 0)
        items = self.items.raw_by_index(history)
        weight = tf.expand_dims(tf.cast(valid, tf.float32), -1)
        mean_so_far = tf.cumsum(items * weight, axis=1) / tf.maximum(tf.cumsum(weight, axis=1), 1.0)
        x = items + tf.expand_dims(self.positions(tf.range(self.max_len)), 0)
        x = self.input_dropout(x, training=training) * weight
        causal = tf.linalg.band_part(tf.ones((self.max_len, self.max_len), tf.bool), -1, 0)
        mask = tf.logical_and(tf.expand_dims(causal, 0), tf.expand_dims(valid, 1))  # attend to earlier, real items only
        for attn, n1, n2, ffn in zip(self.attention, self.norm1, self.norm2, self.ffn):
            h = n1(x)
            x = x + attn(h, h, attention_mask=mask, training=training)
            x = x + ffn(n2(x), training=training)
        out = self.final_norm(x) + self.pooled(mean_so_far)
        if user is not None:
            out += tf.expand_dims(self.user_embedding(user), 1)
        if activity is not None and self.activity is not None:
            out += tf.expand_dims(self.activity(activity), 1)
        return tf.math.l2_normalize(out, axis=-1)

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """``history`` (and optional ``user_id``): ids as strings or lookup indices; ``activity``."""
        history, user = inputs["history"], inputs.get("user_id")
        if history.dtype == tf.string:
            history = self.items.index(history)
        if user is not None and user.dtype == tf.string:
            user = self.user_lookup(user)
        return self.sequence(history, training, user, inputs.get("activity"))[:, -1]


class TwoTower(tfrs.Model):
    """Next-item training of both towers with a large in-batch softmax.

    Args:
      catalog: known items and their content.
      dim / max_len / blocks / heads / dropout: tower sizes.
      temperature: divides the cosine logits (small → sharper softmax).
    """

    def __init__(self, catalog: Catalog, dim: int = 64, max_len: int = 50, blocks: int = 2, heads: int = 2,
                 dropout: float = 0.2, temperature: float = 0.05, user_ids: list[str] | None = None,
                 n_activity: int = 0, user_id_dropout: float = 0.1):
        super().__init__()
        self.item_tower = ItemTower(catalog, dim)
        self.user_tower = UserTower(self.item_tower, max_len, dim, blocks, heads, dropout, user_ids, n_activity)
        self.user_id_dropout = user_id_dropout
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=True)

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        # All ids arrive as lookup indices (ItemTower.index, UserTower.user_lookup), 0 = PAD.
        user = features.get("user_id")
        if user is not None and training and self.user_id_dropout:
            # Some examples pretend the user is unknown, so the OOV slot learns what a new user is.
            unknown = tf.random.uniform(tf.shape(user)) < self.user_id_dropout
            user = tf.where(unknown, tf.ones_like(user), user)
        if "history" in features:  # (history as of before the target, target item) pairs
            queries = self.user_tower.sequence(features["history"], training, user, features.get("activity"))[:, -1]
            return self.task(queries, self.item_tower.by_index(features["item_id"]), candidate_ids=features["item_id"],
                             candidate_sampling_probability=features["item_probability"], compute_metrics=False)
        # inputs/targets: [batch, max_len], targets[t] is the item after inputs[..t].
        outputs = self.user_tower.sequence(features["inputs"], training, user, features.get("activity"))
        valid = tf.not_equal(features["targets"], 0)
        queries = tf.boolean_mask(outputs, valid)
        targets = tf.boolean_mask(features["targets"], valid)
        candidates = self.item_tower.by_index(targets)
        # logQ correction: other positions' targets are negatives drawn by popularity.
        return self.task(queries, candidates, candidate_ids=targets,
                         candidate_sampling_probability=tf.boolean_mask(features["target_probability"], valid),
                         compute_metrics=False)
