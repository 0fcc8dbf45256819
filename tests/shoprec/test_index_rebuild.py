"""`shoprec index rebuild`: new items become retrievable; a failed or crashed build never
changes the live version."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from feature_repo.artifacts import ArtifactStore
from feature_repo.workspace import Workspace
from retrieval.index import ItemIndex
from shoprec.index_job import IndexSettings, IndexVerificationFailed, rebuild

pytestmark = pytest.mark.slow


@pytest.fixture()
def ws(trained_workspace, tmp_path):
    """A private copy: these tests change the live index version."""
    shutil.copytree(trained_workspace.root, tmp_path / "ws")
    return Workspace.at(tmp_path / "ws")


def _index_store(ws):
    return ArtifactStore(ws.models_dir / "index")


def _add_item_to_catalog(ws, item_id: str) -> pd.Series:
    """A copy of the catalog's first item under a new id, as a shop adds one; returns the template."""
    items = pd.read_parquet(ws.clean_dir / "items.parquet")
    template = items.iloc[0]
    new = template.copy()
    new["item_id"] = item_id
    pd.concat([items, new.to_frame().T.astype(items.dtypes.to_dict())], ignore_index=True).to_parquet(
        ws.clean_dir / "items.parquet", index=False)
    return template


def test_new_item_is_indexed_from_its_content(ws):
    items = pd.read_parquet(ws.clean_dir / "items.parquet")
    template = _add_item_to_catalog(ws, "brand-new-item")
    before = _index_store(ws).current_version()
    version, manifest = rebuild(ws, IndexSettings(keep=2))
    assert version != before and _index_store(ws).current_version() == version
    assert manifest["new_items"] == 1 and manifest["items"] == len(items) + 1
    index = ItemIndex.load(_index_store(ws).current())
    emb = np.load(_index_store(ws).current() / "item_embeddings.npy")
    new_vec = emb[index.position["brand-new-item"]]
    pos, _ = index.search(new_vec[None], 5)
    assert index.item_ids[pos[0][0]] == "brand-new-item"  # it is retrievable
    same = items["category"] == template["category"]
    sims = emb[[index.position[i] for i in items["item_id"]]] @ new_vec
    assert sims[same.to_numpy()].mean() > sims[~same.to_numpy()].mean()  # content places it well


def test_a_running_server_serves_a_new_item_after_features_and_rebuild_without_a_failed_call(ws):
    """The catalog grows while the server answers: `shoprec features`, then `shoprec index
    rebuild`; the server's watcher picks both up (no restart), the new item is served from its
    content embedding, and no call from the concurrent clients fails on the way."""
    import threading
    import time

    import grpc

    from serving.client import RecommenderClient
    from serving.recommender import Recommender
    from serving.server import start
    from shoprec import pipeline

    events = pd.read_parquet(ws.clean_dir / "events.parquet")
    user, popular = events["user_id"].value_counts().index[0], events["item_id"].value_counts().index[0]
    recommender = Recommender(ws)
    recommender.watch(0.2)
    running = start(recommender, port=0)
    errors, calls, stop = [], [0], threading.Event()

    def shopper() -> None:
        with RecommenderClient(running.address, timeout=10) as c:
            while not stop.is_set():
                try:
                    c.recommend(user, k=10)
                    c.similar_items(popular, k=5)
                    calls[0] += 2
                except grpc.RpcError as e:  # pragma: no cover - the assertion below reports it
                    errors.append(e)

    threads = [threading.Thread(target=shopper) for _ in range(2)]
    try:
        with RecommenderClient(running.address, timeout=10) as client:
            client.wait_ready()
            before = client.info()
            with pytest.raises(grpc.RpcError) as err:
                client.similar_items("brand-new-item", k=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            for t in threads:
                t.start()
            _add_item_to_catalog(ws, "brand-new-item")
            pipeline.build_features(ws)
            version, manifest = rebuild(ws, IndexSettings(keep=2))
            assert manifest["new_items"] == 1
            deadline = time.monotonic() + 60
            while client.info().index_version != version:
                assert time.monotonic() < deadline, "the server did not pick up the rebuilt index within 60 s"
                time.sleep(0.1)
            assert client.info().items == before.items + 1
            similar = client.similar_items("brand-new-item", k=5)
            assert len(similar.items) == 5 and "brand-new-item" not in {r.item_id for r in similar.items}
            page = client.recommend(user, k=10, surface="product", viewed="brand-new-item")
            assert len(page.items) == 10 and "brand-new-item" not in {r.item_id for r in page.items}
            time.sleep(0.5)  # the shoppers keep calling the new version too
    finally:
        stop.set()
        for t in threads:
            t.join()
        running.stop()
        recommender.close()
    assert not errors, errors[:3]
    assert calls[0] > 10


def test_failed_verification_keeps_the_live_version(ws):
    store = _index_store(ws)
    before, versions = store.current_version(), store.versions()
    with pytest.raises(IndexVerificationFailed, match="live version unchanged"):
        rebuild(ws, IndexSettings(min_recall=1.01))
    assert store.current_version() == before and store.versions() == versions


def test_crash_while_writing_keeps_the_live_version(ws, monkeypatch):
    store = _index_store(ws)
    before, versions = store.current_version(), store.versions()

    def crash(self, directory):
        (directory / "index.faiss").write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ItemIndex, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        rebuild(ws)
    assert store.current_version() == before and store.versions() == versions
    assert not [p for p in store.root.iterdir() if p.name.startswith(".staging")]


def test_retention_prunes_old_versions(ws):
    for _ in range(3):
        rebuild(ws, IndexSettings(keep=2))
    store = _index_store(ws)
    assert len(store.versions()) == 2 and store.current_version() == store.versions()[-1]


def test_repeat_purchase_rates_count_second_purchases_per_item():
    import pandas as pd

    from shoprec.index_job import repeat_purchase_rates

    t = pd.Timestamp("2026-01-01", tz="UTC")
    rows = [("u1", "coffee", 0), ("u1", "coffee", 30), ("u2", "coffee", 1), ("u2", "coffee", 31), ("u3", "coffee", 2),
            *[(f"v{n}", "phone", n) for n in range(6)], ("w1", "rare", 0), ("w1", "rare", 9)]
    events = pd.DataFrame([{"user_id": u, "item_id": i, "event_type": "purchase", "timestamp": t + pd.Timedelta(days=d)}
                           for u, i, d in rows] + [{"user_id": "u9", "item_id": "coffee", "event_type": "view",
                                                    "timestamp": t}])
    rates = repeat_purchase_rates(events)
    assert rates == {"coffee": 0.4}  # 2 of 5 purchases were repeats; phones never; "rare" has < 5 purchases


def test_ivf_nprobe_is_chosen_on_real_users(ws):
    """nprobe 0 (the default): the smallest nprobe that finds the target share of the exact top
    items for sampled users' embeddings, recorded in the manifest and kept by the saved index."""
    import faiss

    version, manifest = rebuild(ws, IndexSettings(factory="IVF16,Flat", keep=2, target_recall=0.9, recall_k=50))
    calibration = manifest["nprobe_calibration"]
    assert calibration["queries"] > 0 and calibration["k"] == 50
    assert manifest["nprobe"] == calibration["nprobe"] <= 16
    assert calibration["recall"] >= 0.9 or calibration["nprobe"] == 16
    assert manifest["user_recall_at_50_vs_exact"] == calibration["recall"]
    assert faiss.extract_index_ivf(ItemIndex.load(_index_store(ws).current()).index).nprobe == manifest["nprobe"]
    _, fixed = rebuild(ws, IndexSettings(factory="IVF16,Flat", min_recall=0.0, keep=2, nprobe=3))
    assert fixed["nprobe"] == 3 and "nprobe_calibration" not in fixed and "user_recall_at_500_vs_exact" in fixed


@pytest.mark.parametrize("bad, field", [({"nprobe": -1}, "nprobe"), ({"target_recall": 0.0}, "target_recall"),
                                        ({"recall_k": 0}, "recall_k")])
def test_index_settings_name_the_bad_field(bad, field):
    with pytest.raises(ValueError, match=field):
        IndexSettings(**bad)
