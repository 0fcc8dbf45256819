"""The user tower's dense profile/activity input, computed the same way in training and serving.

numpy only (serving imports it without TensorFlow). The source is a user's row of
``user_activity_fv`` as Feast returns it (online: one value per field; offline: one row of the
point-in-time join); missing values (a new user, a failed store) become zeros, which is also
what the model sees for users without history during training.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Counts and prices enter as log1p: heavy-tailed, and a user with 3 or 300 views differs less
# than 3 vs 0.
ACTIVITY_FEATURES = ("n_view", "n_click", "n_add_to_cart", "n_purchase", "n_view_30d", "n_purchase_30d",
                     "conversion_rate", "avg_purchase_price")
_LINEAR = {"conversion_rate"}


def _value(row: Mapping[str, Any], name: str) -> float:
    v = row.get(name)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return 0.0
    return v if math.isfinite(v) else 0.0


def activity_vector(row: Mapping[str, Any] | None) -> np.ndarray:
    """[len(ACTIVITY_FEATURES)] float32 for one user (zeros when nothing is known)."""
    row = row or {}
    # math, not numpy, on the scalars: a numpy call per value cost a request ~40 us (cold caches).
    return np.array([_value(row, n) if n in _LINEAR else math.log1p(max(_value(row, n), 0.0))
                     for n in ACTIVITY_FEATURES], dtype=np.float32)


def activity_matrix(rows: Sequence[Mapping[str, Any] | None]) -> np.ndarray:
    """[len(rows), len(ACTIVITY_FEATURES)] float32."""
    if not rows:
        return np.zeros((0, len(ACTIVITY_FEATURES)), dtype=np.float32)
    return np.stack([activity_vector(r) for r in rows])
