"""Redis as the online store, for real: Feast's redis store against a redis-server of the session.

The tiny synthetic shop's feature tables are applied and materialized into Redis and, as the
reference, into sqlite from the same tables; reads go through the `ranking_user_v1` feature
service (what serving reads), so columns added to the views are covered without editing here.
Each group of tests uses its own Redis database number, so they do not depend on their order.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_repo.data.features import build_all, latest
from feature_repo.data.synthetic import generate
from feature_repo.data.validation import validate
from feature_repo.online_read import OnlineRowReader
from feature_repo.store import FEATURE_TABLES, MARKER_KEY, ONLINE_STORE_ENV, apply, materialize, open_store
from feature_repo.workspace import Workspace

NOW = pd.Timestamp("2026-11-01", tz="UTC")
SERVICE = "ranking_user_v1"
# Redis database numbers: one per group of tests (the fixture's URL names db 0).
DB_MAIN, DB_CLI, DB_EMPTY, DB_REFILL, DB_PUSH = 0, 1, 2, 3, 4


def _db(redis_url: str, db: int) -> str:
    return f"{redis_url.rsplit('/', 1)[0]}/{db}"


def _redis_client(url: str):
    import redis

    return redis.Redis.from_url(url)


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    shop = generate("tiny", seed=0)
    report = validate(shop.events, shop.items, shop.users, now=NOW)
    assert len(report.tables["events"]) > 0
    return build_all(report.tables["events"], report.tables["items"])


def _workspace(root: Path, tables: dict[str, pd.DataFrame]) -> Workspace:
    ws = Workspace.at(root)
    for name, df in tables.items():
        df.to_parquet(ws.features_dir / f"{name}.parquet", index=False)
    assert {p.stem for p in ws.features_dir.glob("*.parquet")} == set(FEATURE_TABLES)
    return ws


def _materialized(ws: Workspace, online_store: str):
    store = open_store(ws, online_store)
    apply(store, ws)
    materialize(store, ws)
    return store


@pytest.fixture(scope="module")
def users(tables) -> list[str]:
    return sorted(latest(tables["user_activity"], "user_id")["user_id"])


@pytest.fixture(scope="module")
def redis_ws(tmp_path_factory, tables) -> Workspace:
    return _workspace(tmp_path_factory.mktemp("redis_ws"), tables)


@pytest.fixture(scope="module")
def redis_store(redis_ws, redis_url):
    _redis_client(_db(redis_url, DB_MAIN)).flushdb()
    return _materialized(redis_ws, _db(redis_url, DB_MAIN))


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory, tables):
    return _materialized(_workspace(tmp_path_factory.mktemp("sqlite_ws"), tables), "sqlite")


def _plain(v):
    """A value as plain Python, so that answers and tables compare with ==; NaN is None, as Feast
    stores a NaN as a missing value."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _read(store, user_ids: list[str]) -> dict[str, list]:
    """One online read of the users through the feature service, as serving does it."""
    got = store.get_online_features(features=store.get_feature_service(SERVICE),
                                    entity_rows=[{"user_id": u} for u in user_ids]).to_dict()
    return {k: [_plain(v) for v in vals] for k, vals in got.items()}


def _expected(store, tables: dict[str, pd.DataFrame], user_ids: list[str]) -> dict[str, list]:
    """The oracle: each feature of the service from the latest snapshot of its view's table."""
    out: dict[str, list] = {"user_id": list(user_ids)}
    for proj in store.get_feature_service(SERVICE).feature_view_projections:
        table = Path(store.get_feature_view(proj.name).batch_source.path).stem
        snap = latest(tables[table], "user_id").set_index("user_id")
        for field in proj.features:
            out[field.name] = [_plain(snap.at[u, field.name]) if u in snap.index else None for u in user_ids]
    return out


def test_redis_online_read_matches_sqlite_and_the_tables(redis_store, sqlite_store, tables, users):
    ids = users + ["nobody-at-all"]
    from_redis, from_sqlite = _read(redis_store, ids), _read(sqlite_store, ids)
    assert from_redis == from_sqlite
    want = _expected(redis_store, tables, ids)
    assert set(from_redis) == set(want)
    assert from_redis == want
    assert {"n_view", "recent_items"} <= set(from_redis)  # both views of the service are read
    assert all(len(r) > 0 for r in from_redis["recent_items"][:-1])
    # an unknown user is a row of missing values, not an error
    assert all(from_redis[k][-1] is None for k in from_redis if k != "user_id")


def _lean_read(store, user_ids: list[str]) -> dict[str, list]:
    """The same users through serving's reader (OnlineRowReader), in the SDK's column layout."""
    reader = OnlineRowReader(store, SERVICE, "user_id")
    rows = [reader.read(u) for u in user_ids]
    return {"user_id": list(user_ids), **{n: [_plain(r[n]) for r in rows] for n in reader.feature_names}}


@pytest.mark.parametrize("which", ["redis", "sqlite"])
def test_serving_reader_equals_the_sdk_read(which, redis_store, sqlite_store, users):
    store = redis_store if which == "redis" else sqlite_store
    ids = users[:40] + ["nobody-at-all"]
    lean = _lean_read(store, ids)
    assert lean == _read(store, ids)
    assert lean["recent_items"][0] and lean["n_view"][-1] is None  # real rows, and the unknown user's
    # A batch of requests reads all its users at once: the same rows, in the order asked,
    # duplicates and the unknown user included.
    reader = OnlineRowReader(store, SERVICE, "user_id")
    mixed = [ids[3], "nobody-at-all", ids[0], ids[3]]
    assert reader.read_many(mixed) == [reader.read(u) for u in mixed]
    assert reader.read_many(mixed)[0]["recent_items"] and reader.read_many([]) == []


@pytest.mark.parametrize("which", ["redis", "sqlite"])
def test_serving_reader_answers_the_same_on_every_call(which, redis_store, sqlite_store, users):
    # A server reads with one reader for its whole life: the 300th read must be the first one's
    # equal, with exactly the reader's features (Feast's Redis store appends a timestamp field
    # to the feature list it is given; the reader must not hand it its own).
    store = redis_store if which == "redis" else sqlite_store
    reader = OnlineRowReader(store, SERVICE, "user_id")
    planned = [list(names) for _, names in reader.tables]
    first = reader.read(users[0])
    for _ in range(300):
        last = reader.read(users[0])
    assert last == first and list(last) == reader.feature_names
    assert [names for _, names in reader.tables] == planned


def test_materialize_twice_is_idempotent(redis_store, redis_ws, redis_url, tables, users):
    client = _redis_client(_db(redis_url, DB_MAIN))
    before_keys, before = client.dbsize(), _read(redis_store, users)
    # one Redis hash per entity key (all views of an entity share it)
    # one key per entity, plus the marker that says this Redis holds a complete materialization
    assert before_keys == len(users) + tables["item_stats"]["item_id"].nunique() + 1
    assert client.exists(MARKER_KEY)
    intervals = {fv.name: len(fv.materialization_intervals) for fv in redis_store.list_feature_views()}
    materialize(redis_store, redis_ws)  # continues from the previous end: nothing new, no error
    assert client.dbsize() == before_keys
    assert _read(redis_store, users) == before
    after = {fv.name: len(fv.materialization_intervals) for fv in redis_store.list_feature_views()}
    assert after == {name: n + 1 for name, n in intervals.items()}  # the second run was recorded


@pytest.fixture(scope="module")
def push_stores(tmp_path_factory, tables, redis_url):
    """Redis and sqlite stores of their own, since pushes change what the other tests read."""
    url = _db(redis_url, DB_PUSH)
    _redis_client(url).flushdb()
    redis_store = _materialized(_workspace(tmp_path_factory.mktemp("push_redis"), tables), url)
    sqlite_store = _materialized(_workspace(tmp_path_factory.mktemp("push_sqlite"), tables), "sqlite")
    return redis_store, sqlite_store


def _recent(user: str, ts: pd.Timestamp, items: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [user], "event_timestamp": [ts], "recent_items": [items],
                         "recent_event_types": [["view"] * len(items)]})


def test_push_is_visible_in_the_next_online_read(push_stores, tables, users):
    from feast.data_source import PushMode

    store, _ = push_stores
    user = users[0]
    before = _read(store, [user])
    new_items = ["i000001", "i000002", "i000003"]
    assert before["recent_items"] != [new_items]
    store.push("user_recent_push", _recent(user, pd.Timestamp.now(tz="UTC"), new_items), to=PushMode.ONLINE)
    got = _read(store, [user])
    assert got["recent_items"] == [new_items]
    assert _lean_read(store, [user]) == got  # serving's reader sees the push as well
    assert got["recent_event_types"] == [["view"] * 3]
    # the user's other view is untouched by the push
    others = [k for k in got if k not in ("user_id", "recent_items", "recent_event_types")]
    assert others and all(got[k] == before[k] for k in others)


def test_the_sqlite_reader_makes_one_query_per_read_and_sees_a_push(push_stores, users):
    """On Feast's SQLite store serving's reader asks the store's own connection once per read
    (both views in one SELECT); a push through Feast is in the next read of the same reader."""
    from feast.data_source import PushMode

    redis_store, store = push_stores
    assert OnlineRowReader(redis_store, SERVICE, "user_id")._sqlite_query is None  # Redis: online_read
    reader = OnlineRowReader(store, SERVICE, "user_id")
    user = users[5]
    before = reader.read(user)
    statements: list[str] = []
    conn = store._get_provider().online_store._get_conn(store.config)
    conn.set_trace_callback(statements.append)
    try:
        assert reader.read_many([user, "nobody-at-all", users[6]])[0] == before
    finally:
        conn.set_trace_callback(None)
    assert len(statements) == 1 and statements[0].count("UNION ALL") == len(reader.tables) - 1
    many = [users[i % len(users)] for i in range(1203)] + ["nobody-at-all"]  # more keys than one query binds
    statements.clear()
    conn.set_trace_callback(statements.append)
    try:
        rows = reader.read_many(many)
    finally:
        conn.set_trace_callback(None)
    assert len(statements) == 3 and rows[5] == reader.read(many[5]) and rows[-1]["n_view"] is None
    new_items = ["i000004", "i000005"]
    assert before["recent_items"] != new_items
    store.push("user_recent_push", _recent(user, pd.Timestamp.now(tz="UTC"), new_items), to=PushMode.ONLINE)
    after = reader.read(user)
    assert after["recent_items"] == new_items and after["recent_event_types"] == ["view", "view"]
    assert {k: v for k, v in after.items() if not k.startswith("recent_")} == \
        {k: v for k, v in before.items() if not k.startswith("recent_")}


def test_the_sqlite_reader_shares_only_immutable_values_and_bounds_what_it_remembers(sqlite_store, users,
                                                                                       monkeypatch):
    """Parsed scalars are remembered by their bytes (a bounded dict); lists are parsed per read,
    so a caller that edits its row cannot change another read's."""
    import feature_repo.online_read as online_read

    monkeypatch.setattr(online_read, "_KNOWN_SCALARS", 8)
    reader = OnlineRowReader(sqlite_store, SERVICE, "user_id")
    first = reader.read(users[0])
    first["recent_items"].append("edited-by-the-caller")
    again = reader.read(users[0])
    assert "edited-by-the-caller" not in again["recent_items"]
    assert {k: v for k, v in again.items() if k != "recent_items"} == \
        {k: v for k, v in first.items() if k != "recent_items"}
    ids = users[:30]
    assert _lean_read(sqlite_store, ids) == _read(sqlite_store, ids)  # correct through many clears
    for u in ids:
        reader.read(u)
        assert len(reader._scalars) <= 8
    assert not any(isinstance(v, list) for v in reader._scalars.values())


def test_events_fold_into_redis_as_into_sqlite(push_stores, users):
    """Serving's event path (read, fold, push through OnlinePusher) gives the same row on both stores."""
    from feature_repo.realtime import apply_events

    user = users[2]
    before = _read(push_stores[0], [user])
    events = pd.DataFrame([{"user_id": user, "item_id": "i000030", "event_type": "purchase", "price": 5.0,
                            "timestamp": pd.Timestamp.now(tz="UTC")}])
    for store in push_stores:
        apply_events(store, events)
    redis_store, sqlite_store = push_stores
    got = _read(redis_store, [user])
    assert got == _read(sqlite_store, [user])
    assert got["recent_items"][0][-1] == "i000030" and got["n_purchase"][0] == before["n_purchase"][0] + 1


def test_a_push_older_than_the_stored_row_is_dropped_by_redis_but_not_by_sqlite(push_stores, users):
    """Feast's redis store keeps the newest event_timestamp per entity and view (an older or
    equal one is skipped silently); sqlite overwrites whatever came last. Serving must stamp
    pushes so that the newest sequence also has the newest timestamp."""
    from feast.data_source import PushMode

    newer, older = ["i000010", "i000011"], ["i000020", "i000021"]
    t = pd.Timestamp.now(tz="UTC")
    user = users[1]
    for store in push_stores:
        store.push("user_recent_push", _recent(user, t, newer), to=PushMode.ONLINE)
        store.push("user_recent_push", _recent(user, t - pd.Timedelta(hours=1), older), to=PushMode.ONLINE)
    redis_store, sqlite_store = push_stores
    assert _read(redis_store, [user])["recent_items"] == [newer]
    assert _read(sqlite_store, [user])["recent_items"] == [older]


def test_cli_materializes_into_redis(tmp_path, tables, users, redis_url, capsys, monkeypatch):
    from shoprec.cli import main

    monkeypatch.setenv(ONLINE_STORE_ENV, "sqlite")  # main() sets it for its process: restore it after
    url = _db(redis_url, DB_CLI)
    client = _redis_client(url)
    client.flushdb()
    ws = _workspace(tmp_path / "ws", tables)
    assert main(["--workspace", str(ws.root), "--online-store", url, "materialize"]) == 0
    assert '"online_store": "redis"' in capsys.readouterr().out
    assert not (ws.feast_dir / "online_store.db").exists()  # nothing went to the sqlite default
    assert client.dbsize() > 0
    store = open_store(ws, url)
    some = users[:: max(1, len(users) // 50)]
    assert _read(store, some) == _expected(store, tables, some)


def test_an_empty_redis_reads_as_missing_features_not_as_an_error(redis_ws, redis_store, redis_url, users):
    """After FLUSHALL (or a restart without persistence) reads succeed with nothing in them:
    serving then treats every user as a cold start, and does not report `degraded`."""
    url = _db(redis_url, DB_EMPTY)
    _redis_client(url).flushdb()  # FLUSHALL on this database only: the others belong to other tests
    got = _read(open_store(redis_ws, url), users[:10])
    assert got["user_id"] == users[:10]
    assert all(v is None for k, vals in got.items() if k != "user_id" for v in vals)


def test_materialize_fills_a_new_redis_and_refills_a_flushed_one(tmp_path, tables, users, redis_url):
    """Moving a workspace to Redis, and Redis losing its data (FLUSHALL, a restart without
    persistence): the next `materialize` must bring the features back."""
    ws = _workspace(tmp_path / "ws", tables)
    _materialized(ws, "sqlite")  # the workspace's first home
    url = _db(redis_url, DB_REFILL)
    client = _redis_client(url)
    client.flushdb()
    store = open_store(ws, url)
    materialize(store, ws)
    some = users[:10]
    want = _expected(store, tables, some)
    assert _read(store, some) == want
    keys = client.dbsize()
    client.flushdb()  # what FLUSHALL does to this database
    materialize(store, ws)
    # The marker key is gone with the data, so this run is a full one, not a silent no-op.
    assert client.dbsize() == keys
    assert _read(store, some) == want


@pytest.mark.slow
def test_an_unreachable_redis_raises_on_read(redis_ws, redis_store, free_tcp_port):
    """What serving.recommender turns into `degraded`: the read must raise, not return empties."""
    import redis

    store = open_store(redis_ws, f"redis://127.0.0.1:{free_tcp_port}/0")  # nothing listens there
    service = store.get_feature_service(SERVICE)
    start = time.perf_counter()
    with pytest.raises(redis.exceptions.ConnectionError, match="onnect"):
        store.get_online_features(features=service, entity_rows=[{"user_id": "u000001"}]).to_dict()
    took = time.perf_counter() - start
    # No retries with backoff and short timeouts (store.online_store_config): a refused
    # connection must fail within a request's budget so that serving can degrade.
    assert took < 1.0, f"took {took:.1f} s to fail"
