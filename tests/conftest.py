"""Shared fixtures: one tiny workspace trained end to end per test session (real Feast, TF, FAISS)."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports tf.keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def require_command():
    """``require_command(name, install_hint, why="")``: the command's path, or skip with how to
    install it; under CI (CI=true, where .ci/run installs the Debian packages) fail instead, so
    that a missing install step cannot pass as a green run."""
    import shutil

    def find(name: str, install_hint: str, why: str = "") -> str:
        path = shutil.which(name)
        if path is None:
            message = f"{name} is not on PATH{why}: {install_hint}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        return path

    return find


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


@pytest.fixture(scope="module")
def private_server(trained_workspace, tmp_path_factory):
    """A real gRPC server on a copy of the workspace, one per test module: for tests that write
    to its online store (RecordEvents), which the shared server's tests must not see."""
    import shutil

    from feature_repo.workspace import Workspace
    from serving.recommender import Recommender
    from serving.server import start

    root = tmp_path_factory.mktemp("private") / "ws"
    shutil.copytree(trained_workspace.root, root)
    running = start(Recommender(Workspace.at(root)), port=0)
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


@pytest.fixture(scope="session")
def shared_store_load():
    """``run(running_server)``: 180 mixed concurrent calls against a server, checked.

    Several threads of a server process use its one online store: RecordEvents writes on the
    events thread, a cart call for a user reads on the event loop, and Recommend reads on the
    loop too (or on the pipeline thread with ``max_batch > 1``). No call may fail, none may be
    answered from the degraded path (which would hide a store error), and every view must
    reach the store."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.client import RecommenderClient

    def run(running) -> None:
        rec = running._servicer.recommender
        items = [str(i) for i in rec.models.items.item_ids[:60]]
        with RecommenderClient(running.address) as c:
            c.wait_ready()

            def call(n: int):
                user = f"shared-{n % 12}"
                if n % 3 == 0:
                    return "events", c.record_events([{"user_id": user, "item_id": items[n % 60], "event_type": "view"}])
                if n % 3 == 1:
                    return "recommend", c.recommend(user, k=10)
                return "cart", c.cart_recommendations([items[(n + 7) % 60]], k=5, user_id=user)

            with ThreadPoolExecutor(12) as pool:
                answers = list(pool.map(call, range(180)))
        assert {kind for kind, _ in answers} == {"events", "recommend", "cart"}
        for kind, response in answers:
            if kind == "events":
                assert response.accepted == 1
            else:
                assert not response.degraded and len(response.items) > 0
        rows = rec.user_reader.read_many([f"shared-{u}" for u in range(12)])
        for u, row in enumerate(rows):  # every view reached the store, in no particular order
            viewed = {items[n % 60] for n in range(0, 180, 3) if n % 12 == u}
            assert viewed <= set(row["recent_items"] or [])

    return run


@pytest.fixture()
def scrape():
    """Read http://127.0.0.1:PORT/metrics (a real scrape): every sample, keyed by its name and
    labels as a frozenset of (label, value) pairs."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def read(port: int) -> dict[tuple[str, frozenset], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.status == 200
            text = response.read().decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    return read


@pytest.fixture()
def free_ports():
    """``free_ports(n)``: n different free loopback ports (held open together while picked)."""
    import socket

    def pick(n: int) -> list[int]:
        sockets = [socket.socket() for _ in range(n)]
        try:
            for s in sockets:
                s.bind(("127.0.0.1", 0))
            return [s.getsockname()[1] for s in sockets]
        finally:
            for s in sockets:
                s.close()

    return pick
