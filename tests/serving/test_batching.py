"""Recommend calls that queue up are answered together (serving/batching.py): the same answers
as one at a time, one request's failure stays its own, and the server really batches."""
from __future__ import annotations

import asyncio
import threading

import grpc
import numpy as np
import pandas as pd
import pytest

from serving.batching import Batcher


def _run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_calls_that_queue_during_a_batch_make_the_next_batch():
    """An idle batcher answers the first call at once; the calls that arrive while it runs are
    answered together next, at most max_size at a time, in arrival order."""
    seen = []

    def run(items):
        seen.append(list(items))
        return [x * 10 for x in items]

    batcher = Batcher(run, max_size=3)

    async def main():
        return await asyncio.gather(*(batcher.submit(i) for i in range(7)))

    assert _run(main()) == [i * 10 for i in range(7)]
    assert seen == [[0], [1, 2, 3], [4, 5, 6]]
    assert (batcher.batches, batcher.calls) == (3, 7)
    batcher.close()


def test_a_calls_wait_for_its_batch_and_each_batchs_run_are_timed():
    """The server logs these: a call that arrives during a batch waits for it to end."""
    import time

    def run(items):
        time.sleep(0.03)
        return items

    batcher = Batcher(run, max_size=8)

    async def main():
        return await asyncio.gather(*(batcher.submit(i) for i in range(3)))

    assert batcher.timings() == {}
    _run(main())  # batches [0] then [1, 2]
    assert len(batcher.runs) == 2 and min(batcher.runs) >= 0.03
    waits = sorted(batcher.waits)
    assert len(waits) == 3 and waits[0] < 0.02 and waits[1] >= 0.025  # the first at once; the others behind it
    t = batcher.timings()
    assert t["run_p50_ms"] >= 30 and t["wait_p99_ms"] >= 25 and t["wait_p50_ms"] <= t["wait_p99_ms"]
    batcher.close()


def test_an_answer_that_is_an_exception_is_raised_in_its_caller_only():
    def run(items):
        return [ValueError(f"bad {x}") if x == 1 else x for x in items]

    batcher = Batcher(run, max_size=8)

    async def main():
        first = asyncio.ensure_future(batcher.submit(0))  # runs alone; 1 and 2 queue behind it
        rest = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        return [await first, *rest]

    out = _run(main())
    assert out[0] == 0 and out[2] == 2
    assert isinstance(out[1], ValueError) and str(out[1]) == "bad 1"
    assert batcher.batches == 2


def test_a_failing_batch_fails_each_caller_loudly():
    def run(items):
        raise RuntimeError("model exploded")

    batcher = Batcher(run, max_size=8)

    async def main():
        return await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)

    assert [str(e) for e in _run(main())] == ["model exploded"] * 3
    with pytest.raises(ValueError, match="max_size"):
        Batcher(run, max_size=0)


def test_a_cancelled_call_is_not_computed():
    seen = []
    gate = threading.Event()

    def run(items):
        seen.append(list(items))
        gate.wait(5)  # the first batch runs until the cancelled call is gone
        return list(items)

    batcher = Batcher(run, max_size=8)

    async def main():
        first = asyncio.ensure_future(batcher.submit("first"))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(batcher.submit("gone"))
        kept = asyncio.ensure_future(batcher.submit("kept"))
        await asyncio.sleep(0)
        gone.cancel()  # its client gave up while it waited
        gate.set()
        return await first, await kept

    assert _run(main()) == ("first", "kept")
    assert seen == [["first"], ["kept"]]


def _users(ws, n):
    return pd.read_parquet(ws.clean_dir / "events.parquet")["user_id"].value_counts().index[:n].tolist()


@pytest.mark.parametrize("kind", ["dcn", "lstm"])
def test_a_batch_answers_as_each_request_alone(trained_workspace, kind):
    """Batched reads, user tower and (DCN) ranker calls change nothing in the pages: known users,
    a new user, a product-page context and a category filter in one batch."""
    from serving.recommender import Recommender, RequestContext

    rec = Recommender(trained_workspace, ranker=kind, user_cache=0)  # every page computes its embeddings
    users = _users(trained_workspace, 5)
    viewed = str(rec.models.items.item_ids[3])
    calls = [(u, 10, RequestContext()) for u in users] + [
        ("brand-new-user", 10, RequestContext()),
        (users[0], 5, RequestContext(surface="product", viewed=viewed)),
        (users[1], 10, RequestContext(category=str(rec.models.items.category[0])))]
    alone = [rec.recommend(u, k, ctx) for u, k, ctx in calls]
    together = rec.recommend_many(calls)
    assert [len(r.items) for r in together] == [len(r.items) for r in alone] and len(together[0].items) == 10
    for a, b in zip(alone, together):
        assert [i.item_id for i in b.items] == [i.item_id for i in a.items]
        np.testing.assert_allclose([i.score for i in b.items], [i.score for i in a.items], rtol=1e-4, atol=1e-6)
        assert (b.personalized, b.degraded) == (a.personalized, a.degraded)
    assert together[0].personalized and not together[len(users)].personalized


def test_a_request_failing_in_a_batch_fails_alone(trained_workspace, monkeypatch, caplog):
    from serving.recommender import Recommender, RequestContext

    rec = Recommender(trained_workspace)
    users = _users(trained_workspace, 3)
    page = rec._page

    def flaky(m, r):
        if r.user_id == users[1]:
            raise RuntimeError("bug in one request")
        return page(m, r)

    monkeypatch.setattr(rec, "_page", flaky)
    out = rec.recommend_many([(u, 10, RequestContext()) for u in users])
    assert isinstance(out[1], RuntimeError)
    assert [len(out[i].items) for i in (0, 2)] == [10, 10]
    assert "answering them one by one" in caplog.text  # the batch failure is logged, not hidden


def test_the_server_batches_concurrent_calls_and_keeps_statuses(trained_workspace, recommender, client):
    """Over real gRPC: concurrent calls are batched (fewer batches than calls), each caller gets
    its own page, and an invalid call among them gets INVALID_ARGUMENT alone."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.client import RecommenderClient
    from serving.server import start

    users = _users(trained_workspace, 24)
    want = {u: [r.item_id for r in recommender.recommend(u, 10).items] for u in users}
    server = start(recommender, port=0, max_batch=8)
    batcher = server._servicer.recommend_batcher
    try:
        with RecommenderClient(server.address) as c, ThreadPoolExecutor(8) as pool:
            def call(u):
                try:
                    return [r.item_id for r in c.recommend(u, k=10 if u else 1000).items]
                except grpc.RpcError as e:
                    return e.code()

            for _ in range(3):  # rounds of 8 concurrent calls, one of them invalid
                got = list(pool.map(call, users + [""]))
                assert got[:-1] == [want[u] for u in users]
                assert got[-1] == grpc.StatusCode.INVALID_ARGUMENT
        assert batcher.calls >= 3 * len(users) and batcher.batches < batcher.calls
    finally:
        server.stop()
