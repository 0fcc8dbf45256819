"""The two-tower model as a ``Recommender`` of the evaluation harness, served through FAISS.

``fit`` trains on the view's sequences (every position predicts the next item; early stopping
on each sampled user's last item), embeds the catalog and builds the FAISS index the way
`shoprec index` does; ``score_batch`` embeds the users and takes the index's top items, so the
reported numbers are what serving would retrieve (not a brute-force upper bound, unless the
factory is "Flat", which is exact).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoprec.evaluation import TrainingView

# What a catalog row defaults to when the dataset has no content for an item.
_DEFAULT_CONTENT = {"category": "unknown", "brand": "unknown", "price": 0.0}


def load_items(path: Path) -> pd.DataFrame:
    """The catalog (with content) of an Amazon directory or a workspace, for the item tower."""
    from feature_repo.data.importers import import_amazon

    path = Path(path)
    if path.is_dir() and any(path.glob("*_item2attributes.json")):
        return import_amazon(path).items
    items = path / "data" / "clean" / "items.parquet"
    return pd.read_parquet(items) if items.exists() else pd.DataFrame(columns=["item_id", *_DEFAULT_CONTENT])


class TwoTowerRecommender:
    """Train the sequential two-tower on a view, index it in FAISS, retrieve the top ``search_k``.

    Args:
      items: catalog content (category, brand, price, attributes) by item_id; missing → defaults.
      settings: retrieval.train.TrainSettings (None: the defaults).
      factory: FAISS factory string of the index (Flat = exact).
      search_k: items retrieved per user before the harness removes the history (must cover
        the largest K reported plus the history).
      valid_users: users sampled for early stopping.
    """

    def __init__(self, items: pd.DataFrame, settings: Any = None, factory: str = "Flat", search_k: int = 600,
                 valid_users: int = 3000, seed: int = 0, verbose: int = 1):
        self.items, self.settings, self.factory = items, settings, factory
        self.search_k, self.valid_users, self.seed, self.verbose = search_k, valid_users, seed, verbose
        self.facts: dict[str, Any] = {}

    def content(self, item_ids: list[str]) -> pd.DataFrame:
        """Catalog rows in ``item_ids`` order; items without content get the defaults."""
        items = self.items.drop_duplicates("item_id")
        items = items.set_index(items["item_id"].astype(str).rename("key"))
        table = items.reindex(item_ids).drop(columns="item_id", errors="ignore").reset_index(names="item_id")
        for column, default in _DEFAULT_CONTENT.items():
            table[column] = table[column].fillna(default) if column in table else default
        return table

    def _catalog(self, item_ids: list[str]):
        from feature_repo.data.features import item_attributes
        from retrieval.model import Catalog

        table = self.content(item_ids)
        return Catalog.from_items(table, item_attributes(table).reset_index(drop=True))

    def fit(self, split: TrainingView) -> None:
        from retrieval.index import build_and_probe
        from retrieval.train import TrainSettings, embed_items, train_two_tower

        settings = self.settings or TrainSettings(seed=self.seed)
        catalog = self._catalog(split.item_ids)
        rng = np.random.default_rng(self.seed)
        eligible = [s for s in split.sequences if len(s) >= 2]
        pick = rng.choice(len(eligible), size=min(self.valid_users, len(eligible)), replace=False)
        valid = ([eligible[i][:-1] for i in pick], [eligible[i][-1] for i in pick])
        self.model, self.facts = train_two_tower([s[:-1] for s in split.sequences], catalog, settings, valid,
                                                 verbose=self.verbose)
        self.index, self.facts["index"] = build_and_probe(embed_items(self.model, split.item_ids), split.item_ids,
                                                          self.factory, seed=self.seed)
        self.n_items = len(split.item_ids)

    def score_batch(self, users: list[str], histories: list[list[str]]) -> np.ndarray:
        from retrieval.train import embed_users

        k = min(self.n_items, self.search_k + max((len(h) for h in histories), default=0))
        positions, scores = self.index.search(embed_users(self.model, histories), k)
        out = np.full((len(users), self.n_items), -np.inf, dtype=np.float32)
        rows = np.repeat(np.arange(len(users)), positions.shape[1])
        ok = positions.ravel() >= 0
        out[rows[ok], positions.ravel()[ok]] = scores.ravel()[ok]
        return out


class RankedPipeline:
    """The deployable pipeline on a leave-one-out view: FAISS retrieval → merged candidates → ranker.

    The idea: what serving does, measured by the same harness. ``fit`` trains the two-tower as
    ``TwoTowerRecommender`` does (on every sequence but its last item), then teaches each ranker
    to pick that held-back last item among the candidates retrieved from the history before it,
    so the retrieval scores the ranker learns from are out of sample, as at serving time.
    Candidates are the two-tower's top ``two_tower`` items, co-occurrence's top ``cooccurrence``
    and the ``popular`` most interacted items, history removed. Scoring a user re-ranks the
    candidates retrieved from the full history; every other item scores -inf (never shown).

    ``recommender(kind)`` gives one ``Recommender`` per ranker kind (None = retrieval-only order
    over the same candidates) that share one fit per view, so the harness trains the two-tower once.
    """

    def __init__(self, items: pd.DataFrame, settings: Any = None, factory: str = "Flat",
                 kinds: tuple[str, ...] = ("dcn", "lstm"), two_tower: int = 200, cooccurrence: int = 50,
                 popular: int = 30, negatives: int = 30, epochs: int = 5, seed: int = 0, verbose: int = 1):
        self.retrieval = TwoTowerRecommender(items, settings, factory, seed=seed, verbose=verbose)
        self.kinds, self.quota = kinds, {"two_tower": two_tower, "cooccurrence": cooccurrence, "popular": popular}
        self.negatives, self.epochs, self.seed, self.verbose = negatives, epochs, seed, verbose
        self.facts: dict[str, Any] = {}
        self._view: TrainingView | None = None

    def recommender(self, kind: str | None) -> "_RankedRecommender":
        return _RankedRecommender(self, kind)

    def fit(self, view: TrainingView) -> None:
        from ranking.model import ItemVocabulary, RankerSpec
        from ranking.train import evaluate as evaluate_ranker
        from ranking.train import train_ranker
        from retrieval.cooccurrence import CooccurrenceModel
        from retrieval.train import embed_items

        if self._view is view:
            return
        self.retrieval.fit(view)
        self.item_emb = embed_items(self.retrieval.model, view.item_ids)
        self.vocab = ItemVocabulary(view.item_ids)
        eligible = [u for u, s in enumerate(view.sequences) if len(s) >= 2]
        histories = [view.sequences[u][:-1] for u in eligible]
        targets = [view.sequences[u][-1] for u in eligible]
        # Features for training see only the histories (the targets are the labels).
        cooc = CooccurrenceModel.fit(histories, item_ids=view.item_ids)
        data = self._rows(histories, self._item_table(view.item_ids, histories), cooc, targets)
        groups = np.random.default_rng(self.seed).permutation(np.unique(data.group))
        cut = int(0.9 * len(groups))
        train, valid = data.take(np.sort(groups[:cut])), data.take(np.sort(groups[cut:]))
        self.rankers = {}
        self.facts = {"retrieval": self.retrieval.facts, "ranking_requests": int(len(groups)),
                      "requests_with_target_in_candidates": f"{len(groups)}/{len(histories)}"}
        for kind in self.kinds:
            spec = RankerSpec(kind=kind, tasks=("purchase",), task_weights={"purchase": 1.0})
            model, facts = train_ranker(spec, self.vocab, train, valid, epochs=self.epochs, seed=self.seed,
                                        verbose=self.verbose)
            facts["validation"] = evaluate_ranker(model, valid)
            self.rankers[kind], self.facts[kind] = model, facts
        # Scoring sees the full histories: the features' evidence includes every item the view has.
        self.cooc = CooccurrenceModel.fit(view.sequences, item_ids=view.item_ids)
        self.table = self._item_table(view.item_ids, view.sequences)
        self._view = view

    def _item_table(self, item_ids: list[str], sequences: list[list[str]]):
        """Item features of the view: content from the catalog, interaction counts from ``sequences``."""
        from feature_repo.data.item_table import ItemTable

        content = self.retrieval.content(item_ids)
        position = {item: i for i, item in enumerate(item_ids)}
        counts = np.bincount([position[i] for s in sequences for i in s], minlength=len(item_ids)).astype(float)
        return ItemTable(item_ids=np.asarray(item_ids, dtype=object),
                         category=content["category"].astype(str).to_numpy(dtype=object),
                         brand=content["brand"].astype(str).to_numpy(dtype=object),
                         price=content["price"].astype(float).to_numpy(),
                         n_view=counts, n_purchase=counts, conversion_rate=np.ones(len(item_ids)))

    def _rows(self, histories: list[list[str]], table, cooc, targets: list[str] | None = None):
        """A RankingSet over each history's candidates (labelled, negatives sampled, when ``targets``)."""
        from ranking.features import rank_features
        from ranking.train import RankingSet
        from retrieval.train import embed_users

        rng = np.random.default_rng(self.seed)
        user_emb = embed_users(self.retrieval.model, histories)
        longest = max((len(h) for h in histories), default=0)
        found, _ = self.retrieval.index.search(user_emb, min(len(table), self.quota["two_tower"] + longest))
        popular = list(np.argsort(-table.n_view, kind="stable")[: self.quota["popular"]])
        dense, item, group, labels, scores, hists, types = [], [], [], [], [], [], []
        for u, history in enumerate(histories):
            seen = set(history)
            tt = [p for p in found[u] if p >= 0 and table.item_ids[p] not in seen][: self.quota["two_tower"]]
            co = [table.position[i] for i, _ in cooc.recommend(history, self.quota["cooccurrence"], exclude=seen)
                  if i not in seen] if history else []
            pos = np.array(list(dict.fromkeys(tt + co + [p for p in popular if table.item_ids[p] not in seen])),
                           dtype=np.int64)
            y = np.zeros(len(pos), dtype=np.float32)
            if targets is not None:
                y = (table.item_ids[pos] == targets[u]).astype(np.float32)
                if not y.any():
                    continue  # the ranker can only re-order what retrieval found
                neg = np.flatnonzero(y == 0)
                pos = pos[np.concatenate([np.flatnonzero(y), rng.choice(neg, min(self.negatives, len(neg)), replace=False)])]
                y = (table.item_ids[pos] == targets[u]).astype(np.float32)
            score = (self.item_emb[pos] @ user_emb[u]).astype(np.float32)
            recent = history[-50:]
            prices = table.price[table.positions(recent)] if recent else np.zeros(0)
            user = {"recent_items": recent, "recent_event_types": ["purchase"] * len(recent),
                    "avg_purchase_price": float(prices[prices > 0].mean()) if (prices > 0).any() else 0.0,
                    "n_view": len(history), "n_purchase": len(history), "conversion_rate": 1.0}
            g = len(hists) if targets is not None else u
            dense.append(rank_features(user, pos, score, table, cooc))
            item.append(self.vocab.encode(table.item_ids[pos]))
            group.append(np.full(len(pos), g))
            labels.append(y[:, None])
            scores.append(score)
            h, t = self.vocab.encode_history(recent, user["recent_event_types"], 20)
            hists.append(h)
            types.append(t)
        return RankingSet(np.concatenate(dense), np.concatenate(item), np.concatenate(group),
                          np.concatenate(labels), np.stack(hists), np.stack(types), np.concatenate(scores))

    def score_batch(self, kind: str | None, users: list[str], histories: list[list[str]]) -> np.ndarray:
        from ranking.train import predict_logits

        data = self._rows([list(h) for h in histories], self.table, self.cooc)
        if kind is None:
            value = data.retrieval_score
        else:
            value = predict_logits(self.rankers[kind], data)[:, 0]
        out = np.full((len(users), len(self.table)), -np.inf, dtype=np.float32)
        out[data.group, data.item - 2] = value  # vocabulary ids are catalog positions + 2
        return out


class _RankedRecommender:
    """One ranker kind (or the retrieval-only order) of a shared ``RankedPipeline``."""

    def __init__(self, pipeline: RankedPipeline, kind: str | None):
        self.pipeline, self.kind = pipeline, kind

    def fit(self, split: TrainingView) -> None:
        self.pipeline.fit(split)

    def score_batch(self, users: list[str], histories: list[list[str]]) -> np.ndarray:
        return self.pipeline.score_batch(self.kind, users, histories)
