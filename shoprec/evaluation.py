"""Offline evaluation by the sequential-recommendation protocol (``shoprec evaluate``).

Leave-one-out on each user's ordered sequence (last item = test target, second-to-last =
validation target), full ranking over the whole catalog with the user's history excluded, HR@K
and NDCG@K averaged over all users: exactly the protocol of ../shared/data/README.md, so numbers
on Amazon Beauty are comparable with the published ones. A model plugs in as a ``Recommender``:
``fit`` on what it may see, then ``score_batch`` scores every catalog item for a batch of users.
Ranks are counted exactly (equal scores: catalog order first), so results are deterministic.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from feature_repo.errors import ContractError
from retrieval.cooccurrence import CooccurrenceConfig, CooccurrenceModel
from shoprec.table import render

TARGETS = ("valid", "test")
SHORT_HISTORY = 5  # slice: users with at most this many history items
RARE_TARGET = 5  # slice: targets with at most this many interactions in the data the model saw
COVERAGE_K = 10
BEAUTY_MD5 = "cb03635343187f36526ed4ba48102b53"  # Beauty.txt of the benchmark (PROVENANCE.md)
PUBLISHED_SOURCE = ("S3-Rec (Zhou et al., CIKM 2020) repo aHuiWang/CIKM2020-S3Rec all_rank.PNG; ICLRec (Chen et "
                    "al., WWW 2022) repo salesforce/ICLRec README; copied in ../shared/data/README.md")
# Full ranking, test target, Amazon Beauty (S3-Rec file): HR@5, NDCG@5, HR@10, NDCG@10, HR@20, NDCG@20.
PUBLISHED_BEAUTY: dict[str, tuple[float, ...]] = {
    "PopRec": (.0080, .0044, .0152, .0068, .0217, .0084),
    "GRU4Rec": (.0164, .0099, .0283, .0137, .0479, .0187),
    "BERT4Rec": (.0203, .0124, .0347, .0170, .0599, .0233),
    "SASRec": (.0387, .0249, .0605, .0318, .0902, .0394),
    "S3-Rec": (.0387, .0244, .0647, .0327, .0994, .0414),
    "ICLRec": (.0500, .0326, .0744, .0403, .1058, .0483),
}
PUBLISHED_COLUMNS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20")


def _id_key(item: str) -> tuple[int, str]:
    return len(item), item  # numeric ids in numeric order ("2" before "10")


@dataclass(frozen=True)
class TrainingView:
    """What a model may learn from when it is evaluated on one target: never that target.

    ``sequences[u]`` is user ``user_ids[u]``'s history in order: the training part for the
    validation target, training + validation item for the test target. Score columns follow
    ``item_ids``.
    """

    user_ids: list[str]
    item_ids: list[str]
    sequences: list[list[str]]
    target: str

    @cached_property
    def item_position(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.item_ids)}

    @cached_property
    def item_counts(self) -> np.ndarray:
        """Interactions per catalog item in ``sequences``."""
        pos = self.item_position
        return np.bincount(np.fromiter((pos[i] for s in self.sequences for i in s), dtype=np.int64),
                           minlength=len(self.item_ids))


@dataclass(frozen=True)
class LeaveOneOut:
    """Per-user sequences split leave-one-out: train = all but the last two, valid, test."""

    user_ids: list[str]
    item_ids: list[str]  # the catalog, in item id order
    train: list[list[str]]
    valid: list[str]
    test: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_sequences(cls, sequences: dict[str, list[str]], info: dict[str, Any] | None = None,
                       min_length: int = 3) -> LeaveOneOut:
        """Split ordered sequences; users with fewer than ``min_length`` items are left out (counted)."""
        kept = {u: list(s) for u, s in sequences.items() if len(s) >= max(min_length, 2)}
        if not kept:
            raise ContractError(f"no user has at least {min_length} interactions, so leave-one-out has no "
                                "target; pass more events (each user needs train, validation and test items).")
        users = sorted(kept, key=_id_key)
        items = sorted({i for s in kept.values() for i in s}, key=_id_key)
        info = {**(info or {}), "users": len(users), "items": len(items),
                "interactions": sum(map(len, kept.values())), "users_too_short": len(sequences) - len(kept)}
        return cls(users, items, [kept[u][:-2] for u in users], [kept[u][-2] for u in users],
                   [kept[u][-1] for u in users], info)

    @classmethod
    def from_events(cls, events: pd.DataFrame, info: dict[str, Any] | None = None,
                    collapse_runs: bool = True) -> LeaveOneOut:
        """Split an events table in ``position`` order if present (file order), else timestamp order.

        The sort is stable, so equal timestamps keep the table's row order. ``collapse_runs``
        merges consecutive events on the same item (view → click → purchase is one entry, as in
        ``recent_items``); it changes nothing on Amazon data, where no user repeats an item.
        """
        order = "position" if "position" in events.columns else "timestamp"
        missing = [c for c in ("user_id", "item_id", order) if c not in events.columns]
        if missing:
            raise ContractError(f"events lack column(s) {missing}; expected user_id, item_id and a position "
                                f"(file order) or timestamp column, got {list(events.columns)}.")
        ev = events.assign(user_id=events["user_id"].astype(str), item_id=events["item_id"].astype(str))
        ev = ev.sort_values(["user_id", order], kind="stable")
        if collapse_runs:
            ev = ev[(ev["user_id"] != ev["user_id"].shift()) | (ev["item_id"] != ev["item_id"].shift())]
        sequences = {u: list(s) for u, s in ev.groupby("user_id", sort=False)["item_id"]}
        return cls.from_sequences(sequences, {"order": order, **(info or {})})

    @classmethod
    def from_amazon(cls, directory: Path) -> LeaveOneOut:
        """The S3-Rec files in ``directory`` (via ``import_amazon``), in Beauty.txt order."""
        from feature_repo.data.importers import import_amazon

        ds = import_amazon(Path(directory))
        seq = ds.source["files"]["sequences"]
        return cls.from_events(ds.events, {"name": ds.source["name"], "format": ds.source["format"],
                                           "path": str(directory), "md5": seq["md5"]}, collapse_runs=False)

    def targets(self, target: str) -> list[str]:
        if target not in TARGETS:
            raise ContractError(f"target={target!r} is unknown; expected one of {TARGETS} "
                                "(tune on 'valid', report 'test').")
        return self.valid if target == "valid" else self.test

    def view(self, target: str) -> TrainingView:
        """The data a model may fit on (and the users' histories) for ``target``."""
        self.targets(target)
        seqs = self.train if target == "valid" else [t + [v] for t, v in zip(self.train, self.valid)]
        return TrainingView(self.user_ids, self.item_ids, seqs, target)


@runtime_checkable
class Recommender(Protocol):
    """What ``evaluate`` needs from a model.

    ``fit(split)`` gets a ``TrainingView`` (the target is never in it) and may also do nothing
    for a model trained elsewhere. ``score_batch(users, histories)`` returns ``[len(users),
    len(split.item_ids)]`` scores, higher = better, for every catalog item in ``split.item_ids``
    order; the harness removes history items itself.
    """

    def fit(self, split: TrainingView) -> None: ...

    def score_batch(self, users: list[str], histories: list[list[str]]) -> np.ndarray: ...


class PopularityRecommender:
    """Everybody gets the most interacted items of the data it fit on (PopRec)."""

    def fit(self, split: TrainingView) -> None:
        # Equal counts rank in catalog (item id) order: the harness breaks ties that way.
        self.counts = split.item_counts.astype(np.float64)

    def score_batch(self, users: list[str], histories: list[list[str]]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), len(self.counts)))


class CooccurrenceRecommender:
    """``CooccurrenceModel`` over the full catalog: items without co-occurrence evidence follow by popularity.

    Scored items get ``1 + score`` and the rest ``popularity / (max + 1)`` in [0, 1): popularity
    scaled into a band below every co-occurrence score, so the ranking stays full and exact.
    """

    def __init__(self, config: CooccurrenceConfig = CooccurrenceConfig()):
        self.config = config

    def fit(self, split: TrainingView) -> None:
        self.model = CooccurrenceModel.fit(split.sequences, item_ids=split.item_ids, config=self.config)
        pop = self.model.popularity
        self.fallback = pop / (pop.max() + 1.0)

    def score_batch(self, users: list[str], histories: list[list[str]]) -> np.ndarray:
        scores = self.model.score_histories(histories)
        return np.where(scores > 0, 1.0 + scores, self.fallback)


class InnerProductRecommender:
    """Adapter for models that embed users from (user_id, history) and items by id (two-tower).

    ``train(view)`` fits the model and returns ``(embed_users, item_embeddings)``:
    ``embed_users(users, histories) -> [n, d]`` and ``item_embeddings`` ``[len(view.item_ids), d]``
    in ``view.item_ids`` order; scores are their inner products, as the FAISS index serves them.
    """

    def __init__(self, train: Callable[[TrainingView], tuple[Callable[[list[str], list[list[str]]], np.ndarray],
                                                             np.ndarray]]):
        self._train = train

    def fit(self, split: TrainingView) -> None:
        self.embed_users, items = self._train(split)
        self.item_embeddings = np.asarray(items, dtype=np.float32)

    def score_batch(self, users: list[str], histories: list[list[str]]) -> np.ndarray:
        return np.asarray(self.embed_users(users, histories), dtype=np.float32) @ self.item_embeddings.T


def _ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target: better scores first, equal scores in column order."""
    t = scores[np.arange(len(targets)), targets][:, None]
    ahead = (scores > t).sum(axis=1)
    tied = scores == t
    rows = np.flatnonzero(tied.sum(axis=1) > 1)  # only these need the (slower) column-order count
    ahead[rows] += (tied[rows] & (np.arange(scores.shape[1]) < targets[rows, None])).sum(axis=1)
    return np.where(np.isfinite(t[:, 0]), ahead, scores.shape[1])  # an excluded target is never hit


def _top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean [n, items]: each row's top k in the same order as ``_ranks`` (finite scores only)."""
    n = scores.shape[1]
    k = min(k, n)
    part = np.argpartition(scores, n - k, axis=1)[:, n - k:]
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
    above, tied = scores > kth, scores == kth
    room = k - above.sum(axis=1)
    mask = above | tied
    rows = np.flatnonzero(tied.sum(axis=1) > room)  # ties straddle the cut: keep the first columns
    mask[rows] = above[rows] | (tied[rows] & (np.cumsum(tied[rows], axis=1) <= room[rows, None]))
    return mask & np.isfinite(scores)


def _summary(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    gain = np.where(ranks < max(ks), 1.0 / np.log2(ranks + 2.0), 0.0) if len(ranks) else np.zeros(0)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"HR@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"NDCG@{k}"] = float(np.where(hit, gain, 0.0).mean()) if len(ranks) else 0.0
    return out


def evaluate(split: LeaveOneOut, recommenders: dict[str, Recommender], target: str = "test",
             ks: Sequence[int] = (5, 10, 20), recall_ks: Sequence[int] = (100, 200, 500),
             batch_size: int = 1024) -> dict[str, Any]:
    """Fit each recommender on ``split.view(target)`` and rank the target among all items.

    History (train for "valid", train + valid item for "test") is excluded from the ranking.
    """
    targets = split.targets(target)
    view = split.view(target)
    n_users, n_items = len(view.user_ids), len(view.item_ids)
    pos = view.item_position
    target_idx = np.array([pos[t] for t in targets], dtype=np.int64)
    hist_len = np.array([len(h) for h in view.sequences])
    hist_idx = np.fromiter((pos[i] for h in view.sequences for i in h), dtype=np.int64)
    hist_ptr = np.concatenate([[0], np.cumsum(hist_len)])
    slices = {"short_history": (hist_len <= SHORT_HISTORY, f"users with <= {SHORT_HISTORY} history items"),
              "rare_target": (view.item_counts[target_idx] <= RARE_TARGET,
                              f"targets with <= {RARE_TARGET} interactions in the fit data")}
    results: dict[str, Any] = {
        "dataset": dict(split.info), "target": target, "users": n_users, "items": n_items,
        "protocol": "leave-one-out in sequence order; full ranking over all items; history items excluded; "
                    "ties broken by catalog (item id) order",
        "slices": {name: {"definition": d, "n": int(m.sum())} for name, (m, d) in slices.items()}, "models": {}}
    for name, rec in recommenders.items():
        start = time.perf_counter()
        rec.fit(view)
        fit_s = time.perf_counter() - start
        ranks = np.empty(n_users, dtype=np.int64)
        covered = np.zeros(n_items, dtype=bool)
        for lo in range(0, n_users, batch_size):
            hi = min(lo + batch_size, n_users)
            scores = np.array(rec.score_batch(view.user_ids[lo:hi], view.sequences[lo:hi]), dtype=np.float64)
            if scores.shape != (hi - lo, n_items) or np.isnan(scores).any():
                raise ContractError(f"recommender {name!r}: score_batch returned shape {scores.shape} "
                                    f"{'with NaN ' if scores.ndim == 2 and np.isnan(scores).any() else ''}"
                                    f"for {hi - lo} users; expected ({hi - lo}, {n_items}) finite scores "
                                    "in split.item_ids order.")
            rows = np.repeat(np.arange(hi - lo), hist_len[lo:hi])
            scores[rows, hist_idx[hist_ptr[lo]:hist_ptr[hi]]] = -np.inf
            ranks[lo:hi] = _ranks(scores, target_idx[lo:hi])
            covered |= _top_k_mask(scores, COVERAGE_K).any(axis=0)
        metrics = _summary(ranks, ks)
        metrics.update({f"Recall@{k}": float((ranks < k).mean()) for k in recall_ks})
        metrics[f"coverage@{COVERAGE_K}"] = float(covered.mean())
        results["models"][name] = {
            "metrics": metrics,
            "slices": {s: {"n": int(m.sum()), **{k: v for k, v in _summary(ranks[m], (10,)).items()}}
                       for s, (m, _) in slices.items()},
            "seconds": {"fit": round(fit_s, 3), "total": round(time.perf_counter() - start, 3)}}
    return results


def render_report(results: dict[str, Any], published: bool = True) -> str:
    """Our rows (and, for the Beauty test target, the published ones) and the slice table."""
    rows = []
    for name, r in results["models"].items():
        rows.append({"model": name, **{k: round(v, 4) for k, v in r["metrics"].items()},
                     "seconds": r["seconds"]["total"]})
    beauty = results["dataset"].get("md5") == BEAUTY_MD5 and results["target"] == "test"
    if published and beauty:
        rows += [{"model": f"{m} (published)", **dict(zip(PUBLISHED_COLUMNS, v))} for m, v in PUBLISHED_BEAUTY.items()]
    ds = results["dataset"]
    head = (f"{ds.get('name', ds.get('path', 'dataset'))}: {results['users']} users, {results['items']} items, "
            f"target={results['target']} ({results['protocol']})")
    slice_rows = [{"model": name, "slice": s, **v} for name, r in results["models"].items() for s, v in r["slices"].items()]
    parts = [head, render(rows), "", render(slice_rows)]
    if published and beauty:
        parts += ["", f"published: {PUBLISHED_SOURCE}"]
    return "\n".join(parts)


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write atomically, so a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(path)


def load_split(path: Path) -> LeaveOneOut:
    """An Amazon S3-Rec directory, a workspace (its clean events), or an events parquet/CSV file."""
    from feature_repo.data.contract import read_table

    path = Path(path)
    if path.is_dir() and any(path.glob("*_item2attributes.json")):
        return LeaveOneOut.from_amazon(path)
    events_path = path / "data" / "clean" / "events.parquet" if path.is_dir() else path
    if not events_path.is_file():
        raise ContractError(f"{path}: expected an Amazon S3-Rec directory (<Name>.txt + <Name>_item2attributes.json), "
                            "a workspace after `shoprec validate` (data/clean/events.parquet) or an events "
                            "parquet/CSV file.")
    name = path.name if path.is_dir() else events_path.stem  # a workspace is known by its directory
    return LeaveOneOut.from_events(read_table(events_path), {"name": name, "path": str(events_path)})


def evaluate_dataset(path: Path, target: str = "test", extra: dict[str, Recommender] | None = None,
                     cooccurrence: CooccurrenceConfig = CooccurrenceConfig(), **kwargs: Any) -> dict[str, Any]:
    """Popularity + co-occurrence (+ ``extra``) on the dataset at ``path`` (see ``load_split``)."""
    start = time.perf_counter()
    split = load_split(path)
    load_s = time.perf_counter() - start
    recs: dict[str, Recommender] = {"popularity": PopularityRecommender(),
                                    "cooccurrence": CooccurrenceRecommender(cooccurrence), **(extra or {})}
    results = evaluate(split, recs, target, **kwargs)
    results["seconds"] = {"load": round(load_s, 3), "total": round(time.perf_counter() - start, 3)}
    return results
