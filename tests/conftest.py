"""Shared fixtures: one tiny workspace trained end to end per test session (real Feast, TF, FAISS)."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports tf.keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory: pytest.TempPathFactory):
    """The whole offline pipeline on the `tiny` preset: data → features → Feast → models → index."""
    from feature_repo.workspace import Workspace
    from shoprec import pipeline, training

    ws = Workspace.at(tmp_path_factory.mktemp("shop"))
    pipeline.generate(ws, "tiny", seed=0)
    pipeline.validate(ws)
    pipeline.build_features(ws)
    pipeline.materialize(ws)
    cfg = training.TrainingConfig(verbose=0)
    training.train_retrieval(ws, cfg)
    training.build_index(ws, cfg)
    training.train_ranking(ws, cfg)
    from shoprec.churn import train_churn

    train_churn(ws, verbose=0)
    return ws


@pytest.fixture(scope="session")
def recommender(trained_workspace):
    from serving.recommender import Recommender

    return Recommender(trained_workspace)


@pytest.fixture(scope="session")
def grpc_server(recommender):
    """The real gRPC server on an ephemeral loopback port."""
    from serving.server import start

    running = start(recommender, port=0)
    yield running
    running.stop()


@pytest.fixture()
def client(grpc_server):
    from serving.client import RecommenderClient

    with RecommenderClient(grpc_server.address) as c:
        c.wait_ready()
        yield c


@pytest.fixture()
def planted():
    """``with planted(path, rows):`` appends rows to a feature table for the block, then restores it.

    For leakage tests: plant a value where it must not be seen (or, as a control, where it must).
    """
    import shutil
    from contextlib import contextmanager

    import pandas as pd

    @contextmanager
    def plant(path: Path, rows: pd.DataFrame):
        backup = path.with_suffix(".bak")
        shutil.copy2(path, backup)
        try:
            table = pd.read_parquet(path)
            pd.concat([table, rows[table.columns]], ignore_index=True).to_parquet(path, index=False)
            yield
        finally:
            backup.replace(path)

    return plant
