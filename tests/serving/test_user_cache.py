"""Recent users' retrieval is reused only for exactly the same tower inputs, and changes nothing."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.user_cache import UserRetrievalCache


def test_the_least_recently_used_entry_goes_first():
    cache = UserRetrievalCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)


def test_size_zero_keeps_nothing_and_a_negative_size_is_refused():
    cache = UserRetrievalCache(0)
    cache.put("a", 1)
    assert cache.get("a") is None and len(cache) == 0
    with pytest.raises(ValueError, match="size"):
        UserRetrievalCache(-1)


@pytest.mark.slow
def test_a_repeated_request_skips_the_tower_and_faiss_and_gets_the_same_page(trained_workspace):
    from serving.recommender import Recommender, RequestContext

    rec = Recommender(trained_workspace, ranker="dcn")
    m, sources = rec.models, rec._live.sources
    calls = {"tower": 0, "faiss": 0}
    embed, search = m.embed_users, sources.index.search

    def counting_embed(*a):
        calls["tower"] += 1
        return embed(*a)

    def counting_search(*a):
        calls["faiss"] += 1
        return search(*a)

    m.embed_users, sources.index.search = counting_embed, counting_search
    user = pd.read_parquet(trained_workspace.clean_dir / "events.parquet")["user_id"].value_counts().index[0]
    first = rec.recommend(user, 10)
    assert calls == {"tower": 1, "faiss": 1}
    again = rec.recommend(user, 10)
    assert calls == {"tower": 1, "faiss": 1}  # answered from the cache
    assert [i.item_id for i in again.items] == [i.item_id for i in first.items]
    np.testing.assert_allclose([i.score for i in again.items], [i.score for i in first.items], rtol=1e-6)

    # A different history (this session's item) is a different input: computed, not reused.
    session = RequestContext(session=(str(m.items.item_ids[7]),))
    rec.recommend(user, 10, session)
    assert calls == {"tower": 2, "faiss": 2}
    uncached = Recommender(trained_workspace, ranker="dcn", user_cache=0)
    for ctx in (RequestContext(), session):  # and each cached page equals a freshly computed one
        want = uncached.recommend(user, 10, ctx)
        got = rec.recommend(user, 10, ctx)
        assert [i.item_id for i in got.items] == [i.item_id for i in want.items]
    assert calls == {"tower": 2, "faiss": 2} and rec.retrieval_cache.hits >= 3


@pytest.mark.slow
def test_a_recorded_event_makes_a_new_key(trained_workspace, tmp_path):
    """A view changes the user's stored history, so the next request cannot reuse the old retrieval."""
    import shutil

    from feature_repo.workspace import Workspace
    from serving.events import record_events
    from serving.proto import recommender_pb2 as pb
    from serving.recommender import Recommender

    shutil.copytree(trained_workspace.root, tmp_path / "ws")
    rec = Recommender(Workspace.at(tmp_path / "ws"), ranker="dcn")
    user = pd.read_parquet(trained_workspace.clean_dir / "events.parquet")["user_id"].value_counts().index[1]
    rec.recommend(user, 10)
    rec.recommend(user, 10)
    hits, misses = rec.retrieval_cache.hits, rec.retrieval_cache.misses
    item = str(rec.models.items.item_ids[11])
    record_events(rec.store, [pb.Event(user_id=user, item_id=item, event_type="view")], rec.models.items.position)
    rec.recommend(user, 10)
    assert (rec.retrieval_cache.hits, rec.retrieval_cache.misses) == (hits, misses + 1)


@pytest.mark.slow
def test_kept_two_tower_scores_are_the_inner_products_whichever_index_serves(trained_workspace):
    from retrieval.index import ItemIndex
    from serving.candidates import CandidateSources, Quotas
    from serving.recommender import Recommender, _inner_products

    rec = Recommender(trained_workspace, ranker="dcn")
    m = rec.models
    assert rec._live.sources.scores_exact, f"{m.index.factory} keeps its vectors: FAISS's scores are exact"
    user = pd.read_parquet(trained_workspace.clean_dir / "events.parquet")["user_id"].value_counts().index[0]
    page = rec.recommend(user, 10)
    (kept,) = [v for key, v in rec.retrieval_cache._entries.items() if key[0] == user]  # not the warm-up's
    want = _inner_products(m, kept.two_tower, kept.embedding[0])
    np.testing.assert_allclose(kept.two_tower_scores, want, rtol=1e-5, atol=1e-5)
    by_item = dict(zip(m.items.item_ids[kept.two_tower], want))
    shown = [(i.retrieval_score, by_item[i.item_id]) for i in page.items if i.item_id in by_item]
    assert shown, "the page shows two-tower candidates"
    np.testing.assert_allclose(*zip(*shown), rtol=1e-5, atol=1e-5)

    # Compressed codes score approximately: such an index's scores are not used as inner products.
    approx = ItemIndex.build(m.item_embeddings, list(m.index.item_ids), "IVF4,SQ4", nprobe=4)
    assert not approx.scores_exact
    sources = CandidateSources(m.items, approx, m.index_to_item, quotas=Quotas(two_tower=50))
    positions, scores = sources.two_tower_scored(kept.embedding)
    assert len(positions) == 50 and scores is None
