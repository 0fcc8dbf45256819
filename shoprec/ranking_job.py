"""Ranking training sets from the synthetic shop's funnel, and the ranker training job.

A *request* is a (user, visit day): at the first event of the day the user opens the shop and
serving would rank candidates for them. Everything the ranker sees is what serving would have
had at that moment:

- user features: Feast ``get_historical_features`` at the request time (the snapshots of the
  previous days; never the visit's own events);
- item features: Feast ``get_historical_features`` of ``item_stats_fv`` at the request's day
  start (the snapshot of the previous day; see ``PointInTimeItems``);
- candidates: the serving ``CandidateSources`` (two-tower from the live index, co-occurrence
  fit on events before the label window, trending, new, popular) over the items that existed;
- labels: how far down the funnel the user went with each candidate that day (click,
  add_to_cart, purchase). Candidates they did not convert on are the negatives.

Requests in the ``ranking_label_days`` before the retrieval cutoff train the ranker (the latest
10% of them stop early); requests in the holdout after the cutoff, which neither retrieval nor
the ranker saw, evaluate it against the retrieval-only order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.artifacts import ArtifactStore
from feature_repo.data.features import RECENT_N, collapse_sequence, pad_sequences
from feature_repo.data.item_table import ItemTable
from feature_repo.store import open_store
from feature_repo.workspace import Workspace
from shoprec.pipeline import load_clean

LABEL_DEPTH = {"click": 1, "add_to_cart": 2, "purchase": 3}  # a view alone is an impression, not a click


@dataclass
class Requests:
    """Visit days with at least one click: who, when, and the deepest funnel step per item."""

    users: list[str]
    times: pd.Series  # UTC timestamps of the visit's first event
    depth: list[dict[str, int]]  # item → 1 click, 2 add_to_cart, 3 purchase

    def __len__(self) -> int:
        return len(self.users)


def funnel_requests(events: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp, limit: int,
                    seed: int) -> Requests:
    """Up to ``limit`` (user, day) visits in [start, end) with a click or deeper, sampled, in time order."""
    ev = events[(events["timestamp"] >= start) & (events["timestamp"] < end)]
    ev = ev.assign(day=ev["timestamp"].dt.floor("D"))
    first = ev.groupby(["user_id", "day"])["timestamp"].min()
    deep = ev[ev["event_type"].isin(LABEL_DEPTH)]
    deep = deep.assign(depth=deep["event_type"].map(LABEL_DEPTH))
    depth = deep.groupby(["user_id", "day", "item_id"])["depth"].max()
    keys = depth.index.droplevel("item_id").unique()
    if len(keys) > limit:
        keys = keys[np.sort(np.random.default_rng(seed).choice(len(keys), size=limit, replace=False))]
    times = first.loc[keys].sort_values(kind="stable")
    by_visit = {k: dict(v.droplevel([0, 1]).items()) for k, v in depth.groupby(level=[0, 1])}
    return Requests([u for u, _ in times.index], times.reset_index(drop=True),
                    [by_visit[k] for k in times.index])


class PointInTimeItems:
    """The ItemTable as of each request's day start, from Feast ``get_historical_features``.

    One historical query for every (item, day) pair the requests need: the latest
    ``item_stats_fv`` row at or before the day start (snapshots are stamped at day ends), so an
    item's popularity never counts the day it is ranked on, and an item launched later does not
    exist yet. Every visit of a day shares the day's table.
    """

    def __init__(self, ws: Workspace, days: list[pd.Timestamp]):
        store = open_store(ws)
        view = store.get_feature_view("item_stats_fv")
        names = [f.name for f in view.features]
        item_ids = pd.read_parquet(ws.features_dir / "item_stats.parquet", columns=["item_id"])["item_id"].unique()
        days = sorted({pd.Timestamp(d).floor("D") for d in days})
        entity = pd.DataFrame({"item_id": np.tile(item_ids, len(days)),
                               "event_timestamp": np.repeat(pd.DatetimeIndex(days), len(item_ids))})
        rows = store.get_historical_features(entity_df=entity, features=[f"item_stats_fv:{n}" for n in names]).to_df()
        rows = rows[rows["category"].notna()]  # no row at or before the day: the item did not exist yet
        rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True)
        self._tables = {day: ItemTable.from_stats(part) for day, part in rows.groupby("event_timestamp")}

    def at(self, time: pd.Timestamp) -> ItemTable:
        day = time.floor("D")
        if day not in self._tables:
            raise KeyError(f"no item table for {day}: pass every request's day to PointInTimeItems")
        return self._tables[day]


@dataclass
class Retrieval:
    """The live retrieval stage, as serving loads it: user tower, index and its embeddings."""

    user_tower: Any
    index: Any
    item_embeddings: np.ndarray  # row-aligned with the index
    index_version: str

    @classmethod
    def load(cls, ws: Workspace) -> "Retrieval":
        import tensorflow as tf

        from retrieval.index import ItemIndex

        index_store = ArtifactStore(ws.models_dir / "index")
        index_dir = index_store.current()
        retrieval_dir = ws.models_dir / "retrieval" / index_store.manifest()["retrieval_version"]
        return cls(tf.saved_model.load(str(retrieval_dir / "user_tower")), ItemIndex.load(index_dir),
                   np.load(index_dir / "item_embeddings.npy"), index_dir.name)

    def embed(self, user_ids: list[str], rows: list[dict[str, Any]], batch: int = 4096) -> np.ndarray:
        import tensorflow as tf

        from retrieval.user_features import activity_matrix

        out = []
        for lo in range(0, len(rows), batch):
            part = rows[lo:lo + batch]
            hist = pad_sequences([r.get("recent_items") or [] for r in part], RECENT_N)
            out.append(self.user_tower.embed(tf.constant(np.asarray(user_ids[lo:lo + batch], dtype=str)),
                                             tf.constant(hist.astype(str)),
                                             tf.constant(activity_matrix(part))).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.item_embeddings.shape[1]), np.float32)


def user_rows(ws: Workspace, requests: Requests) -> list[dict[str, Any]]:
    """Point-in-time ``ranking_user_v1`` features of each request (Feast offline store)."""
    entity = pd.DataFrame({"user_id": requests.users, "event_timestamp": pd.to_datetime(requests.times, utc=True),
                           "row": np.arange(len(requests))})
    store = open_store(ws)
    df = store.get_historical_features(entity_df=entity, features=store.get_feature_service("ranking_user_v1")).to_df()
    return [_clean_user(r) for r in df.sort_values("row").to_dict("records")]


def build_set(ws: Workspace, retrieval: Retrieval, cooccurrence: Any, items: PointInTimeItems, requests: Requests,
              vocab: Any, history_len: int, negatives: int | None = None, seed: int = 0):
    """A RankingSet of the requests that have a labelled candidate (see the module doc).

    ``negatives``: keep this many sampled non-clicked candidates per request (training: the
    order of scores is what matters, and it keeps rows few); None keeps all (evaluation).
    """
    from ranking.features import rank_features
    from ranking.model import FUNNEL_TASKS
    from ranking.train import RankingSet
    from serving.candidates import CandidateSources, Quotas

    rows = user_rows(ws, requests)
    user_emb = retrieval.embed(requests.users, rows)
    rng = np.random.default_rng(seed)
    sources: dict[pd.Timestamp, CandidateSources] = {}
    dense, item, group, labels, scores, hists, types = [], [], [], [], [], [], []
    for r, (user, time, depth) in enumerate(zip(rows, requests.times, requests.depth)):
        table = items.at(time)
        day = time.floor("D")
        if day not in sources:  # the day's candidate sources, over the items that existed then
            to_item = np.array([table.position.get(i, -1) for i in retrieval.index.item_ids], dtype=np.int64)
            sources[day] = CandidateSources(table, retrieval.index, to_item, cooccurrence, Quotas())
        history = list(user.get("recent_items") or [])
        if not history:
            continue  # serving ranks cold-start users by popularity, not with the ranker
        event_types = list(user.get("recent_event_types") or [])
        bought = {i for i, t in zip(history, event_types) if t == "purchase"}  # serving filters these
        found = sources[day].gather(user_emb[r:r + 1], history)
        positions = np.array([p for p in found if table.item_ids[p] not in bought], dtype=np.int64)
        if not len(positions):
            continue
        ids = table.item_ids[positions]
        d = np.array([depth.get(i, 0) for i in ids])
        if d.max() == 0:
            continue  # nothing this visit touched was among the candidates
        if negatives is not None:
            neg = np.flatnonzero(d == 0)
            keep = np.concatenate([np.flatnonzero(d > 0), rng.choice(neg, size=min(negatives, len(neg)), replace=False)])
            positions, ids, d = positions[keep], ids[keep], d[keep]
        index_pos = np.array([retrieval.index.position.get(i, -1) for i in ids])
        score = np.where(index_pos >= 0, retrieval.item_embeddings[np.maximum(index_pos, 0)] @ user_emb[r], 0.0)
        g = len(hists)
        dense.append(rank_features(user, positions, score.astype(np.float32), table, cooccurrence))
        item.append(vocab.encode(ids))
        group.append(np.full(len(ids), g))
        labels.append(np.stack([d >= LABEL_DEPTH[t] for t in FUNNEL_TASKS], axis=1))
        scores.append(score)
        h, t = vocab.encode_history(history, event_types, history_len)
        hists.append(h)
        types.append(t)
    if not hists:
        raise RuntimeError("no request had a clicked item among its candidates; train retrieval and build the "
                           "index first, or use a larger shop (`shoprec generate --preset default`).")
    return RankingSet(np.concatenate(dense), np.concatenate(item), np.concatenate(group),
                      np.concatenate(labels).astype(np.float32), np.stack(hists), np.stack(types),
                      np.concatenate(scores).astype(np.float32))


def train_ranking(ws: Workspace, cfg: Any) -> tuple[str, dict[str, Any]]:
    """Build the sets, train every kind in ``cfg.ranking_kinds``, evaluate on the holdout, publish one.

    Each kind becomes its own version in the ranking store (with its holdout metrics); the one
    served is ``cfg.ranking_serve``, or with "best" the one with the higher validation NDCG@10
    (validation = the latest 10% of training requests; the holdout stays a test set).
    """
    from ranking.model import ItemVocabulary, RankerSpec
    from ranking.train import evaluate, export, train_ranker
    from shoprec.training import cutoff_time, stores

    s = stores(ws)
    events = load_clean(ws, "events")
    cutoff = cutoff_time(events, cfg.holdout_days)
    label_start = cutoff - pd.Timedelta(days=cfg.ranking_label_days)
    retrieval = Retrieval.load(ws)
    vocab = ItemVocabulary(list(retrieval.index.item_ids))
    cooccurrence = fit_cooccurrence(events, label_start, list(retrieval.index.item_ids))
    say = print if cfg.verbose else (lambda *a, **k: None)

    train_req = funnel_requests(events, label_start, cutoff, cfg.max_ranking_requests, cfg.seed)
    test_req = None
    if cfg.holdout_days > 0:
        end = events["timestamp"].max() + pd.Timedelta(seconds=1)
        test_req = funnel_requests(events, cutoff, end, cfg.ranking_eval_requests, cfg.seed)
    items = PointInTimeItems(ws, list(train_req.times) + (list(test_req.times) if test_req else []))
    data = build_set(ws, retrieval, cooccurrence, items, train_req, vocab, cfg.ranking_history_len,
                     negatives=cfg.ranking_negatives, seed=cfg.seed)
    groups = np.unique(data.group)
    split = groups[int(0.9 * len(groups))]  # groups follow request time
    train, valid = data.take(groups[groups < split]), data.take(groups[groups >= split])
    holdout = None
    if test_req is not None:
        holdout = build_set(ws, retrieval, cooccurrence, items, test_req, vocab, cfg.ranking_history_len,
                            negatives=None, seed=cfg.seed)
    say(f"ranking sets: train {len(train)} rows / valid {len(valid)} / holdout {len(holdout) if holdout else 0}")

    built: dict[str, tuple[str, dict[str, Any]]] = {}
    for kind in cfg.ranking_kinds:
        spec = RankerSpec(kind=kind, history_len=cfg.ranking_history_len)
        model, facts = train_ranker(spec, vocab, train, valid, epochs=cfg.ranking_epochs, seed=cfg.seed,
                                    verbose=cfg.verbose)
        facts["validation"] = evaluate(model, valid)
        metrics = evaluate(model, holdout) if holdout is not None else {}
        facts["label_window"] = [str(label_start), str(cutoff)]
        with s["ranking"].build(kind="ranking", model=kind, spec=_spec_dict(spec), features=_feature_names(),
                                cutoff=str(cutoff), index_version=retrieval.index_version, training=facts,
                                metrics=metrics, config=cfg.__dict__) as b:
            export(model, vocab, b.path)
        built[kind] = (b.version, b.manifest)
        say(f"ranker {kind}: {facts['epochs']} epochs, {facts['train_seconds']} s")
    serve = cfg.ranking_serve
    if serve == "best":
        serve = max(built, key=lambda k: built[k][1]["training"]["validation"]["ndcg_at_10_graded"])
    if serve not in built:
        raise ValueError(f"ranking_serve={cfg.ranking_serve!r} was not trained; choose one of {list(built)} or 'best'.")
    s["ranking"].publish(built[serve][0])
    return built[serve]


def _spec_dict(spec: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(spec)


def _feature_names() -> list[str]:
    from ranking.features import FEATURE_NAMES

    return list(FEATURE_NAMES)


def _clean_user(row: dict[str, Any]) -> dict[str, Any]:
    """Feast's historical rows carry NaN for missing numbers and arrays for lists; normalise."""
    out = {}
    for k, v in row.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, float) and np.isnan(v):
            v = None
        out[k] = v
    return out


def fit_cooccurrence(events: pd.DataFrame, before: pd.Timestamp, item_ids: list[str]):
    """Co-occurrence from events before ``before`` only: its evidence must not count the labels."""
    from retrieval.cooccurrence import CooccurrenceModel, sequences_from_events

    return CooccurrenceModel.fit(sequences_from_events(collapse_sequence(events[events["timestamp"] < before])),
                                 item_ids=item_ids)


def ranking_table(ws: Workspace) -> str:
    """The newest version of each ranker kind: holdout AUC/GAUC per head, NDCG@10 vs retrieval order."""
    from shoprec.table import render

    store = ArtifactStore(ws.models_dir / "ranking")
    live = store.current_version()
    newest: dict[str, tuple[str, dict[str, Any]]] = {}
    for version in store.versions():
        manifest = store.manifest(version)
        newest[manifest["model"]] = (version, manifest)  # versions sort by time: the last one wins
    rows = []
    for kind, (version, manifest) in newest.items():
        m, t = manifest.get("metrics") or {}, manifest["training"]
        rows.append({"ranker": kind + (" (served)" if version == live else ""),
                     **{k.replace("_add_to_cart", "_cart"): v for k, v in m.items() if k.startswith(("auc_", "gauc_"))},
                     "NDCG@10": m.get("ndcg_at_10"), "retrieval NDCG@10": m.get("ndcg_at_10_retrieval_order"),
                     "graded NDCG@10": m.get("ndcg_at_10_graded"),
                     "retrieval graded": m.get("ndcg_at_10_graded_retrieval_order"),
                     "train s": t["train_seconds"], "rows/s": t["rows_per_second"]})
    return "holdout visits (after the retrieval cutoff; purchase label unless graded):\n" + render(rows)
