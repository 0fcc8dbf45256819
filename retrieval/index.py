"""The FAISS item index: build from item embeddings, verify against exact search, save, load.

Inner product everywhere, matching the model's training score. The index type comes from a
FAISS factory string ("Flat", "HNSW32", "IVF256,Flat", "IVF256,PQ16"); HNSW's efSearch is kept
at or above k on every search because FAISS does not raise it by itself and would silently
return fewer good neighbours.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import faiss
import numpy as np

from feature_repo.errors import ArtifactError

INDEX_FILE = "index.faiss"
IDS_FILE = "item_ids.json"


class IndexNotLoaded(ArtifactError):
    """The index directory is missing, unreadable, or inconsistent with its id list."""


DEFAULT_NPROBE = 128  # IVF lists searched: FAISS's default of 1 gave recall@100 0.29 at 1M items
# nprobe values tried, smallest first, when the index build picks one for a recall target
NPROBE_STEPS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)


class ItemIndex:
    """Item ids + a FAISS inner-product index over their embeddings."""

    def __init__(self, index: faiss.Index, item_ids: list[str], factory: str = "Flat"):
        if index.ntotal != len(item_ids):
            raise IndexNotLoaded(f"index holds {index.ntotal} vectors but {len(item_ids)} item ids were given; rebuild it.")
        self.index = index
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.position = {item: i for i, item in enumerate(item_ids)}
        self.factory = factory

    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def scores_exact(self) -> bool:
        """Whether ``search``'s scores are the exact inner products: the index keeps the vectors
        uncompressed (Flat, IVF…,Flat, HNSW…,Flat). PQ and SQ codes give approximations, and a
        transform before the index (PCA, OPQ, L2norm) scores other vectors than the embeddings."""
        outer = faiss.downcast_index(self.index)
        if isinstance(outer, faiss.IndexPreTransform) or self.index.metric_type != faiss.METRIC_INNER_PRODUCT:
            return False
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            return isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat)
        storage = getattr(self.index, "storage", None)  # HNSW's vectors
        return isinstance(faiss.downcast_index(storage) if storage is not None else self.index, faiss.IndexFlat)

    def __len__(self) -> int:
        return self.index.ntotal

    @classmethod
    def build(cls, embeddings: np.ndarray, item_ids: list[str], factory: str = "Flat",
              nprobe: int = DEFAULT_NPROBE) -> "ItemIndex":
        """``nprobe`` applies to IVF indexes (capped at their list count) and is saved with them."""
        emb = np.ascontiguousarray(embeddings, dtype="float32")
        index = faiss.index_factory(emb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(emb)
        index.add(emb)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = max(1, min(nprobe, ivf.nlist))
        return cls(index, list(item_ids), factory)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item positions and scores per query row; positions are -1 where fewer exist."""
        k = min(k, len(self))
        hnsw = faiss.try_extract_index_ivf(self.index) is None and hasattr(self.index, "hnsw")
        if hnsw and self.index.hnsw.efSearch < k:
            self.index.hnsw.efSearch = k
        scores, pos = self.index.search(np.ascontiguousarray(queries, dtype="float32"), k)
        return pos, scores

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        (directory / IDS_FILE).write_text(json.dumps(self.item_ids.tolist()))

    @classmethod
    def load(cls, directory: Path, factory: str = "Flat", shared: bool = False) -> "ItemIndex":
        """``shared``: map the file's vectors read-only instead of copying them (FAISS's
        IO_FLAG_MMAP_IFC), so that server processes on one machine hold one copy in memory and
        in the CPU caches. Such an index cannot be added to; a published version never is."""
        try:
            index = faiss.read_index(str(directory / INDEX_FILE), faiss.IO_FLAG_MMAP_IFC if shared else 0)
            ids = json.loads((directory / IDS_FILE).read_text())
        except (RuntimeError, OSError, ValueError) as e:
            raise IndexNotLoaded(f"cannot load the FAISS index in {directory}: {e}; rebuild it with `shoprec index`.") from e
        return cls(index, ids, factory)


def exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int, max_bytes: int = 1 << 28) -> np.ndarray:
    """Brute-force inner-product top-k positions (the oracle for recall).

    Queries go in chunks whose score matrix stays under ``max_bytes`` (256 MB): all at once,
    100k users against 100k items would need 40 GB.
    """
    k = min(k, embeddings.shape[0])
    rows = max(1, max_bytes // (4 * max(1, embeddings.shape[0])))
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), rows):
        scores = queries[start:start + rows] @ embeddings.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out[start:start + rows] = np.take_along_axis(part, order, axis=1)
    return out


def recall_vs_exact(index: ItemIndex, embeddings: np.ndarray, queries: np.ndarray, k: int,
                    exact: np.ndarray | None = None) -> float:
    """Share of the exact top-k that the index returns, counting ties as hits.

    An item the index returns counts when its exact score reaches the k-th best exact score:
    among items with equal scores (e.g. items embedded from identical content) any choice is
    exact, and counting only the oracle's pick would report a perfect index as a poor one.
    ``exact``: ``exact_top_k(embeddings, queries, k)`` when the caller already has it.
    """
    approx, _ = index.search(queries, k)
    exact = exact_top_k(embeddings, queries, k) if exact is None else exact
    hits = []
    for q, a, e in zip(queries, approx, exact):
        a = np.unique(a[a >= 0])
        kth = float(embeddings[e[-1]] @ q)
        hits.append(min(1.0, float(np.sum(embeddings[a] @ q >= kth - 1e-6 * max(1.0, abs(kth)))) / len(e)))
    return float(np.mean(hits))


def calibrate_nprobe(index: ItemIndex, embeddings: np.ndarray, queries: np.ndarray, k: int,
                     target: float) -> dict:
    """Set an IVF index's nprobe to the smallest of ``NPROBE_STEPS`` whose recall@k against exact
    search on ``queries`` reaches ``target`` (all lists if none does); returns what was measured.

    Why: the lists scanned are most of a search's cost (100k items, IVF1024, k = 520: 0.22 ms
    a query at nprobe 128, 0.12 ms at 64), and how many are enough depends on the catalog and
    on the queries. Item embeddings as queries flatter an IVF index (each sits near its own
    list's centroid), so the index job passes real users' embeddings here.
    """
    ivf = faiss.try_extract_index_ivf(index.index)
    if ivf is None:
        raise ValueError(f"nprobe applies to IVF indexes; {index.factory} has none")
    exact = exact_top_k(embeddings, queries, k)
    tried = {}
    for nprobe in [n for n in NPROBE_STEPS if n < ivf.nlist] + [ivf.nlist]:
        ivf.nprobe = nprobe
        tried[nprobe] = round(recall_vs_exact(index, embeddings, queries, k, exact), 4)
        if tried[nprobe] >= target:
            break
    return {"nprobe": int(ivf.nprobe), "k": k, "target_recall": target, "queries": len(queries),
            "recall": tried[int(ivf.nprobe)], "tried": {str(n): r for n, r in tried.items()}}


def build_and_probe(embeddings: np.ndarray, item_ids: list[str], factory: str = "Flat",
                    probe_queries: int = 200, k: int = 100, seed: int = 0,
                    nprobe: int | None = DEFAULT_NPROBE, user_queries: np.ndarray | None = None,
                    target_recall: float = 0.95, recall_k: int = 500) -> tuple[ItemIndex, dict]:
    """Build the index and measure recall@k against exact search on the item embeddings themselves.

    ``user_queries``: user embeddings (the queries serving sends); with them the report also
    holds ``user_recall_at_{recall_k}_vs_exact``, and ``nprobe=None`` picks an IVF index's
    nprobe as the smallest that reaches ``target_recall`` on them (``calibrate_nprobe``);
    without them, ``nprobe=None`` means ``DEFAULT_NPROBE``.
    """
    start = time.perf_counter()
    index = ItemIndex.build(embeddings, item_ids, factory, nprobe=nprobe or DEFAULT_NPROBE)
    build_s = time.perf_counter() - start
    ivf = faiss.try_extract_index_ivf(index.index)
    facts: dict = {}
    if user_queries is not None and len(user_queries):
        user_queries, user_k = np.asarray(user_queries, np.float32), min(recall_k, len(index))
        if nprobe is None and ivf is not None:
            facts["nprobe_calibration"] = calibrate_nprobe(index, embeddings, user_queries, user_k, target_recall)
            user_recall = facts["nprobe_calibration"]["recall"]
        else:
            user_recall = round(recall_vs_exact(index, embeddings, user_queries, user_k), 4)
        facts[f"user_recall_at_{recall_k}_vs_exact"] = user_recall
    rng = np.random.default_rng(seed)
    queries = embeddings[rng.choice(len(embeddings), size=min(probe_queries, len(embeddings)), replace=False)]
    recall = recall_vs_exact(index, embeddings, queries, k)
    return index, {"factory": factory, "items": len(index), "dim": index.dim,
                   **({"nprobe": int(ivf.nprobe)} if ivf is not None else {}),
                   "build_seconds": round(build_s, 3), f"recall_at_{k}_vs_exact": round(recall, 4), **facts}
