"""ItemIndex against a brute-force numpy oracle; save → load → same top-k; broken dirs fail loudly."""
from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.index import (
    IDS_FILE,
    INDEX_FILE,
    IndexNotLoaded,
    ItemIndex,
    NPROBE_STEPS,
    build_and_probe,
    calibrate_nprobe,
    exact_top_k,
    recall_vs_exact,
)


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ids(n: int) -> list[str]:
    return [f"i{i:05d}" for i in range(n)]


@pytest.fixture(scope="module")
def emb() -> np.ndarray:
    return _unit(2000, 16, seed=0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return _unit(50, 16, seed=1)


def test_exact_top_k_oracle_is_sorted_best_first():
    e = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]], dtype="float32")
    q = np.array([[1.0, 0.1]], dtype="float32")
    assert exact_top_k(e, q, 3).tolist() == [[0, 2, 1]]
    assert exact_top_k(e, q, 10).shape == (1, 4)


def test_exact_top_k_in_chunks_is_the_same():
    rng = np.random.default_rng(0)
    emb, queries = rng.normal(size=(300, 8)).astype("float32"), rng.normal(size=(37, 8)).astype("float32")
    whole = exact_top_k(emb, queries, 20)
    np.testing.assert_array_equal(exact_top_k(emb, queries, 20, max_bytes=4 * 300 * 5), whole)  # 5 rows a chunk
    np.testing.assert_array_equal(exact_top_k(emb, queries, 20, max_bytes=1), whole)  # 1 row a chunk


def test_flat_matches_exact_search(emb, queries):
    k = 10
    index = ItemIndex.build(emb, _ids(len(emb)), "Flat")
    assert len(index) == 2000 and index.dim == 16
    pos, scores = index.search(queries, k)
    assert pos.shape == scores.shape == (len(queries), k)
    exact = exact_top_k(emb, queries, k)
    exact_scores = np.take_along_axis(queries @ emb.T, exact, axis=1)
    # allow ties: the scores agree, and the returned positions really have those scores
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(queries @ emb.T, pos, axis=1), scores, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "scores must be best first"
    assert recall_vs_exact(index, emb, queries, k) == 1.0
    assert index.item_ids[pos[0, 0]] == f"i{exact[0, 0]:05d}"


def test_flat_k_larger_than_index_returns_all():
    e = _unit(5, 4, seed=2)
    index = ItemIndex.build(e, _ids(5), "Flat")
    pos, _ = index.search(e[:1], 50)
    assert sorted(pos[0].tolist()) == list(range(5))


def test_hnsw_k_above_default_ef_search(emb, queries):
    k = 64  # > FAISS's default efSearch of 16
    index = ItemIndex.build(emb, _ids(len(emb)), "HNSW32")
    assert index.index.hnsw.efSearch == 16
    pos, scores = index.search(queries, k)
    assert pos.shape == (len(queries), k)
    assert (pos >= 0).all(), "HNSW returned fewer than k results"
    assert index.index.hnsw.efSearch >= k
    assert recall_vs_exact(index, emb, queries, k) >= 0.9


def test_save_load_same_top_k(tmp_path, emb, queries):
    for factory in ("Flat", "HNSW32"):
        index = ItemIndex.build(emb, _ids(len(emb)), factory)
        before_pos, before_scores = index.search(queries, 20)
        index.save(tmp_path / factory)
        assert (tmp_path / factory / INDEX_FILE).is_file()
        loaded = ItemIndex.load(tmp_path / factory, factory)
        assert loaded.item_ids.tolist() == _ids(len(emb))
        after_pos, after_scores = loaded.search(queries, 20)
        np.testing.assert_array_equal(after_pos, before_pos)
        np.testing.assert_allclose(after_scores, before_scores)
        assert loaded.position["i00042"] == 42


def test_corrupt_index_file_raises_index_not_loaded(tmp_path, emb):
    ItemIndex.build(emb[:100], _ids(100)).save(tmp_path)
    (tmp_path / INDEX_FILE).write_bytes(b"this is not a faiss index")
    with pytest.raises(IndexNotLoaded, match="shoprec index"):
        ItemIndex.load(tmp_path)


def test_missing_index_dir_raises_index_not_loaded(tmp_path):
    with pytest.raises(IndexNotLoaded):
        ItemIndex.load(tmp_path / "nope")


def test_mismatched_ids_raise_index_not_loaded(tmp_path, emb):
    with pytest.raises(IndexNotLoaded, match="100 vectors but 99"):
        ItemIndex.build(emb[:100], _ids(99))
    ItemIndex.build(emb[:100], _ids(100)).save(tmp_path)
    (tmp_path / IDS_FILE).write_text(json.dumps(_ids(101)))
    with pytest.raises(IndexNotLoaded, match="101 item ids"):
        ItemIndex.load(tmp_path)


def test_build_and_probe_flat_recall_is_exact(emb):
    index, report = build_and_probe(emb, _ids(len(emb)), "Flat", probe_queries=50, k=100)
    assert isinstance(index, ItemIndex) and len(index) == len(emb)
    assert report["recall_at_100_vs_exact"] == 1.0
    assert report["factory"] == "Flat" and report["items"] == 2000 and report["dim"] == 16


def test_ivf_searches_enough_lists_and_keeps_that_after_save_load(tmp_path):
    """FAISS's default nprobe is 1; the index must search enough lists to be usable."""
    import faiss

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(50, 16))
    emb = centres[rng.integers(0, 50, size=5000)] + 0.3 * rng.normal(size=(5000, 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype("float32")
    ids = [f"i{i}" for i in range(5000)]
    index, facts = build_and_probe(emb, ids, "IVF64,Flat", probe_queries=100, k=100)
    assert facts["nprobe"] == 64 and facts["recall_at_100_vs_exact"] > 0.99
    index.save(tmp_path)
    loaded = ItemIndex.load(tmp_path)
    assert faiss.extract_index_ivf(loaded.index).nprobe == 64


def test_nprobe_is_a_setting_of_the_build(tmp_path):
    import faiss

    rng = np.random.default_rng(4)
    emb = rng.normal(size=(2000, 8)).astype("float32")
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index, facts = build_and_probe(emb, [f"i{i}" for i in range(2000)], "IVF32,Flat", probe_queries=20, nprobe=7)
    assert facts["nprobe"] == 7
    index.save(tmp_path)
    assert faiss.extract_index_ivf(ItemIndex.load(tmp_path).index).nprobe == 7


def _clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, 16))
    x = centres[rng.integers(0, 40, size=n)] + 0.5 * rng.normal(size=(n, 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


def test_calibrated_nprobe_is_the_smallest_step_that_reaches_the_target():
    emb = _clustered(4000, 5)
    rng = np.random.default_rng(6)
    # User-like queries: means of a few items, as a user tower's output sits between what they touched.
    queries = np.stack([emb[rng.integers(0, 4000, 5)].mean(axis=0) for _ in range(60)]).astype("float32")
    index = ItemIndex.build(emb, _ids(4000), "IVF64,Flat")
    report = calibrate_nprobe(index, emb, queries, k=200, target=0.9)
    chosen = report["nprobe"]
    assert report["recall"] >= 0.9 and 1 < chosen < 64  # a real choice, neither extreme
    assert report["recall"] == pytest.approx(recall_vs_exact(index, emb, queries, 200), abs=1e-4)  # the index keeps it
    below = [n for n in NPROBE_STEPS if n < chosen][-1]
    assert report["tried"][str(below)] < 0.9  # the step before it fell short
    higher = calibrate_nprobe(index, emb, queries, k=200, target=0.99)
    assert higher["nprobe"] > chosen and higher["recall"] >= 0.99


def test_unreachable_target_scans_every_list():
    emb = _clustered(2000, 7)
    index = ItemIndex.build(emb, _ids(2000), "IVF16,Flat")
    report = calibrate_nprobe(index, emb, emb[:20], k=50, target=1.01)
    assert report["nprobe"] == 16 and report["recall"] == 1.0


def test_build_calibrates_on_user_queries_and_falls_back_without_them():
    emb = _clustered(3000, 8)
    rng = np.random.default_rng(9)
    users = np.stack([emb[rng.integers(0, 3000, 5)].mean(axis=0) for _ in range(40)]).astype("float32")
    _, facts = build_and_probe(emb, _ids(3000), "IVF32,Flat", probe_queries=20, nprobe=None, user_queries=users,
                               target_recall=0.9, recall_k=100)
    assert facts["nprobe"] == facts["nprobe_calibration"]["nprobe"] < 32
    assert facts["user_recall_at_100_vs_exact"] >= 0.9
    _, fixed = build_and_probe(emb, _ids(3000), "IVF32,Flat", probe_queries=20, nprobe=None)
    assert fixed["nprobe"] == 32 and "nprobe_calibration" not in fixed  # the default (128), capped at nlist
    with pytest.raises(ValueError, match="IVF"):
        calibrate_nprobe(ItemIndex.build(emb, _ids(3000), "Flat"), emb, users, 10, 0.9)


def test_recall_counts_tied_items_as_hits_and_worse_items_as_misses():
    """Items embedded from identical content tie: any of them is an exact answer."""
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype="float32")
    q = np.array([[1.0, 0.0]], dtype="float32")

    class Returns:  # an index that answers with fixed positions (the logic under test is recall's)
        def __init__(self, ids):
            self.ids = np.array([ids])

        def search(self, queries, k):
            return self.ids, np.zeros_like(self.ids, dtype="float32")

    assert exact_top_k(emb, q, 2).tolist() == [[0, 1]]
    assert recall_vs_exact(Returns([2, 1]), emb, q, 2) == 1.0  # 2 ties with 0: as good
    assert recall_vs_exact(Returns([2, 3]), emb, q, 2) == 0.5  # 3 scores lower: a miss
    assert recall_vs_exact(Returns([2, -1]), emb, q, 2) == 0.5  # FAISS pads with -1


@pytest.mark.parametrize("factory, exact", [("Flat", True), ("HNSW16", True), ("IVF8,Flat", True),
                                            ("IVF8,SQ8", False), ("IVF8,PQ4", False), ("HNSW16,SQ8", False),
                                            ("PCA8,IVF8,Flat", False), ("L2norm,Flat", False)])
def test_scores_are_called_exact_only_where_the_index_keeps_the_vectors(tmp_path, emb, queries, factory, exact):
    emb = emb * np.random.default_rng(2).uniform(0.5, 2.0, size=(len(emb), 1)).astype("float32")  # not unit: L2norm changes them
    index = ItemIndex.build(emb, _ids(len(emb)), factory, nprobe=8)
    index.save(tmp_path)
    loaded = ItemIndex.load(tmp_path, factory)  # read back from the file: the served case
    assert index.scores_exact is exact and loaded.scores_exact is exact
    pos, scores = loaded.search(queries, 20)
    inner = np.einsum("qkd,qd->qk", emb[pos], queries)
    assert np.allclose(scores, inner, atol=1e-5) is exact


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat"])
def test_a_shared_load_maps_the_file_and_answers_as_a_copy_does(tmp_path, emb, queries, factory):
    built = ItemIndex.build(emb, _ids(len(emb)), factory, nprobe=8)
    built.save(tmp_path)
    shared = ItemIndex.load(tmp_path, factory, shared=True)
    copied = ItemIndex.load(tmp_path, factory)
    for got, want in zip(shared.search(queries, 30), copied.search(queries, 30)):
        np.testing.assert_array_equal(got, want)
    data = (tmp_path / INDEX_FILE).read_bytes()
    (tmp_path / INDEX_FILE).write_bytes(data[: len(data) // 2])  # a broken file still fails loudly
    with pytest.raises(IndexNotLoaded, match="rebuild"):
        ItemIndex.load(tmp_path, factory, shared=True)
