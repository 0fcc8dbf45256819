"""The two-tower model on a toy catalog: learns an obvious pattern, exports faithfully, is
deterministic under a seed, and embeds an unseen item from its content."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from retrieval.model import Catalog
from retrieval.train import TrainSettings, embed_items, embed_users, export, hit_rate, next_item_examples, train_two_tower

pytestmark = pytest.mark.slow

ITEMS = [f"i{i}" for i in range(40)]
CATALOG = Catalog(ITEMS, [f"c{i % 4}" for i in range(40)], [f"b{i % 5}" for i in range(40)],
                  [i % 6 for i in range(40)], [[f"a{i % 3}"] for i in range(40)])
SETTINGS = TrainSettings(dim=16, max_len=8, blocks=1, heads=2, dropout=0.0, epochs=12, patience=12, batch_size=32)


def _chains(n_users: int, seed: int = 0) -> list[list[str]]:
    """Each user walks i_k → i_{k+1} → ... (mod 40): the next item is always the successor."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, 40, size=n_users)
    return [[ITEMS[(s + j) % 40] for j in range(6)] for s in starts]


@pytest.fixture(scope="module")
def trained():
    seqs = _chains(400)
    valid = ([s[:-1] for s in seqs[:100]], [s[-1] for s in seqs[:100]])
    model, facts = train_two_tower([s[:-1] for s in seqs], CATALOG, SETTINGS, valid, verbose=0)
    return model, facts, valid


def test_next_item_examples_are_right_aligned():
    ex = next_item_examples([["a", "b", "c"], ["x"]], max_len=4)
    assert ex["inputs"].tolist() == [["", "", "a", "b"]]  # one-item sequences teach nothing
    assert ex["targets"].tolist() == [["", "", "b", "c"]]


def test_learns_the_successor_pattern(trained):
    model, facts, valid = trained
    assert facts["best_valid_hr_at_10"] > 0.9, facts["history"]
    assert hit_rate(model, CATALOG, *valid, k=1) > 0.25  # random would be 1/34 (measured 0.37)


def test_export_scores_like_the_trained_model(trained, tmp_path):
    model, _, (histories, _) = trained
    export(model, CATALOG, tmp_path)
    user_tower = tf.saved_model.load(str(tmp_path / "user_tower"))
    item_tower = tf.saved_model.load(str(tmp_path / "item_tower"))
    padded = np.array([["", "", "", "", *h[-4:]] for h in histories[:10]], dtype=str)
    exported = user_tower.embed(tf.constant(["u"] * 10), tf.constant(padded), tf.zeros((10, 0))).numpy()
    np.testing.assert_allclose(exported, embed_users(model, [list(h[-4:]) for h in histories[:10]]), atol=1e-5)
    stored = np.load(tmp_path / "item_embeddings.npy")
    np.testing.assert_allclose(stored, embed_items(model, ITEMS), atol=1e-6)
    by_id = item_tower.signatures["embed"](item_id=tf.constant(ITEMS[:5]))
    np.testing.assert_allclose(list(by_id.values())[0].numpy(), stored[:5], atol=1e-5)


def test_unseen_item_gets_a_content_embedding(trained, tmp_path):
    model, _, _ = trained
    export(model, CATALOG, tmp_path)
    item_tower = tf.saved_model.load(str(tmp_path / "item_tower"))
    new = item_tower.embed_content(tf.constant(["brand-new"]), tf.constant(["c1"]), tf.constant(["b1"]),
                                   tf.constant([1], tf.int64), tf.constant([["a1"]])).numpy()[0]
    assert np.isfinite(new).all() and abs(np.linalg.norm(new) - 1) < 1e-5
    emb = np.load(tmp_path / "item_embeddings.npy")
    same_category = emb[[i for i in range(40) if i % 4 == 1]] @ new
    other = emb[[i for i in range(40) if i % 4 != 1]] @ new
    assert same_category.mean() > other.mean()  # content carries the new item


def test_same_seed_same_model():
    seqs = _chains(100, seed=1)
    settings = TrainSettings(dim=8, max_len=8, blocks=1, heads=1, epochs=2, patience=2, batch_size=32)
    a, _ = train_two_tower(seqs, CATALOG, settings, verbose=0)
    b, _ = train_two_tower(seqs, CATALOG, settings, verbose=0)
    np.testing.assert_allclose(embed_items(a, ITEMS), embed_items(b, ITEMS), atol=1e-5)


def test_user_id_and_activity_reach_the_exported_tower(tmp_path):
    """With ids and activity: a known user's id and activity change the embedding; an unknown id
    falls back to the OOV slot; export → load gives the same vectors."""
    seqs = _chains(120, seed=2)
    users = [f"u{i}" for i in range(len(seqs))]
    activity = np.random.default_rng(0).normal(size=(len(seqs), 3)).astype(np.float32)
    settings = TrainSettings(dim=8, max_len=8, blocks=1, heads=1, epochs=2, patience=2, batch_size=32)
    model, _ = train_two_tower(seqs, CATALOG, settings, users=users, activity=activity, verbose=0)
    export(model, CATALOG, tmp_path)
    tower = tf.saved_model.load(str(tmp_path / "user_tower"))
    hist = np.array([["", "", "", "", *s[-4:]] for s in seqs[:4]], dtype=str)
    known = tower.embed(tf.constant(users[:4]), tf.constant(hist), tf.constant(activity[:4])).numpy()
    np.testing.assert_allclose(known, embed_users(model, [s[-4:] for s in seqs[:4]], users[:4], activity[:4]), atol=1e-5)
    other_activity = tower.embed(tf.constant(users[:4]), tf.constant(hist), tf.constant(activity[:4] + 1)).numpy()
    assert not np.allclose(known, other_activity)
    unknown = tower.embed(tf.constant(["nobody"] * 4), tf.constant(hist), tf.constant(activity[:4])).numpy()
    assert np.isfinite(unknown).all() and np.allclose(np.linalg.norm(unknown, axis=1), 1, atol=1e-5)
