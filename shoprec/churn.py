"""Churn early warning: the probability that a user will not come back within N days.

The idea: a shop learns who is drifting away while there is still time to win them back, from
the same ``user_activity_fv`` features the recommender serves, with a model small enough that
every score comes with its reasons.

Labels. Cut points ``t`` are day ends (feature snapshots are stamped at day ends), one a week
going back from the last day end whose label window is complete (the data's end - N days).
At each cut, every user with an event in the ``ACTIVE_DAYS`` before ``t`` is an example, with
label 1 ("churns") if the user has no event in [t, t + N days). The snapshot stamped ``t``
covers exactly the events before ``t``, so history and label window meet without a gap.

Features. All of ``user_activity_fv`` through Feast ``get_historical_features`` at ``t`` (the
latest snapshot at or before ``t``, never a later one): counts per event type and window,
conversion rates, purchase prices, and days since the last visit / purchase computed from the
epochs relative to ``t`` (at serving time: relative to the request time). Counts, prices and
days enter as log1p; ``favourite_categories`` (a list of names) is not used. A never-buyer's
days since purchase is filled with the training mean, so it contributes nothing and
``n_purchase = 0`` says it instead.

Split. The last cut point is the test set; the model trains on the latest ``TRAIN_CUTS`` cut
points whose label window closes by then (t + N <= t_test): nothing it learned from happened
after the moment it is evaluated at, and it learns the shop's recent behaviour (churn rates
drift as a shop ages).

Model. L2-regularised logistic regression, fit by Newton's method in numpy (deterministic,
under a second on 2 cores), with days since last visit unpenalised (see ``L2``), over
standardized columns: one column per source feature, so a driver is one contribution
``weight x standardized value`` in logits (positive raises risk).
Drivers are the 3 largest by absolute contribution. Serving (``ChurnModel``) is numpy only.

Segments, the first rule that matches:
- ``new``: nothing is known (unknown user, features all None, or no known visit). Its risk is
  the training base rate (the share of examples that churned) and it has no drivers.
- ``lapsed``: no visit in more than N days: the event the model predicts has already happened.
- ``at_risk``: churn risk >= the model's threshold (``AT_RISK``, 0.5; ``ChurnModel(threshold=)``).
- ``active_buyer``: bought in the last 30 days.
- ``browser``: visits, but no purchase in the last 30 days.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.artifacts import ArtifactStore
from feature_repo.data.features import COUNT_COLUMNS, WINDOWS
from feature_repo.errors import ArtifactError, ConfigError, WorkspaceNotReady
from feature_repo.workspace import Workspace
from serving.churn import (  # noqa: F401 - re-exported: the model is trained here
    DAY,
    ACTIVE_DAYS,
    STEP_DAYS,
    MIN_HISTORY_DAYS,
    TRAIN_CUTS,
    L2,
    UNPENALIZED,
    CLIP,
    AT_RISK,
    MODEL_FILE,
    _SUFFIXES,
    COUNT_FEATURES,
    COLUMNS,
    _EVENT_NAMES,
    _WINDOW_NAMES,
    LABELS,
    _say,
    _epoch,
    _number,
    _floats,
    raw_features,
    _transform,
    ChurnModel,
)

# -- training --------------------------------------------------------------------------------------

def cut_points(events: pd.DataFrame, horizon_days: int, step_days: int = STEP_DAYS,
               min_history_days: int = MIN_HISTORY_DAYS) -> list[pd.Timestamp]:
    """Day ends a week apart, oldest first, the last one N days before the data's last day end."""
    end = events["timestamp"].max().floor("D") + pd.Timedelta(days=1)
    first = events["timestamp"].min().floor("D") + pd.Timedelta(days=min_history_days)
    cuts, t = [], end - pd.Timedelta(days=horizon_days)
    while t >= first:
        cuts.append(t)
        t -= pd.Timedelta(days=step_days)
    return cuts[::-1]


def churn_labels(events: pd.DataFrame, cuts: list[pd.Timestamp], horizon_days: int,
                 active_days: int = ACTIVE_DAYS) -> pd.DataFrame:
    """(user_id, cut, label) for users with an event in the ``active_days`` before each cut;
    label 1 when they have no event in [cut, cut + horizon_days)."""
    ts = events["timestamp"]
    parts = []
    for t in cuts:
        last = events.loc[ts < t].groupby("user_id")["timestamp"].max()
        active = np.sort(last.index[last >= t - pd.Timedelta(days=active_days)].to_numpy())
        back = events.loc[(ts >= t) & (ts < t + pd.Timedelta(days=horizon_days)), "user_id"].unique()
        parts.append(pd.DataFrame({"user_id": active, "cut": t, "label": (~np.isin(active, back)).astype(np.int8)}))
    return pd.concat(parts, ignore_index=True)


def point_in_time_features(ws: Workspace, users: pd.Series, times: pd.Series) -> pd.DataFrame:
    """Every ``user_activity_fv`` field per (user, time) row, from Feast's offline store, in row order."""
    from feature_repo.store import open_store

    store = open_store(ws)
    refs = [f"user_activity_fv:{f.name}" for f in store.get_feature_view("user_activity_fv").features]
    entity = pd.DataFrame({"user_id": users.to_numpy(), "event_timestamp": pd.to_datetime(times.to_numpy(), utc=True),
                           "row": np.arange(len(users))})
    df = store.get_historical_features(entity_df=entity, features=refs).to_df()
    return df.sort_values("row").drop(columns=["row"]).reset_index(drop=True)


def labelled_examples(ws: Workspace, cuts: list[pd.Timestamp], horizon_days: int,
                      events: pd.DataFrame | None = None) -> pd.DataFrame:
    """Labels (``churn_labels``) joined with the point-in-time features at each cut."""
    from shoprec.pipeline import load_clean

    events = load_clean(ws, "events")[["user_id", "timestamp"]] if events is None else events
    labels = churn_labels(events, cuts, horizon_days)
    feats = point_in_time_features(ws, labels["user_id"], labels["cut"])
    return pd.concat([labels, feats.drop(columns=["user_id", "event_timestamp"])], axis=1)


def _design(examples: pd.DataFrame) -> tuple[dict[str, np.ndarray], np.ndarray]:
    raw = raw_features(examples, examples["cut"].map(_epoch).to_numpy())
    return raw, _transform(raw)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, unpenalized: tuple[int, ...] = (),
                 max_iter: int = 50) -> tuple[np.ndarray, float, int]:
    """Weights and bias minimising the summed log loss + l2/2 |w|^2, by Newton's method.

    The bias and the ``unpenalized`` columns are not shrunk.
    """
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    w[-1] = np.log(max(y.mean(), 1e-6) / max(1 - y.mean(), 1e-6))
    penalty = np.r_[np.full(x.shape[1], l2), 0.0]
    penalty[list(unpenalized)] = 0.0
    for it in range(1, max_iter + 1):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) + penalty * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1]), it


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties averaged); 0.5 when one class is absent.

    The same as ranking.train.auc, which imports TensorFlow at module level (seconds this job
    does not need); tests check the two agree.
    """
    y = np.asarray(y).astype(bool)
    pos, neg = y.sum(), (~y).sum()
    if pos == 0 or neg == 0:
        return 0.5
    ranks = pd.Series(np.asarray(score, dtype=float)).rank(method="average").to_numpy()
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Equal-width bins of predicted risk: count, mean predicted, observed churn rate."""
    which = np.minimum((p * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        m = which == b
        rows.append({"bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}", "count": int(m.sum()),
                     "mean_predicted": round(float(p[m].mean()), 4) if m.any() else None,
                     "observed_rate": round(float(y[m].mean()), 4) if m.any() else None})
    return rows


def classification_metrics(y: np.ndarray, p: np.ndarray, baseline: np.ndarray) -> dict[str, Any]:
    """AUC, Brier, log loss, base rate, expected calibration error; and the baseline's AUC."""
    y = np.asarray(y, dtype=float)
    table = calibration_table(y, p)
    ece = sum(r["count"] * abs(r["mean_predicted"] - r["observed_rate"]) for r in table if r["count"]) / len(y)
    eps = 1e-12
    return {"rows": int(len(y)), "base_rate": round(float(y.mean()), 4), "auc": round(auc(y, p), 4),
            "brier": round(float(np.mean((p - y) ** 2)), 4),
            "brier_base_rate": round(float(y.mean() * (1 - y.mean())), 4),  # everyone at the test base rate
            "log_loss": round(float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))), 4),
            "ece": round(float(ece), 4), "mean_predicted": round(float(p.mean()), 4),
            "baseline_auc_days_since_last_visit": round(auc(y, baseline), 4)}


def truth_check(ws: Workspace, test: pd.DataFrame, horizon_days: int, risk: np.ndarray,
                baseline: np.ndarray) -> dict[str, Any]:
    """On the synthetic shop: how the risk ranks the users the simulation made leave for good.

    ``gone`` = churned (truth.npz) with a churn time before the end of the label window: such
    users can never come back. The observed label also counts quiet users who stay (only their
    next visit falls after the window), so AUC against ``gone`` asks whether the model tells
    the permanently lost from the merely quiet. Empty when the data is not the synthetic shop.
    """
    from feature_repo.data.synthetic import PRESETS
    from shoprec.pipeline import source_info

    info, path = source_info(ws), ws.raw_dir / "truth.npz"
    if info.get("generator") != "synthetic" or info.get("preset") not in PRESETS or not path.exists():
        return {}
    truth = np.load(path)
    raw_users = pd.read_parquet(ws.raw_dir / "users.parquet", columns=["user_id"])["user_id"]
    if len(raw_users) != len(truth["churned"]):
        return {}
    row = pd.Series(np.arange(len(raw_users)), index=raw_users.to_numpy())  # truth rows follow users.parquet
    idx = row.loc[test["user_id"].to_numpy()].to_numpy()
    start = pd.Timestamp(info["as_of"]) - pd.Timedelta(days=PRESETS[info["preset"]].days)
    churn_day = truth["churn_day"][idx].astype(float)  # days from the shop's start; NaN: never churned
    churned = truth["churned"][idx].astype(bool)
    t = pd.Timestamp(test["cut"].iloc[0])
    cut_day = (t - start) / pd.Timedelta(days=1)
    gone = churned & (churn_day < cut_day + horizon_days)
    gone_at_cut = churned & (churn_day < cut_day)
    y = test["label"].to_numpy().astype(bool)
    return {"cut": str(t), "users": int(len(idx)), "gone_by_window_end": int(gone.sum()),
            "gone_before_cut": int(gone_at_cut.sum()),
            "auc_gone_by_window_end": round(auc(gone, risk), 4),
            "baseline_auc_gone_by_window_end": round(auc(gone, baseline), 4),
            "auc_gone_before_cut": round(auc(gone_at_cut, risk), 4),
            # How well knowing who left for good predicts the observed label: the quiet-but-staying
            # users bound what any model of these features can reach.
            "auc_label_from_gone": round(auc(y, gone.astype(float)), 4),
            "share_of_label_1_gone": round(float(gone[y].mean()), 4) if y.any() else None,
            "share_of_gone_labelled_1": round(float(y[gone].mean()), 4) if gone.any() else None}


def _spec(names: list[str], mean: np.ndarray, std: np.ndarray, weight: np.ndarray, fill: np.ndarray,
          bias: float, horizon_days: int, base_rate: float) -> dict[str, Any]:
    return {"horizon_days": horizon_days, "base_rate": base_rate, "bias": bias, "clip": CLIP,
            "columns": [{"name": n, "transform": dict(COLUMNS)[n], "mean": float(m), "std": float(s),
                         "weight": float(w), "fill": float(f)}
                        for n, m, s, w, f in zip(names, mean, std, weight, fill)]}


def train_churn(ws: Workspace, horizon_days: int = 14, seed: int = 0, verbose: int = 1,
                train_cuts: int = TRAIN_CUTS) -> tuple[str, dict[str, Any]]:
    """Build the point-in-time sets, fit, evaluate on the last cut point, save and publish a version.

    ``seed`` is recorded only: the Newton fit has no randomness, so reruns are identical.
    """
    from shoprec.pipeline import load_clean

    if horizon_days < 1:
        raise ConfigError(f"horizon_days={horizon_days}: expected a whole number of days >= 1, e.g. 14.")
    say, started = _say(verbose), time.perf_counter()
    events = load_clean(ws, "events")[["user_id", "timestamp"]]
    cuts = cut_points(events, horizon_days)
    test_cut = cuts[-1] if cuts else events["timestamp"].min()
    usable = [t for t in cuts if t + pd.Timedelta(days=horizon_days) <= test_cut]
    train_cuts = usable[-train_cuts:] if train_cuts > 0 else usable
    if not train_cuts:
        span = (events["timestamp"].max() - events["timestamp"].min()).days
        raise WorkspaceNotReady(f"{span} days of events are too few for a {horizon_days}-day churn horizon: "
                                f"need >= {MIN_HISTORY_DAYS + 2 * horizon_days} (history, a training window and a "
                                f"test window); use a shorter --horizon-days or more data.")
    say(f"churn: {len(train_cuts)} training cut points {train_cuts[0].date()}..{train_cuts[-1].date()}, "
        f"test cut point {test_cut.date()}, horizon {horizon_days} days")
    t0 = time.perf_counter()
    examples = labelled_examples(ws, [*train_cuts, test_cut], horizon_days, events)
    fetch_s = time.perf_counter() - t0
    say(f"churn: {len(examples):,} labelled (user, cut) rows with point-in-time features in {fetch_s:.1f}s")

    raw, x = _design(examples)
    is_test = (examples["cut"] == test_cut).to_numpy()
    y = examples["label"].to_numpy(dtype=float)
    fill = np.array([np.nanmean(x[~is_test, j]) if n.startswith("days_") else 0.0
                     for j, (n, _) in enumerate(COLUMNS)])
    x = np.where(np.isfinite(x), x, fill)
    mean, std = x[~is_test].mean(axis=0), x[~is_test].std(axis=0)
    std = np.where(std > 1e-9, std, 1.0)
    z = np.clip((x - mean) / std, -CLIP, CLIP)
    names = [n for n, _ in COLUMNS]
    t0 = time.perf_counter()
    weight, bias, iterations = fit_logistic(z[~is_test], y[~is_test],
                                            unpenalized=tuple(names.index(n) for n in UNPENALIZED))
    fit_s = time.perf_counter() - t0
    base_rate = float(y[~is_test].mean())
    model = ChurnModel(_spec(names, mean, std, weight, fill, bias, horizon_days, base_rate))
    test = examples.loc[is_test].reset_index(drop=True)
    risk, test_raw, _, _ = model.explain(test, test["cut"].map(_epoch).to_numpy())
    baseline = test_raw["days_since_last_visit"]
    train_risk = model.explain(examples.loc[~is_test], examples.loc[~is_test, "cut"].map(_epoch).to_numpy())[0]
    metrics = classification_metrics(y[is_test], risk, baseline)
    truth = truth_check(ws, test, horizon_days, risk, baseline)
    say(f"churn: test AUC {metrics['auc']} (days since last visit alone "
        f"{metrics['baseline_auc_days_since_last_visit']}), Brier {metrics['brier']} "
        f"(base rate alone {metrics['brier_base_rate']}), base rate {metrics['base_rate']}")
    per_cut = examples.groupby("cut")["label"].agg(["size", "mean"])
    training = {"cut_points_train": [str(t) for t in train_cuts], "cut_point_test": str(test_cut),
                "rows_train": int((~is_test).sum()), "rows_test": int(is_test.sum()),
                "rows_per_cut": {str(t): int(r["size"]) for t, r in per_cut.iterrows()},
                "base_rate_per_cut": {str(t): round(float(r["mean"]), 4) for t, r in per_cut.iterrows()},
                "train_auc": round(auc(y[~is_test], train_risk), 4), "l2": L2, "newton_iterations": iterations,
                "feature_fetch_seconds": round(fetch_s, 2), "fit_seconds": round(fit_s, 3),
                "total_seconds": round(time.perf_counter() - started, 2), "seed": seed,
                "active_days": ACTIVE_DAYS, "step_days": STEP_DAYS}
    store = ArtifactStore(ws.models_dir / "churn")
    with store.build(kind="churn", model="logistic_regression", horizon_days=horizon_days,
                     features=[{"name": n, "label": LABELS[n], "transform": h, "weight": round(float(w), 4)}
                               for (n, h), w in zip(COLUMNS, weight)],
                     metrics=metrics, calibration=calibration_table(y[is_test], risk), truth=truth,
                     training=training) as b:
        (b.path / MODEL_FILE).write_text(json.dumps(model.spec, indent=2))
    store.publish(b.version)
    say(f"churn: published version {b.version} in {training['total_seconds']}s")
    return b.version, b.manifest


# -- batch -----------------------------------------------------------------------------------------

def at_risk_users(ws: Workspace, out_path: str | Path, threshold: float = 0.5,
                  now: pd.Timestamp | None = None) -> pd.DataFrame:
    """Score every user from their latest ``user_activity`` row (what the online store holds);
    write the users with risk >= ``threshold`` to a CSV, highest risk first, and return them.

    Segments follow the model's own rules (``AT_RISK``), as ``insights`` does: a user's segment
    does not depend on the list they were selected for (threshold 0 lists everyone).

    ``now`` defaults to the newest snapshot's time (the end of the features' last day): a later
    clock would age the days-since features past what the windowed counts describe.
    """
    from feature_repo.data.features import latest

    table = pd.read_parquet(ws.require(ws.features_dir / "user_activity.parquet", "features"))
    rows = latest(table, "user_id")
    now = pd.Timestamp(now if now is not None else table["event_timestamp"].max())
    now = now.tz_localize("UTC") if now.tzinfo is None else now
    model = ChurnModel.load(ws)
    risk, raw, _, contrib = model.explain(rows, _epoch(now))
    out = pd.DataFrame({"user_id": rows["user_id"].to_numpy(), "churn_risk": np.round(risk, 4),
                        "segment": model.segments(risk, raw)})
    top = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :3]
    for k in range(3):
        out[f"driver_{k + 1}"] = [model.describe(model.names[j], float(raw[model.names[j]][i]),
                                                 float(contrib[i, j])) for i, j in enumerate(top[:, k])]
    out = out[risk >= threshold].sort_values(["churn_risk", "user_id"], ascending=[False, True], kind="stable")
    out = out.reset_index(drop=True)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    out.to_csv(tmp, index=False)
    tmp.replace(out_path)
    return out
