"""In-process Recommend paths, timed step by step: the design's pipeline vs the naive one.

The naive path is what a user might build from the same parts without two rules of DESIGN.md:
item features come from a Feast online read of every candidate (``item_stats_fv``, one
``get_online_features`` call with the ~300 candidates plus the user's recent items as entity
rows) instead of memory, and the ranker is a Keras ``Ranker`` (rebuilt from the ranking
manifest's ``spec``, trained weights copied from the exported scorer's variables) called with
``predict()`` instead of the exported tf.function. ``predict()`` batches over rows, so the
user's history is repeated per candidate, as in training.

Everything else is shared by both paths and is the serving code's own parts: one Feast read of
the user (``ranking_user_v1``), the exported user tower, the FAISS index and the candidate
sources with the same quotas, ranking/features.py. The design path here is a replica of
Recommender.recommend without its page rules; the load bench times the real
``Recommender.recommend`` next to it, so a gap between the two shows what the replica leaves out.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

# Item fields the feature matrix needs (ranking/features.py reads these columns of ItemTable).
ITEM_FIELDS = ("category", "brand", "price", "created_epoch", "n_view", "n_purchase", "n_view_7d",
               "n_purchase_7d", "conversion_rate")


class Paths:
    """Both paths over one loaded Recommender's models (``rec.models``) and Feast store."""

    def __init__(self, rec: Any, quotas: Any):
        from feature_repo.artifacts import ArtifactStore
        from ranking.model import ItemVocabulary, Ranker, RankerSpec
        from serving.candidates import CandidateSources

        self.rec, m = rec, rec.models
        self.store = rec.store
        self.user_service = self.store.get_feature_service("ranking_user_v1")
        self.sources = CandidateSources(m.items, m.index, m.index_to_item, m.cooccurrence, quotas)
        ranking = ArtifactStore(rec.ws.models_dir / "ranking")
        manifest = ranking.manifest()
        spec = RankerSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest["spec"].items()})
        # The scorer was exported with the vocabulary of the index it was trained against.
        self.vocab = ItemVocabulary(list(m.index.item_ids))
        self.keras = Ranker(spec, len(manifest["features"]), len(self.vocab))
        self.history_len = spec.history_len
        L = spec.history_len
        self.keras({"dense": np.zeros((1, len(manifest["features"])), np.float32), "item": np.zeros(1, np.int64),
                    "history": np.zeros((1, L), np.int64), "history_type": np.zeros((1, L), np.int64)})
        # The exported scorer tracks the same Ranker: its variables come in the same order.
        saved = list(getattr(getattr(m.scorer, "model", None), "variables", []))
        if [tuple(v.shape) for v in saved] == [tuple(v.shape) for v in self.keras.variables]:
            for mine, theirs in zip(self.keras.variables, saved):
                mine.assign(theirs)
            self.keras.norm.finalize_state()  # Normalization caches mean/variance tensors at build time
            self.weights = "trained (copied from the exported scorer)"
        else:
            self.weights = "fresh (timing only: the scorer's variables do not line up)"
        self.keras.predict({"dense": np.zeros((4, len(manifest["features"])), np.float32),
                            "item": np.zeros(4, np.int64), "history": np.zeros((4, L), np.int64),
                            "history_type": np.zeros((4, L), np.int64)}, verbose=0)  # build predict_function

    # -- shared steps ---------------------------------------------------------------------------

    def _candidates(self, user_id: str, steps: dict[str, float]):
        from feature_repo.data.features import RECENT_N, pad_sequences
        from retrieval.user_features import activity_vector

        m = self.rec.models
        t = time.perf_counter()
        row = self.store.get_online_features(features=self.user_service, entity_rows=[{"user_id": user_id}]).to_dict()
        user = {k: v[0] for k, v in row.items() if k != "user_id"}
        t = _lap(steps, "feast_user_read", t)
        history = list(user.get("recent_items") or [])
        types = list(user.get("recent_event_types") or [])
        types = (types + ["view"] * len(history))[: len(history)]
        if not history:
            return None
        user_emb = m.embed_users([user_id], pad_sequences([history], RECENT_N).astype(str), activity_vector(user)[None])
        t = _lap(steps, "user_tower", t)
        cand = self.sources.gather(user_emb, history)
        bought = {i for i, ty in zip(history, types) if ty == "purchase"}
        positions = np.array([p for p in cand if m.items.item_ids[p] not in bought], dtype=np.int64)
        index_pos = m.item_to_index[positions]
        retrieval = np.where(index_pos >= 0, m.item_embeddings[np.maximum(index_pos, 0)] @ user_emb[0],
                             0.0).astype(np.float32)
        _lap(steps, "candidates", t)
        return user, history, types, positions, retrieval

    def items_missing_online(self, sample: int = 200, seed: int = 0) -> int:
        """Of ``sample`` random catalog items, how many the online store has no features for
        (bench/big_catalog.py grows serving's files, not the store): the naive path would rank
        them with empty features, so it would not be computing the same page."""
        ids = self.rec.models.items.item_ids
        picked = np.random.default_rng(seed).choice(len(ids), size=min(sample, len(ids)), replace=False)
        rows = self.store.get_online_features(features=["item_stats_fv:category"],
                                              entity_rows=[{"item_id": str(ids[i])} for i in picked]).to_dict()
        return sum(c is None for c in rows["category"])

    def count_candidates(self, user_id: str) -> int:
        """Candidates the ranker gets for this user (after the bought filter); 0 for a cold user."""
        c = self._candidates(user_id, {})
        return 0 if c is None else len(c[3])

    # -- the two paths ------------------------------------------------------------------------

    def design(self, user_id: str, k: int, steps: dict[str, float] | None = None) -> np.ndarray:
        """Item features from memory, the exported tf.function scorer."""
        return self._rank(self._design, user_id, k, steps)

    def naive(self, user_id: str, k: int, steps: dict[str, float] | None = None) -> np.ndarray:
        """Item features from a Feast online read of the candidates, Keras ``predict()``."""
        return self._rank(self._naive, user_id, k, steps)

    def _rank(self, path: Callable[..., np.ndarray], user_id: str, k: int,
              steps: dict[str, float] | None) -> np.ndarray:
        """The shared steps, then ``path`` ranks the candidates (an empty top for a cold user)."""
        steps = {} if steps is None else steps
        c = self._candidates(user_id, steps)
        return np.array([]) if c is None else path(*c, k=k, steps=steps)

    def _design(self, user, history, types, positions, retrieval, k: int, steps: dict[str, float]) -> np.ndarray:
        import tensorflow as tf

        from ranking.features import rank_features

        m = self.rec.models
        t = time.perf_counter()
        x = rank_features(user, positions, retrieval, m.items, m.cooccurrence)
        t = _lap(steps, "features", t)
        final = m.scorer.score(tf.constant(x), tf.constant(m.items.item_ids[positions].astype(str)),
                               tf.constant(np.asarray(history, dtype=str)), tf.constant(np.asarray(types, dtype=str))).numpy()
        top = positions[np.argsort(-final, kind="stable")[:k]]
        _lap(steps, "ranker", t)
        return top

    def _naive(self, user, history, types, positions, retrieval, k: int, steps: dict[str, float]) -> np.ndarray:
        from feature_repo.data.item_table import ItemTable
        from ranking.features import rank_features

        m = self.rec.models
        t = time.perf_counter()
        cand_ids = [str(i) for i in m.items.item_ids[positions]]
        ids = list(dict.fromkeys(cand_ids + history))  # the recent items' categories/brands are features too
        rows = self.store.get_online_features(features=[f"item_stats_fv:{f}" for f in ITEM_FIELDS],
                                              entity_rows=[{"item_id": i} for i in ids]).to_dict()
        t = _lap(steps, "feast_item_read", t)

        def num(name: str) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in rows[name]], dtype="float64")

        table = ItemTable(np.array(ids, dtype=object), np.array(rows["category"], dtype=object),
                          np.array(rows["brand"], dtype=object), num("price"), num("n_view"), num("n_purchase"),
                          num("conversion_rate"), num("n_view_7d"), num("n_purchase_7d"), num("created_epoch"),
                          as_of_epoch=m.items.as_of_epoch)
        x = rank_features(user, np.arange(len(cand_ids)), retrieval, table, m.cooccurrence)
        t = _lap(steps, "features", t)
        h, ht = self.vocab.encode_history(history, types, self.history_len)
        n = len(cand_ids)
        logits = self.keras.predict({"dense": x, "item": self.vocab.encode(cand_ids),
                                     "history": np.repeat(h[None], n, axis=0),
                                     "history_type": np.repeat(ht[None], n, axis=0)}, batch_size=n, verbose=0)
        final = self.keras.combined(logits).numpy()
        top = positions[np.argsort(-final, kind="stable")[:k]]
        _lap(steps, "ranker", t)
        return top

    def agreement(self, users: list[str], k: int) -> dict[str, float]:
        """Top-k overlap of the two paths (1.0: the naive path computes the same page)."""
        overlaps = []
        for u in users:
            a, b = self.design(u, k), self.naive(u, k)
            if len(a):
                overlaps.append(len(set(a.tolist()) & set(b.tolist())) / len(a))
        return {"users": len(overlaps), "mean_topk_overlap": round(float(np.mean(overlaps)), 4) if overlaps else 0.0}


def _lap(steps: dict[str, float], name: str, t: float) -> float:
    now = time.perf_counter()
    steps[name] = steps.get(name, 0.0) + now - t
    return now


def step_profile(fn: Callable[..., Any], users: list[str], k: int, n: int) -> dict[str, dict[str, float]]:
    """Sequential calls; per step p50 and mean ms, plus the whole call."""
    per_step: dict[str, list[float]] = {}
    for i in range(n):
        steps: dict[str, float] = {}
        t = time.perf_counter()
        fn(users[i % len(users)], k, steps)
        steps["total"] = time.perf_counter() - t
        for name, s in steps.items():
            per_step.setdefault(name, []).append(s * 1000)
    return {name: {"p50_ms": round(float(np.median(v)), 3), "mean_ms": round(float(np.mean(v)), 3)}
            for name, v in per_step.items()}


def closed_loop(fn: Callable[[str], Any], users: list[str], concurrency: int, warmup_s: float,
                duration_s: float) -> dict[str, Any]:
    """``concurrency`` threads calling ``fn`` back to back; requests started in the window count.

    Threads are what an in-process server does with its request pool: with the GIL they
    overlap only where numpy, TensorFlow, sqlite or FAISS release it.
    """
    import os

    counter = iter(range(1 << 62))
    lock = threading.Lock()
    lat: list[float] = []
    errors: dict[str, int] = {}
    start = time.perf_counter() + warmup_s
    end = start + duration_s

    def worker() -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            user = users[next(counter) % len(users)]
            try:
                fn(user)
                code = "OK"
            except Exception as e:  # noqa: BLE001 - counted by type, like a status code
                code = type(e).__name__
            t1 = time.perf_counter()
            if t0 >= start:
                with lock:
                    if code == "OK":
                        lat.append(t1 - t0)
                    else:
                        errors[code] = errors.get(code, 0) + 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for th in threads:
        th.start()
    time.sleep(max(0.0, start - time.perf_counter()))
    cpu0 = os.times()
    for th in threads:
        th.join()
    cpu1 = os.times()
    wall = time.perf_counter() - start
    ms = np.array(lat) * 1000 if lat else np.array([np.nan])
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "n": len(lat),
            "qps": round(len(lat) / duration_s, 1), "errors": errors,
            "process_cpu_cores": round((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall, 2)}


def inprocess(ws_root, users: list[str], quota_settings: list[dict[str, int]], args) -> dict[str, Any]:
    """Candidates ranked per quota setting; the real pipeline vs the naive path, step by step and
    in closed loops at concurrency 1 and ``args.naive_threads`` (medians of ``args.repeats``)."""
    from feature_repo.workspace import Workspace
    from serving.candidates import Quotas
    from serving.recommender import Recommender

    rec = Recommender(Workspace.at(ws_root))
    paths = Paths(rec, rec.quotas)
    known = [u for u in users[:400] if paths.count_candidates(u)]
    out: dict[str, Any] = {"ranker_weights": paths.weights, "candidates": []}
    for quotas in [dict(q) for q in dict.fromkeys(tuple(sorted(q.items())) for q in quota_settings)]:
        counts = [Paths.count_candidates(p, u) for p in [Paths(rec, Quotas(**quotas)) if quotas else paths]
                  for u in known[:300]]
        out["candidates"].append({"quotas": ",".join(f"{k}={v}" for k, v in quotas.items()) or "default",
                                  "users": len(counts), "mean": round(float(np.mean(counts)), 1),
                                  "min": int(np.min(counts)), "max": int(np.max(counts))})
    sample = 200
    missing = paths.items_missing_online(sample)
    if missing:
        out["naive_skipped"] = (f"{missing} of {sample} sampled catalog items have no features in the online store "
                                "(a catalog grown by bench/big_catalog.py); compare the paths on the 100k workspace")
        return out
    out["agreement"] = paths.agreement(known[:30], args.k)
    design = step_profile(paths.design, known, args.k, args.naive_requests)
    naive = step_profile(paths.naive, known, args.k, args.naive_requests)
    out["steps"] = [{"step": s, "design_p50_ms": design.get(s, {}).get("p50_ms", 0.0),
                     "naive_p50_ms": naive.get(s, {}).get("p50_ms", 0.0)}
                    for s in dict.fromkeys([*design, *naive])]
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.repeats):
        for name, fn in (("Recommender.recommend (design)", lambda u: rec.recommend(u, args.k)),
                         ("naive: Feast item read + Keras predict()", lambda u: paths.naive(u, args.k))):
            for c in (1, args.naive_threads):
                runs.setdefault((name, c), []).append(closed_loop(fn, known, c, 2.0, args.naive_duration))
    rows = []
    for (name, c), rs in runs.items():
        med = {k: round(float(np.median([r[k] for r in rs])), 3)
               for k in ("p50_ms", "p90_ms", "p99_ms", "qps", "process_cpu_cores")}
        rows.append({"path": name, "C": c, **med, "n": sum(r["n"] for r in rs),
                     "errors": sum(sum(r["errors"].values()) for r in rs)})
    for row in rows:
        ref = next(r for r in rows if r["C"] == row["C"] and r["path"].startswith("Recommender"))
        row["p50_vs_design"] = round(row["p50_ms"] / ref["p50_ms"], 1)
        row["qps_vs_design"] = round(row["qps"] / ref["qps"], 3)
    out["paths"] = rows
    out["runs"] = {f"{name} C={c}": rs for (name, c), rs in runs.items()}
    return out
