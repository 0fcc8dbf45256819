"""The exported models called through their graphs (serving's fast path) answer as tf.function does."""
from __future__ import annotations

import numpy as np


def test_fast_calls_equal_the_public_calls(recommender):
    import tensorflow as tf

    from feature_repo.data.features import RECENT_N, pad_sequences
    from ranking.features import FEATURE_NAMES
    from retrieval.user_features import activity_vector

    m = recommender.models
    assert hasattr(m._embed_user, "concrete") and hasattr(m._score_heads, "concrete")  # the fast path is taken
    items = m.items.item_ids[:30].astype(str)
    history = pad_sequences([list(items[:7])], RECENT_N).astype(str)
    activity = activity_vector({"n_view": 12, "n_purchase": 2})[None]
    fast = m.embed_users(["u1"], history, activity)
    public = m.user_tower.embed(tf.constant(["u1"]), tf.constant(history), tf.constant(activity)).numpy()
    assert fast.shape == public.shape == (1, m.item_embeddings.shape[1])
    np.testing.assert_allclose(fast, public, rtol=1e-6, atol=1e-6)

    rng = np.random.default_rng(0)
    features = rng.normal(size=(len(items), len(FEATURE_NAMES))).astype(np.float32)
    types = np.array(["view", "add_to_cart", "purchase", "view", "click", "view", "view"])
    fast = m.score_heads(features, items, items[:7], types)
    public = m.scorer.score_heads(tf.constant(features), tf.constant(items), tf.constant(items[:7]),
                                  tf.constant(types)).numpy()
    assert fast.shape == public.shape and fast.shape[0] == len(items)
    np.testing.assert_allclose(fast, public, rtol=1e-5, atol=1e-6)
    assert np.ptp(fast[:, 0]) > 0  # the candidates are told apart: not a constant output


def test_the_dcn_scores_the_same_without_item_ids(trained_workspace):
    """Serving sends the DCN no item ids and no history (it reads neither): the heads must not change."""
    from ranking.features import FEATURE_NAMES
    from serving.models import NO_ITEM_IDS, Models

    m = Models.load(trained_workspace, "dcn")
    assert m.ranker_scores_rows_alone
    assert "ranking_item_columns" in m.items.derived  # made at load, not by the first request
    items = m.items.item_ids[:40].astype(str)
    features = np.random.default_rng(1).normal(size=(len(items), len(FEATURE_NAMES))).astype(np.float32)
    history, types = items[:5], np.array(["view"] * 5)
    with_ids = m.score_heads(features, items, history, types)
    without = m.score_heads(features, NO_ITEM_IDS, history, types)
    nothing = m.score_heads(features, NO_ITEM_IDS, NO_ITEM_IDS, NO_ITEM_IDS)
    np.testing.assert_array_equal(nothing, with_ids)
    assert without.shape == with_ids.shape == (len(items), len(m.head_weights))
    np.testing.assert_array_equal(without, with_ids)
    assert np.ptp(without[:, 0]) > 0
