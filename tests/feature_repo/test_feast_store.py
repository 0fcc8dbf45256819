"""The Feast repo for real: `feast` CLI in a copied repo, and feature_repo.store in a workspace.

sqlite online store and duckdb offline store in tmp_path; the feature tables are built from the
tiny synthetic shop, so these tests also cover synthetic → validate → features → Feast.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

import feature_repo
from feature_repo.data.features import build_all, latest
from feature_repo.data.synthetic import END_DATE, generate
from feature_repo.data.validation import validate
from feature_repo.store import FEATURE_TABLES, apply, materialize, open_store
from feature_repo.workspace import Workspace

FEAST = Path(sys.executable).parent / "feast"
USER_FEATURES = ["user_activity_fv:n_view", "user_activity_fv:n_purchase",
                 "user_recent_fv:recent_items", "user_recent_fv:recent_event_types"]


@pytest.fixture(scope="module")
def clean():
    shop = generate("tiny", seed=0)
    report = validate(shop.events, shop.items, shop.users, now=END_DATE)
    assert report.counts["events"]["kept"] > 0.8 * len(shop.events)  # noise removed, shop kept
    return report.tables["events"], report.tables["items"]


def _write_features(tables: dict[str, pd.DataFrame], features_dir: Path) -> None:
    features_dir.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_parquet(features_dir / f"{name}.parquet", index=False)


def _online(store, user_ids: list[str], features=USER_FEATURES) -> dict[str, list]:
    rows = [{"user_id": u} for u in user_ids]
    return store.get_online_features(features=features, entity_rows=rows).to_dict()


def _as_list(v) -> list:
    return [] if v is None else list(v)


def test_feast_cli_apply_and_materialize_in_a_copied_repo(tmp_path, clean):
    repo = tmp_path / "feature_repo"
    shutil.copytree(Path(feature_repo.__file__).parent, repo, ignore=shutil.ignore_patterns("__pycache__"))
    tables = build_all(*clean)
    _write_features(tables, tmp_path / "var" / "features")
    # The Feast CLI always works on the workspace next to the repo (../var), whatever
    # SHOPREC_HOME says, so registry, online store and sources can never disagree.
    elsewhere = tmp_path / "elsewhere"
    env = {**os.environ, "SHOPREC_HOME": str(elsewhere), "TF_USE_LEGACY_KERAS": "1"}
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    for cmd in ([str(FEAST), "apply"], [str(FEAST), "materialize-incremental", now]):
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "var" / "feast" / "online_store.db").is_file()
    assert (tmp_path / "var" / "feast" / "registry.db").is_file()
    assert not elsewhere.exists()

    import feast

    store = feast.FeatureStore(repo_path=str(repo))
    want = latest(tables["user_recent"], "user_id").set_index("user_id")
    user = want.index[0]
    got = _online(store, [user])
    assert len(_as_list(got["recent_items"][0])) > 0
    assert _as_list(got["recent_items"][0]) == list(want.loc[user, "recent_items"])
    assert got["n_view"][0] == latest(tables["user_activity"], "user_id").set_index("user_id").loc[user, "n_view"]


@pytest.fixture(scope="module")
def planted(clean):
    """Feature tables plus one purchase planted 10 days after the entity timestamp ``t``."""
    events, items = clean
    buyer = events.loc[events["event_type"] == "purchase", "user_id"].value_counts().index[0]
    t = END_DATE + pd.Timedelta(days=1, hours=12)  # after every generated event
    extra = events[events["user_id"] == buyer].iloc[[-1]].assign(
        event_type="purchase", timestamp=t + pd.Timedelta(days=10))
    tables = build_all(pd.concat([events, extra], ignore_index=True), items)
    base = int(((events["user_id"] == buyer) & (events["event_type"] == "purchase")).sum())
    return {"tables": tables, "buyer": buyer, "t": t, "base_purchases": base}


@pytest.fixture(scope="module")
def applied(tmp_path_factory, planted):
    ws = Workspace.at(tmp_path_factory.mktemp("ws"))
    _write_features(planted["tables"], ws.features_dir)
    store = open_store(ws)
    names = apply(store, ws)
    return store, ws, names


def test_apply_registers_every_declaration(applied):
    store, ws, names = applied
    assert names == sorted(["user", "item", "user_activity_push", "user_activity_fv", "user_recent_push", "user_recent_fv",
                            "item_stats_fv", "retrieval_user_v1", "ranking_user_v1"])
    assert {fv.name for fv in store.list_feature_views()} == {"user_activity_fv", "user_recent_fv", "item_stats_fv"}
    assert {fs.name for fs in store.list_feature_services()} == {"retrieval_user_v1", "ranking_user_v1"}
    assert (ws.feast_dir / "registry.db").is_file()
    assert {p.stem for p in ws.features_dir.glob("*.parquet")} == set(FEATURE_TABLES)


def test_materialize_is_idempotent(applied, planted):
    store, ws, _ = applied
    users = sorted(latest(planted["tables"]["user_recent"], "user_id")["user_id"])[:25]
    materialize(store, ws)
    first = _online(store, users)
    assert (ws.feast_dir / "online_store.db").is_file()
    materialize(store, ws)  # continues from the previous end: nothing new, no error
    second = _online(store, users)
    assert first == second
    want = latest(planted["tables"]["user_activity"], "user_id").set_index("user_id")
    assert first["n_view"] == [int(want.loc[u, "n_view"]) for u in users]
    assert all(len(_as_list(r)) > 0 for r in first["recent_items"])
    # the planted purchase is in the latest snapshot
    buyer = _online(store, [planted["buyer"]])
    assert buyer["n_purchase"] == [planted["base_purchases"] + 1]


def test_historical_features_are_point_in_time(applied, planted):
    store, _, _ = applied
    buyer, t = planted["buyer"], planted["t"]
    act = planted["tables"]["user_activity"]
    mine = act[act["user_id"] == buyer].sort_values("event_timestamp").reset_index(drop=True)
    # a snapshot followed by one with more views: a leak of the later one would show
    grows = mine.index[mine["n_view"].diff().shift(-1) > 0]
    assert len(grows) > 0
    mid = mine.loc[grows[0]]
    entity = pd.DataFrame({
        "user_id": [buyer] * 3,
        "event_timestamp": [mid["event_timestamp"] + pd.Timedelta(hours=1), t, t + pd.Timedelta(days=11)],
        "row": [0, 1, 2],
    })
    hist = store.get_historical_features(
        entity_df=entity, features=["user_activity_fv:n_view", "user_activity_fv:n_purchase"],
    ).to_df().sort_values("row").reset_index(drop=True)
    assert len(hist) == 3
    assert hist["row"].tolist() == [0, 1, 2]
    # between two snapshots: the earlier one's values, not the later ones
    assert hist.loc[0, "n_view"] == mid["n_view"]
    assert hist.loc[0, "n_purchase"] == mid["n_purchase"]
    # the purchase planted 10 days after t is invisible at t and visible after it
    assert hist.loc[1, "n_purchase"] == planted["base_purchases"]
    assert hist.loc[2, "n_purchase"] == planted["base_purchases"] + 1


def test_push_updates_the_online_recent_items(applied, planted):
    from feast.data_source import PushMode

    store, ws, _ = applied
    materialize(store, ws)
    user = planted["buyer"]
    new_items = ["i000001", "i000002", "i000003"]
    pushed = pd.DataFrame({
        "user_id": [user],
        "event_timestamp": [pd.Timestamp.now(tz="UTC")],
        "recent_items": [new_items],
        "recent_event_types": [["view", "click", "add_to_cart"]],
    })
    assert _as_list(_online(store, [user])["recent_items"][0]) != new_items
    store.push("user_recent_push", pushed, to=PushMode.ONLINE)
    got = _online(store, [user])
    assert _as_list(got["recent_items"][0]) == new_items
    assert _as_list(got["recent_event_types"][0]) == ["view", "click", "add_to_cart"]
    # the other view of the same user is untouched by the push
    assert got["n_purchase"] == [planted["base_purchases"] + 1]


def test_rebuilt_history_is_materialized_in_full(tmp_path, planted):
    """A re-import with older timestamps must reach the online store (Feast's own incremental
    window, from the last end, would skip it); unchanged tables are an incremental no-op."""
    ws = Workspace.at(tmp_path)
    _write_features(planted["tables"], ws.features_dir)
    store = open_store(ws)
    apply(store, ws)
    assert materialize(store, ws) == "full"
    assert materialize(store, ws) == "incremental"
    older = {name: df.assign(event_timestamp=df["event_timestamp"] - pd.Timedelta(days=12 * 365))
             for name, df in planted["tables"].items()}
    older["user_activity"]["n_view"] += 1000  # values only the new history has
    _write_features(older, ws.features_dir)
    assert materialize(store, ws) == "full"
    user = planted["buyer"]
    want = latest(older["user_activity"], "user_id").set_index("user_id").loc[user, "n_view"]
    assert _online(store, [user])["n_view"] == [want]


def test_an_interrupted_materialization_is_completed_by_the_next_run(tmp_path, planted, monkeypatch):
    ws = Workspace.at(tmp_path)
    _write_features(planted["tables"], ws.features_dir)
    store = open_store(ws)
    apply(store, ws)
    real = type(store).materialize

    def killed_after_one_view(self, start_date, end_date, feature_views=None, **kwargs):
        real(self, start_date, end_date, feature_views=["user_activity_fv"])
        raise KeyboardInterrupt("killed mid-way")

    monkeypatch.setattr(type(store), "materialize", killed_after_one_view)
    with pytest.raises(KeyboardInterrupt):
        materialize(store, ws)
    monkeypatch.undo()
    assert not (ws.feast_dir / "materialized.json").exists()  # nothing claims the run completed
    assert materialize(store, ws) == "full"
    users = sorted(latest(planted["tables"]["user_recent"], "user_id")["user_id"])[:10]
    want = latest(planted["tables"]["user_recent"], "user_id").set_index("user_id")
    got = _online(store, users)
    assert [list(r) for r in got["recent_items"]] == [list(want.loc[u, "recent_items"]) for u in users]


def test_redis_connections_fail_fast_and_take_a_read_timeout(tmp_path):
    """No redis-py retries with backoff; 2 s per command by default (jobs, pushes), or the given
    timeout (serving's request-path reads); SQLite has no timeout to set."""
    from feature_repo.store import online_store_config, online_store_file, open_store

    ws = Workspace(tmp_path)
    default = online_store_config(ws, "redis://10.0.0.5:6380/2")["connection_string"]
    assert default.startswith("10.0.0.5:6380,db=2,") and "retry=null" in default
    assert "socket_timeout=2.0" in default and "socket_connect_timeout=0.2" in default
    assert "socket_timeout=0.25" in online_store_config(ws, "redis://10.0.0.5:6380", 0.25)["connection_string"]
    assert online_store_config(ws, "sqlite", 0.25) == {"type": "sqlite", "path": str(ws.feast_dir / "online_store.db")}
    # The launcher asks the opened store whether it is the local file (one store for reads and pushes).
    ws.feast_dir.mkdir(parents=True, exist_ok=True)
    assert online_store_file(open_store(ws, "sqlite")) == ws.feast_dir / "online_store.db"
    assert online_store_file(open_store(ws, "redis://10.0.0.5:6380")) is None


def test_reads_are_not_locked_out_by_another_process_write(tmp_path, planted, monkeypatch):
    """After materialization the SQLite online store is in WAL mode: a read meets a write
    transaction that another connection holds open (an events push of another server process)
    and still gets the committed row at once. The same read in SQLite's rollback-journal mode
    waits for the lock: here for 100 ms, then 'database is locked' (a server's read waited up to
    the busy handler's 5 s, docs/benchmarks.md, thirty-second session)."""
    import sqlite3
    from contextlib import closing

    import feature_repo.store as store_module
    from feature_repo.online_read import OnlineRowReader

    ws = Workspace.at(tmp_path)
    _write_features(planted["tables"], ws.features_dir)
    store = open_store(ws)
    path = ws.feast_dir / "online_store.db"
    assert not path.exists()  # opening a store creates no empty file (materialize would trust it)
    apply(store, ws)
    materialize(store, ws)
    store._get_provider().online_store._get_conn(store.config).close()
    with closing(sqlite3.connect(path)) as probe:
        assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    user = planted["buyer"]

    def read_during_a_write() -> list:
        server = open_store(ws)  # a server process's store and reader
        conn = server._get_provider().online_store._get_conn(server.config)
        conn.execute("PRAGMA busy_timeout = 100")
        reader = OnlineRowReader(server, "ranking_user_v1", "user_id")
        want = reader.read(user)["recent_items"]
        assert want
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("BEGIN EXCLUSIVE")
        try:
            got = reader.read(user)["recent_items"]
            assert got == want
            return got
        finally:
            writer.execute("ROLLBACK")
            writer.close()
            conn.close()

    read_during_a_write()
    with closing(sqlite3.connect(path)) as other:  # the mode the store had before
        assert other.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    monkeypatch.setattr(store_module, "use_wal", lambda store: False)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        read_during_a_write()
