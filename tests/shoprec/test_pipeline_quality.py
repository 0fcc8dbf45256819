"""Quality floors on the tiny synthetic shop, from the manifests the real training wrote."""
from __future__ import annotations

import pytest

from feature_repo.artifacts import ArtifactStore

pytestmark = pytest.mark.slow


def test_retrieval_beats_popularity_on_held_out_purchases(trained_workspace):
    metrics = ArtifactStore(trained_workspace.models_dir / "retrieval").manifest()["metrics"]
    assert metrics["holdout_users"] >= 100
    # Honest margin: measured 0.87 vs 0.78 recall@50 on this preset and seed.
    assert metrics["recall_at_50"] > metrics["popularity_recall_at_50"] + 0.03, metrics
    assert metrics["ndcg_at_50"] > metrics["popularity_ndcg_at_50"], metrics


def test_index_is_exact_and_built_from_the_live_model(trained_workspace):
    index = ArtifactStore(trained_workspace.models_dir / "index")
    retrieval = ArtifactStore(trained_workspace.models_dir / "retrieval")
    manifest = index.manifest()
    assert manifest["retrieval_version"] == retrieval.current_version()
    assert manifest["recall_at_100_vs_exact"] == 1.0 and manifest["factory"] == "Flat"


def test_published_scorer_scores_one_users_candidates_in_one_call(trained_workspace):
    """The served SavedModel: N candidates in one call, row-independent and deterministic."""
    import numpy as np
    import tensorflow as tf

    from ranking.features import FEATURE_NAMES

    store = ArtifactStore(trained_workspace.models_dir / "ranking")
    scorer = tf.saved_model.load(str(store.current() / "scorer"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, len(FEATURE_NAMES))).astype("float32")
    items = np.array([f"i{k:06d}" for k in range(100)])
    history, types = tf.constant(["i000001", "i000002"]), tf.constant(["view", "purchase"])
    a = scorer.score(tf.constant(x), tf.constant(items), history, types).numpy()
    b = scorer.score(tf.constant(x[::-1].copy()), tf.constant(items[::-1].copy()), history, types).numpy()
    assert a.shape == (100,) and np.all((a >= 0) & (a <= 1))
    np.testing.assert_allclose(a, b[::-1], rtol=1e-5, atol=1e-7)
