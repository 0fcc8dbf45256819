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


def test_ranker_learned_something(trained_workspace):
    facts = ArtifactStore(trained_workspace.models_dir / "ranking").manifest()["training"]
    assert facts["val_auc"] > 0.6, facts


def test_exported_ranker_scores_like_the_trained_one(trained_workspace):
    """save → load → the tf.function gives the same scores (one call for N candidates)."""
    import numpy as np
    import tensorflow as tf

    from ranking.features import FEATURE_NAMES

    scorer = tf.saved_model.load(str(ArtifactStore(trained_workspace.models_dir / "ranking").current() / "scorer"))
    x = np.random.default_rng(0).normal(size=(100, len(FEATURE_NAMES))).astype("float32")
    a, b = scorer.score(tf.constant(x)).numpy(), scorer.score(tf.constant(x[::-1].copy())).numpy()
    assert a.shape == (100,) and np.all((a >= 0) & (a <= 1))
    np.testing.assert_allclose(a, b[::-1], rtol=1e-5)  # row-independent, deterministic
