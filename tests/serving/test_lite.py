"""The TensorFlow Lite copies of the user tower and the ranker (serving/lite.py) answer as
TensorFlow does, at every shape a request sends, on several threads, and fall back to
TensorFlow when a graph does not convert or answers differently."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest


@pytest.fixture(scope="module")
def models(trained_workspace):
    from serving.models import Models

    m = {kind: Models.load(trained_workspace, kind) for kind in ("dcn", "lstm")}
    for one in m.values():
        one.compile_lite()
    return m


def _user_inputs(m, batch: int, seed: int):
    from feature_repo.data.features import RECENT_N, pad_sequences
    from retrieval.user_features import activity_vector

    rng = np.random.default_rng(seed)
    ids = m.items.item_ids.astype(str)
    histories = [list(rng.choice(ids, rng.integers(0, 30))) for _ in range(batch)]
    users = [f"u{rng.integers(0, 500):06d}" for _ in range(batch)]
    users[-1] = "nouveau-utilisateur-é"  # an unknown, non-ASCII id: UTF-8 bytes, as TensorFlow encodes it
    activity = np.stack([activity_vector({"n_view": int(rng.integers(0, 40)), "n_purchase": int(rng.integers(0, 4))})
                         for _ in range(batch)]).astype(np.float32)
    return users, pad_sequences(histories, RECENT_N).astype(str), activity


def test_every_model_of_this_version_converts(models):
    for kind, m in models.items():
        assert m._lite_user is not None, f"{kind}: user tower"
        assert m._lite_scorer is not None, f"{kind}: ranker"


def test_the_user_tower_copy_answers_as_tensorflow_at_any_batch(models):
    import tensorflow as tf

    m = models["dcn"]
    for seed, batch in enumerate([1, 3, 1, 8, 2, 1]):  # shape changes both ways re-allocate
        users, history, activity = _user_inputs(m, batch, seed)
        lite = m.embed_users(users, history, activity)
        want = m._embed_user(tf.constant(users), tf.constant(history), tf.constant(activity)).numpy()
        assert lite.shape == want.shape == (batch, m.item_embeddings.shape[1])
        np.testing.assert_allclose(lite, want, atol=1e-5, rtol=1e-4)
    assert np.ptp(lite[:, 0]) > 0 or batch == 1  # users are told apart


@pytest.mark.parametrize("kind", ["dcn", "lstm"])
def test_the_ranker_copy_answers_as_tensorflow(models, kind):
    import tensorflow as tf

    from ranking.features import FEATURE_NAMES
    from serving.models import NO_ITEM_IDS

    m = models[kind]
    rng = np.random.default_rng(3)
    ids = m.items.item_ids.astype(str)
    for rows, history_len in [(500, 0), (7, 12), (1, 3), (1100, 20)]:
        features = rng.normal(size=(rows, len(FEATURE_NAMES))).astype(np.float32)
        items = NO_ITEM_IDS if m.ranker_scores_rows_alone else rng.choice(ids, rows)
        history = rng.choice(ids, history_len) if history_len and not m.ranker_scores_rows_alone else NO_ITEM_IDS
        types = rng.choice(["view", "click", "add_to_cart", "purchase"], len(history)) if len(history) else NO_ITEM_IDS
        lite = m.score_heads(features, items, history, types)
        want = m._score_heads(*(tf.constant(x) for x in (features, items, history, types))).numpy()
        assert lite.shape == want.shape == (rows, len(m.head_weights))
        np.testing.assert_allclose(lite, want, atol=1e-5, rtol=1e-4)
    assert np.ptp(lite[:, 2]) > 0


def test_the_copy_serves_several_threads_at_once(models):
    """Each thread has an interpreter of its own: interleaved calls of other shapes do not mix."""
    m = models["dcn"]
    inputs = [_user_inputs(m, batch, seed) for seed, batch in enumerate([1, 2, 5, 3])]
    want = [m.embed_users(*x) for x in inputs]
    errors: list[str] = []

    def work(k: int) -> None:
        for _ in range(40):
            got = m.embed_users(*inputs[k])
            if not np.allclose(got, want[k], atol=1e-6):
                errors.append(f"thread {k}: another answer")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_a_graph_that_does_not_convert_falls_back_loudly(caplog):
    import tensorflow as tf

    from serving.lite import compile_function

    module = tf.Module()
    module.table = tf.Variable([1.0, 2.0])
    # tf.strings.format has no TFLite builtin: the converter refuses the graph.
    fn = tf.function(lambda x: tf.strings.length(tf.strings.format("{}", x)))
    with caplog.at_level(logging.WARNING, logger="serving.lite"):
        got = compile_function(fn, module, [tf.TensorSpec([None], tf.float32)], [np.ones(2, np.float32)],
                               lambda x: fn(x).numpy(), "odd model")
    assert got is None
    assert "odd model: no TensorFlow Lite copy" in caplog.text and "TensorFlow serves it" in caplog.text


def test_a_copy_that_answers_differently_is_not_used(caplog):
    import tensorflow as tf

    from serving.lite import compile_function

    module = tf.Module()
    fn = tf.function(lambda x: x * 2.0)
    with caplog.at_level(logging.WARNING, logger="serving.lite"):
        wrong = compile_function(fn, module, [tf.TensorSpec([None, 3], tf.float32)], [np.ones((2, 3), np.float32)],
                                 lambda x: x * 2.0 + 1e-3, "drifting model")
        right = compile_function(fn, module, [tf.TensorSpec([None, 3], tf.float32)], [np.ones((2, 3), np.float32)],
                                 lambda x: x * 2.0, "doubling model")
    assert wrong is None and "drifting model: the TensorFlow Lite copy answers differently" in caplog.text
    assert right is not None
    np.testing.assert_array_equal(right(np.arange(12, dtype=np.float32).reshape(4, 3)),
                                  np.arange(12, dtype=np.float32).reshape(4, 3) * 2.0)


def test_lite_and_tensorflow_recommenders_serve_the_same_pages(trained_workspace, recommender):
    """The production default (lite) against the TensorFlow runtime, request by request."""
    from serving.recommender import Recommender, RequestContext

    assert recommender.models._lite_scorer is not None  # the shared fixture serves the default
    plain = Recommender(trained_workspace, model_runtime="tensorflow")
    assert plain.models._lite_user is None and plain.models._lite_scorer is None
    users = [f"u{i:06d}" for i in range(0, 120, 3)]
    item = str(recommender.models.items.item_ids[5])
    contexts = [RequestContext(), RequestContext(surface="product", viewed=item), RequestContext(cart=(item,))]
    same = total = 0
    for i, user in enumerate(users):
        ctx = contexts[i % len(contexts)]
        a, b = recommender.recommend(user, 20, ctx), plain.recommend(user, 20, ctx)
        total += 1
        ids_a, ids_b = [x.item_id for x in a.items], [x.item_id for x in b.items]
        same += ids_a == ids_b
        shared = {x.item_id: x.score for x in b.items}
        for x in a.items:
            if x.item_id in shared:
                assert abs(x.score - shared[x.item_id]) < 1e-5
    # Scores agree to float32 rounding, so only exact ties could reorder a page.
    assert same >= total - 1, f"{total - same} of {total} pages differ"
