"""Churn early warning at request time: a user's risk of not coming back, its drivers, a segment.

Numpy only (no TensorFlow, no Feast): serving scores the row of its one online feature read.
How the model is trained and what the labels, features and segments mean: shoprec/churn.py.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.artifacts import ArtifactStore
from feature_repo.data.features import COUNT_COLUMNS, WINDOWS
from feature_repo.errors import ArtifactError
from feature_repo.workspace import Workspace

DAY = 86400.0
ACTIVE_DAYS = 60  # a user is an example at a cut if active in this many days before it
STEP_DAYS = 7  # one cut point a week
MIN_HISTORY_DAYS = 14  # the first cut point is this far after the first event
TRAIN_CUTS = 4  # the latest cut points train: on the default shop 2-4 beat all 7 on test AUC, Brier and ECE
# Ridge penalty on the summed log loss, on every column but days since last visit: recency is the
# anchor and the other (collinear) columns must earn their weight. Measured (test AUC, default /
# tiny shop): 1 → .765 / .692, 300 → .767 / .753; the recency baseline is .764 / .757.
L2 = 300.0
UNPENALIZED = ("days_since_last_visit",)
# Standardized values are clipped to +-CLIP (training and serving): a 100% conversion rate from one
# view is z = 11 and would otherwise lead every explanation; neutral to slightly better on test AUC.
CLIP = 3.0
AT_RISK = 0.5  # default risk from which a recent visitor is segment "at_risk"
MODEL_FILE = "model.json"
_SUFFIXES = ("", *(f"_{w}d" for w in WINDOWS))
COUNT_FEATURES = [f"{c}{s}" for c in COUNT_COLUMNS for s in _SUFFIXES]
# Model columns in order: (name, transform). Days are derived from the *_epoch fields.
COLUMNS: list[tuple[str, str]] = [
    *((c, "log1p") for c in COUNT_FEATURES),
    ("conversion_rate", "identity"), ("conversion_rate_30d", "identity"),
    ("avg_purchase_price", "log1p"), ("max_purchase_price", "log1p"),
    ("days_since_last_visit", "log1p"), ("days_since_last_purchase", "log1p"),
]
_EVENT_NAMES = {"n_view": "views", "n_click": "clicks", "n_add_to_cart": "add-to-carts", "n_purchase": "purchases"}
_WINDOW_NAMES = {"": "all time", "_1d": "last day", "_7d": "last 7 days", "_30d": "last 30 days"}
LABELS = {
    **{f"{c}{s}": f"{_EVENT_NAMES[c]} ({_WINDOW_NAMES[s]})" for c in COUNT_COLUMNS for s in _SUFFIXES},
    "conversion_rate": "conversion rate (all time)", "conversion_rate_30d": "conversion rate (last 30 days)",
    "avg_purchase_price": "average purchase price", "max_purchase_price": "highest purchase price",
    "days_since_last_visit": "days since last visit", "days_since_last_purchase": "days since last purchase",
}


def _say(verbose: int):
    return (lambda *a: print(*a, flush=True)) if verbose else (lambda *a: None)


def _epoch(t: pd.Timestamp) -> float:
    return (pd.Timestamp(t) - pd.Timestamp("1970-01-01", tz="UTC")).total_seconds()


def _number(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return np.nan


def _floats(frame: Mapping[str, Any], name: str, n: int) -> np.ndarray:
    """Column ``name`` as float64 (None, missing or non-numeric values become NaN)."""
    values = frame.get(name)
    if values is None:
        return np.full(n, np.nan)
    if isinstance(values, (pd.Series, np.ndarray)):  # the batch path: vectorized
        return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return np.array([_number(v) for v in values], dtype=float)  # one online row: no pandas per field


def raw_features(frame: Mapping[str, Any], now_epoch: float | np.ndarray) -> dict[str, np.ndarray]:
    """Each model column's human-scale value (counts, rates, prices, days), NaN when unknown.

    ``frame`` maps ``user_activity_fv`` field names to equal-length sequences (a DataFrame, or a
    Feast row with one value per field wrapped in lists); days are measured at ``now_epoch``.
    """
    if isinstance(frame, pd.DataFrame):
        n = len(frame)
    else:
        n = len(next(iter(frame.values()))) if frame else 1
    now = np.broadcast_to(np.asarray(now_epoch, dtype=float), (n,))
    out = {name: _floats(frame, name, n) for name, _ in COLUMNS if not name.startswith("days_")}
    for name, field in (("days_since_last_visit", "last_visit_epoch"),
                        ("days_since_last_purchase", "last_purchase_epoch")):
        out[name] = np.maximum((now - _floats(frame, field, n)) / DAY, 0.0)  # clock skew: not negative
    return out


def _transform(raw: dict[str, np.ndarray]) -> np.ndarray:
    cols = []
    for name, how in COLUMNS:
        v = raw[name]
        cols.append(np.log1p(np.maximum(v, 0.0)) if how == "log1p" else v)
    return np.stack(cols, axis=1)


# -- serving: numpy only ---------------------------------------------------------------------------

class ChurnModel:
    """A churn risk with its reasons: logistic regression over standardized user features.

    ``insights`` takes one user's online ``ranking_user_v1`` row; ``explain`` scores many rows
    at once (the batch job). Loading reads one JSON file; nothing here imports TensorFlow or Feast.
    """

    def __init__(self, spec: dict[str, Any], threshold: float = AT_RISK, version: str = ""):
        self.spec = spec
        self.threshold = threshold
        self.version = version
        self.horizon_days = int(spec["horizon_days"])
        self.base_rate = float(spec["base_rate"])
        cols = spec["columns"]
        self.names = [c["name"] for c in cols]
        self.mean = np.array([c["mean"] for c in cols])
        self.std = np.array([c["std"] for c in cols])
        self.weight = np.array([c["weight"] for c in cols])
        self.fill = np.array([c["fill"] for c in cols])
        self.bias = float(spec["bias"])
        self.clip = float(spec["clip"])

    @classmethod
    def load(cls, ws: Workspace, version: str | None = None, threshold: float = AT_RISK) -> "ChurnModel":
        """The published churn model of the workspace (or ``version``); ArtifactError if none."""
        store = ArtifactStore(ws.models_dir / "churn")
        if version is None and not (store.root / "CURRENT").exists():
            raise ArtifactError(f"no published churn model in {store.root}; run `shoprec churn train` first.")
        version = version or store.current_version()
        path = store.root / version / MODEL_FILE
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ArtifactError(f"cannot read the churn model {path}: {e}; retrain with `shoprec churn train`.") from e
        return cls(spec, threshold, version)

    def explain(self, frame: Mapping[str, Any],
                now_epoch: float | np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """(risk [n], raw values per column, standardized [n, d], contributions [n, d])."""
        raw = raw_features(frame, now_epoch)
        x = _transform(raw)
        x = np.where(np.isfinite(x), x, self.fill)
        z = np.clip((x - self.mean) / self.std, -self.clip, self.clip)
        contrib = z * self.weight
        risk = 1.0 / (1.0 + np.exp(-(contrib.sum(axis=1) + self.bias)))
        return risk, raw, z, contrib

    def drivers(self, raw: dict[str, np.ndarray], contrib: np.ndarray, row: int,
                k: int = 3) -> list[tuple[str, float, float]]:
        """The row's ``k`` largest contributions by size: (feature, human-scale value, logit contribution)."""
        order = np.argsort(-np.abs(contrib[row]), kind="stable")[:k]
        return [(self.names[j], float(raw[self.names[j]][row]), round(float(contrib[row, j]), 4)) for j in order]

    def describe(self, feature: str, value: float, contribution: float) -> str:
        """A driver in words, e.g. ``days since last visit: 21 (high, +1.32)``."""
        j = self.names.index(feature)
        x = value if COLUMNS[j][1] == "identity" else np.log1p(max(value, 0.0))
        z = ((x if np.isfinite(x) else self.fill[j]) - self.mean[j]) / self.std[j]
        level = "high" if z > 0.5 else "low" if z < -0.5 else "typical"
        if not np.isfinite(value):
            shown = "never"
        elif feature.startswith("conversion_rate"):
            shown = f"{value:.1%}"
        elif feature.endswith("_price"):
            shown = f"{value:.2f}" if value > 0 else "none"
        else:
            shown = f"{value:.0f}"
        return f"{LABELS.get(feature, feature)}: {shown} ({level}, {contribution:+.2f})"

    def segments(self, risk: np.ndarray, raw: dict[str, np.ndarray]) -> np.ndarray:
        """The module doc's rules, vectorized."""
        days = raw["days_since_last_visit"]
        conds = [~np.isfinite(days), days > self.horizon_days, risk >= self.threshold,
                 np.nan_to_num(raw["n_purchase_30d"]) > 0]
        return np.select(conds, ["new", "lapsed", "at_risk", "active_buyer"], default="browser")

    def insights(self, user_features: Mapping[str, Any] | None, now_epoch: float) -> dict[str, Any]:
        """Risk, top-3 drivers and segment of one user from their online feature row.

        ``user_features``: the dict of a Feast online read of ``ranking_user_v1`` (feature name →
        value, None when unknown). A user nothing is known about gets segment ``new``, the
        training base rate as risk and no drivers.
        """
        row = {k: [v] for k, v in (user_features or {}).items() if not isinstance(v, (list, tuple, np.ndarray))}
        risk, raw, _, contrib = self.explain(row or {"last_visit_epoch": [None]}, now_epoch)
        segment = str(self.segments(risk, raw)[0])
        if segment == "new":
            return {"churn_risk": self.base_rate, "drivers": [], "segment": "new"}
        return {"churn_risk": float(risk[0]), "drivers": self.drivers(raw, contrib, 0), "segment": segment}
