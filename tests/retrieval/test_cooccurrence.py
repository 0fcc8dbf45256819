"""CooccurrenceModel against a brute-force numpy oracle; toy neighbours; save → load → same top-k."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from feature_repo.errors import ConfigError, ContractError
from retrieval.cooccurrence import (
    ARRAYS_FILE,
    CooccurrenceConfig,
    CooccurrenceModel,
    CooccurrenceNotLoaded,
    sequences_from_events,
)


def _oracle(seqs: list[list[str]], item_ids: list[str], cfg: CooccurrenceConfig) -> np.ndarray:
    """The dense item×item score matrix, by loops, truncated to top_n per row (ties: column order)."""
    pos = {i: k for k, i in enumerate(item_ids)}
    n = len(item_ids)
    c, pop = np.zeros((n, n)), np.zeros(n)
    for s in seqs:
        x = [pos[i] for i in s]
        for t, a in enumerate(x):
            pop[a] += 1
            for d in range(1, cfg.window + 1):
                if t + d < len(x) and x[t + d] != a:
                    c[a, x[t + d]] += cfg.decay ** (d - 1)
                    c[x[t + d], a] += cfg.backward * cfg.decay ** (d - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.nan_to_num(c / (pop[:, None] ** (1 - cfg.alpha) * pop[None, :] ** cfg.alpha))
    for row in s:
        order = sorted(np.flatnonzero(row), key=lambda j: (-row[j], j))
        row[order[cfg.top_n:]] = 0.0
    return s


def _random_sequences(seed: int, users: int = 60, items: int = 25) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[f"i{j}" for j in rng.integers(0, items, size=rng.integers(1, 12))] for _ in range(users)]


@pytest.mark.parametrize("cfg", [
    CooccurrenceConfig(),
    CooccurrenceConfig(window=1, backward=0.0, alpha=0.0, top_n=3, recent=2, recency=0.5),
    CooccurrenceConfig(window=5, decay=1.0, backward=0.5, alpha=1.0, top_n=7, recent=10, recency=1.0),
])
def test_scores_match_brute_force_oracle(cfg):
    seqs = _random_sequences(seed=cfg.window)
    model = CooccurrenceModel.fit(seqs, config=cfg)
    dense = _oracle(seqs, model.item_ids, cfg)
    histories = seqs[:20] + [[], ["unknown", "i3"]]
    expected = np.zeros((len(histories), len(model)))
    pos = model.position
    for u, h in enumerate(histories):
        for age, item in enumerate(reversed(h[-cfg.recent:])):
            if item in pos:
                expected[u] += cfg.recency ** age * dense[pos[item]]
    np.testing.assert_allclose(model.score_histories(histories), expected, rtol=1e-5, atol=1e-7)
    for h, row in zip(histories, expected):  # serving's sparse form: the same scores, only where > 0
        cols, scores = model.sparse_scores(h)
        assert (np.diff(cols) > 0).all()
        np.testing.assert_allclose(scores, row[cols], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(cols, np.flatnonzero(row > 0))
        dense = model.score_histories([h])[0]  # top-k as the dense row sorts it (ties: catalog order)
        np.testing.assert_array_equal(scores, dense[cols])  # the batch form's floats, to the bit
        top, _ = model.top(h, 5)
        assert top.tolist() == sorted(np.flatnonzero(dense > 0), key=lambda j: (-dense[j], j))[:5]
    assert (np.diff(model.indptr) <= cfg.top_n).all()


def test_repeated_histories_are_answered_from_the_kept_scores_without_being_changed():
    """Serving asks for one user's recent items twice per request; the kept answer must be the
    same as a fresh one, and no caller may change it for the next."""
    seqs = _random_sequences(seed=11)
    model = CooccurrenceModel.fit(seqs, config=CooccurrenceConfig(recent=3))
    fresh = CooccurrenceModel.fit(seqs, config=CooccurrenceConfig(recent=3))
    history = seqs[0] + ["i1", "i2", "i3"]
    first = model.sparse_scores(history)
    again = model.sparse_scores(["older", "ids"] + history[-3:])  # the same last 3: the same answer
    assert again[0] is first[0] and not first[0].flags.writeable and not first[1].flags.writeable
    top_rows, _ = model.top(history, 4, exclude={str(model.item_ids[first[0][0]])})  # a filtered top ...
    for got, want in zip(model.sparse_scores(history), fresh.sparse_scores(history)):  # ... left it intact
        np.testing.assert_array_equal(got, want)
    for h in _random_sequences(seed=12, users=200):  # more histories than are kept: still right
        np.testing.assert_array_equal(model.sparse_scores(h)[1], fresh.sparse_scores(h)[1])


def test_the_obvious_neighbour_and_nearer_pairs_weigh_more():
    seqs = {"u1": ["a", "b", "x", "y"], "u2": ["a", "b", "z"], "u3": ["a", "b"], "u4": ["c", "d"]}
    model = CooccurrenceModel.fit(seqs, config=CooccurrenceConfig(window=2, decay=0.5, alpha=0.5))
    assert model.neighbours("a", 1)[0][0] == "b"
    # b→x is 1 step, a→x is 2 steps: same counts and popularity of x, so b must score x higher
    ax = dict(model.neighbours("a", 10))["x"]
    bx = dict(model.neighbours("b", 10))["x"]
    assert bx == pytest.approx(2 * ax)
    assert "c" not in dict(model.neighbours("a", 10)) and model.neighbours("nope") == []


def test_cosine_normalisation_by_hand():
    # a,b together 2x (a→b, 1 step), pop a = 2, pop b = 4 (b also alone twice)
    seqs = [["a", "b"], ["a", "b"], ["b"], ["b"]]
    model = CooccurrenceModel.fit(seqs, config=CooccurrenceConfig(window=1, backward=1.0, alpha=0.5))
    assert dict(model.neighbours("a"))["b"] == pytest.approx(2 / np.sqrt(2 * 4))
    forward_only = CooccurrenceModel.fit(seqs, config=CooccurrenceConfig(window=1, backward=0.0))
    assert forward_only.neighbours("b") == [] and forward_only.neighbours("a")[0][0] == "b"


def test_recommend_excludes_limits_and_favours_the_latest_item():
    seqs = [["a", "b"]] * 3 + [["c", "d"]] * 3 + [["e", "f"]] * 3
    model = CooccurrenceModel.fit(seqs, config=CooccurrenceConfig(window=1, backward=0.0, recency=0.5))
    recs = model.recommend(["a", "c"], k=5)
    assert [i for i, _ in recs] == ["d", "b"]  # c is the latest: its neighbour first; no padding
    assert recs[0][1] == pytest.approx(2 * recs[1][1])
    assert [i for i, _ in model.recommend(["a", "c"], k=1)] == ["d"]
    assert [i for i, _ in model.recommend(["a", "c"], k=5, exclude={"d"})] == ["b"]
    assert model.recommend(["never-seen"], k=3) == []
    with pytest.raises(ContractError, match="k=0"):
        model.recommend(["a"], k=0)


def test_item_ids_fix_the_catalog_order_and_skip_others():
    model = CooccurrenceModel.fit([["a", "b", "zz"]], item_ids=["b", "a", "c"])
    assert model.item_ids == ["b", "a", "c"] and model.score_histories([["a"]]).shape == (1, 3)
    assert model.score_histories([["a"]])[0].tolist()[0] > 0 and model.popularity.tolist() == [1, 1, 0]


def test_events_table_is_ordered_by_position_not_timestamp():
    ev = pd.DataFrame({"user_id": ["u", "u", "u"], "item_id": ["c", "a", "b"], "position": [2, 0, 1],
                       "timestamp": pd.to_datetime(["2020-01-01", "2020-01-03", "2020-01-02"], utc=True)})
    assert sequences_from_events(ev) == {"u": ["a", "b", "c"]}
    assert sequences_from_events(ev.drop(columns="position")) == {"u": ["c", "b", "a"]}
    model = CooccurrenceModel.fit(ev, config=CooccurrenceConfig(window=1, backward=0.0))
    assert model.neighbours("a") == [("b", pytest.approx(1.0))]
    with pytest.raises(ContractError, match="item_id"):
        sequences_from_events(ev.drop(columns="item_id"))


def test_save_load_same_top_k(tmp_path):
    seqs = _random_sequences(seed=7)
    model = CooccurrenceModel.fit(seqs, config=CooccurrenceConfig(window=2, top_n=5))
    model.save(tmp_path / "v1")
    back = CooccurrenceModel.load(tmp_path / "v1")
    assert back.config == model.config and back.item_ids == model.item_ids
    for h in seqs[:10]:
        assert back.recommend(h, k=5) == model.recommend(h, k=5)
    assert json.loads((tmp_path / "v1" / "cooccurrence.json").read_text())["pairs"] == len(model.indices)


def test_broken_artifact_fails_loudly(tmp_path):
    with pytest.raises(CooccurrenceNotLoaded, match="rebuild"):
        CooccurrenceModel.load(tmp_path / "missing")
    model = CooccurrenceModel.fit([["a", "b", "c"]])
    model.save(tmp_path / "v")
    (tmp_path / "v" / "item_ids.json").write_text(json.dumps(["a", "b"]))  # one id short
    with pytest.raises(CooccurrenceNotLoaded, match="inconsistent"):
        CooccurrenceModel.load(tmp_path / "v")
    (tmp_path / "v" / ARRAYS_FILE).write_bytes(b"garbage")
    with pytest.raises(CooccurrenceNotLoaded):
        CooccurrenceModel.load(tmp_path / "v")


def test_bad_settings_and_empty_input_are_named():
    with pytest.raises(ConfigError, match="window=0"):
        CooccurrenceConfig(window=0)
    with pytest.raises(ConfigError, match="alpha=2"):
        CooccurrenceConfig(alpha=2)
    with pytest.raises(ContractError, match="empty"):
        CooccurrenceModel.fit([])
