"""The MLP ranker: the idea is to re-score retrieved candidates with everything known about the
user, the item and their relation, predicting the probability that the user buys the item.

Inputs are the dense features of ranking/features.py; a Normalization layer adapted on the
training set is part of the model, so the exported scorer takes raw features.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf


class MLPRanker(tf.keras.Model):
    """Normalization → Dense stack → one logit (purchase).

    Args:
      hidden: sizes of the hidden layers (default (64, 32): small, fast to score on CPU).
      dropout: dropout after each hidden layer during training.
    """

    def __init__(self, n_features: int, hidden: tuple[int, ...] = (64, 32), dropout: float = 0.1):
        super().__init__()
        self.n_features = n_features
        self.norm = tf.keras.layers.Normalization(axis=-1)
        self.hidden_layers = [tf.keras.layers.Dense(h, activation="relu") for h in hidden]
        self.dropouts = [tf.keras.layers.Dropout(dropout) for _ in hidden]
        self.out = tf.keras.layers.Dense(1)

    def adapt(self, x: np.ndarray) -> None:
        self.norm.adapt(x)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        h = self.norm(x)
        for dense, drop in zip(self.hidden_layers, self.dropouts):
            h = drop(dense(h), training=training)
        return tf.squeeze(self.out(h), axis=-1)
