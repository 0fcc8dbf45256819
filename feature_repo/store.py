"""The Feast feature store of a workspace: config in code, apply, materialize, summaries.

The checked-in feature_store.yaml serves `feast` CLI users in this folder; shoprec's jobs build
the equivalent RepoConfig here so that any workspace (a test's temp dir) gets its own registry
and online store.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from feature_repo.errors import ConfigError
from feature_repo.workspace import Workspace

log = logging.getLogger(__name__)
FEATURE_TABLES = ("user_activity", "user_recent", "item_stats")
PROJECT = "shoprec"


def _quiet_feast() -> None:
    # Feast logs every apply/materialize at INFO and warns about preview features; our jobs
    # print their own progress.
    logging.getLogger("feast").setLevel(logging.WARNING)
    # ibis 12 + duckdb 2 deprecation noise on every offline query; not ours to fix.
    warnings.filterwarnings("ignore", message=r"fetch_arrow_table\(\) is deprecated", category=DeprecationWarning)


ONLINE_STORE_ENV = "SHOPREC_ONLINE_STORE"
# No retries with backoff, and timeouts: redis-py's defaults retry and wait without limit.
REDIS_CONNECT_TIMEOUT = 0.2
REDIS_SOCKET_TIMEOUT = 2.0  # jobs and event pushes; serving's request-path reads use a shorter one
MARKER_KEY = "shoprec:materialized"  # written into Redis after a successful materialization


def online_store_config(ws: Workspace, online_store: str | dict[str, Any] | None = None,
                        socket_timeout: float | None = None) -> dict[str, Any]:
    """The Feast online store config from a URL, a Feast config dict, or $SHOPREC_ONLINE_STORE.

    ``sqlite`` (the default) is a file in the workspace; ``redis://HOST:PORT[/DB]`` is Feast's
    redis store (production). A dict is passed to Feast unchanged. ``socket_timeout``: seconds a
    Redis command may wait for its answer (default ``REDIS_SOCKET_TIMEOUT``); SQLite has none.
    """
    if isinstance(online_store, dict):
        return online_store
    url = online_store or os.environ.get(ONLINE_STORE_ENV) or "sqlite"
    if url == "sqlite":
        return {"type": "sqlite", "path": str(ws.feast_dir / "online_store.db")}
    if url.startswith("redis://"):
        hostport, _, db = url[len("redis://"):].partition("/")
        host, _, port = hostport.partition(":")
        if not host or not port.isdigit() or (db and not db.isdigit()):
            raise ConfigError(f"online store {url!r}: expected redis://HOST:PORT[/DB], e.g. redis://127.0.0.1:6379/0")
        # Fail fast instead of redis-py's default retries with backoff and no socket timeouts:
        # an unreachable store must cost a request milliseconds, not seconds (serving degrades).
        timeout = REDIS_SOCKET_TIMEOUT if socket_timeout is None else socket_timeout
        conn = (f"{host}:{port}" + (f",db={db}" if db else "") +
                f",retry=null,socket_connect_timeout={REDIS_CONNECT_TIMEOUT},socket_timeout={timeout}")
        return {"type": "redis", "connection_string": conn}
    raise ConfigError(f"online store {url!r} (from --online-store or ${ONLINE_STORE_ENV}) is not supported; "
                      f"use 'sqlite' or 'redis://HOST:PORT[/DB]'.")


def online_store_file(store) -> Path | None:
    """An opened store's SQLite file (local: no network, so no read timeout; requests read it a
    few pages at a time); None for any other online store."""
    config = getattr(getattr(store, "config", None), "online_store", None)
    path = getattr(config, "path", None)
    return Path(path) if getattr(config, "type", "") == "sqlite" and path else None


def open_store(ws: Workspace, online_store: str | dict[str, Any] | None = None, socket_timeout: float | None = None):
    """A FeatureStore for the workspace (nothing is applied or materialized here);
    ``socket_timeout``: see ``online_store_config``."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    _quiet_feast()  # after the import: feast installs its own warning filters when imported

    config = RepoConfig(
        project=PROJECT,
        provider="local",
        registry=str(ws.feast_dir / "registry.db"),
        online_store=online_store_config(ws, online_store, socket_timeout),
        offline_store={"type": "duckdb"},
        entity_key_serialization_version=3,
        repo_path=str(ws.feast_dir),
    )
    store = FeatureStore(repo_path=str(ws.feast_dir), config=config)
    use_wal(store)
    return store


def use_wal(store) -> None:
    """Put an existing SQLite online store in write-ahead-log mode.

    Several server processes read the file while RecordEvents pushes write it. In SQLite's
    default (rollback-journal) mode a commit locks readers of other processes out, and a read
    that meets the lock retries with sleeps of 1 to 100 ms (Python's busy handler): with pushes
    in one process, another's reads took 1.4 ms at p99 instead of 0.3, and up to 332 ms once,
    on a server's event loop (docs/benchmarks.md, thirty-second session). In WAL mode readers
    and the writer do not block each other. The mode is stored in the file, so this is a no-op
    after the first time. A store file that does not exist yet is left alone (opening it would
    create an empty one, which materialization would then take for a filled store), and one
    that is locked for longer than SQLite's busy timeout stays as it is, with a log line."""
    path = online_store_file(store)
    if path is None or not path.exists():
        return
    import sqlite3

    conn = store._get_provider().online_store._get_conn(store.config)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as e:  # e.g. locked by a long write: reads still work, only slower
        log.warning("online store %s stays in its journal mode (%s); readers may wait for writers", path, e)


def apply(store, ws: Workspace) -> list[str]:
    """Register every declaration of definitions.py over the workspace's feature files."""
    from feature_repo.definitions import declarations

    for name in FEATURE_TABLES:
        ws.require(ws.features_dir / f"{name}.parquet", "features")
    objects = declarations(ws.features_dir)
    store.apply(list(objects.values()))
    return sorted(objects)


def _fingerprint(ws: Workspace, online_store: dict[str, Any]) -> dict[str, Any]:
    tables = {}
    for name in FEATURE_TABLES:
        stat = ws.require(ws.features_dir / f"{name}.parquet", "features").stat()
        tables[name] = [stat.st_size, stat.st_mtime_ns]
    return {"online_store": online_store, "tables": tables}


def materialize(store, ws: Workspace, end: datetime | None = None) -> str:
    """Bring the online store up to date; returns "full" or "incremental".

    When the feature tables or the online store differ from the last successful run (a rebuilt
    or re-imported history, a new store), every view is materialized over the tables' whole
    time range: Feast keeps the latest row per entity, so that is the consistent state, and
    Feast's own incremental window (from the last end, or now - TTL) would miss older data.
    Otherwise only the time since the last run is materialized, which is a no-op when nothing
    new arrived. The state is recorded after success only, so an interrupted run is simply
    redone in full by the next one.
    """
    end = end or datetime.now(timezone.utc)
    state_file = ws.feast_dir / "materialized.json"
    current = _fingerprint(ws, store.config.online_store.model_dump(mode="json"))
    previous = json.loads(state_file.read_text()) if state_file.exists() else None
    if previous != current or not _store_holds_data(store):
        start = min(pd.read_parquet(ws.features_dir / f"{name}.parquet", columns=["event_timestamp"])
                    ["event_timestamp"].min() for name in FEATURE_TABLES)
        store.materialize(start_date=start.to_pydatetime(), end_date=end)
        mode = "full"
    else:
        store.materialize_incremental(end_date=end)
        mode = "incremental"
    _mark_store(store)
    use_wal(store)  # a store file this run created
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(current, indent=2))
    tmp.replace(state_file)
    return mode


def _redis_client(store):
    import redis

    host_port, *options = store.config.online_store.connection_string.split(",")
    host, _, port = host_port.partition(":")
    db = next((int(o.split("=", 1)[1]) for o in options if o.startswith("db=")), 0)
    return redis.Redis(host=host, port=int(port), db=db, socket_connect_timeout=2, socket_timeout=5)


def _store_holds_data(store) -> bool:
    """False when the online store lost what we wrote (a flushed or restarted Redis, a deleted
    sqlite file): the workspace state alone would then make the run a silent no-op."""
    cfg = store.config.online_store
    if cfg.type == "redis":
        return bool(_redis_client(store).exists(MARKER_KEY))
    if cfg.type == "sqlite":
        return Path(cfg.path).exists()
    return True


def _mark_store(store) -> None:
    if store.config.online_store.type == "redis":
        _redis_client(store).set(MARKER_KEY, datetime.now(timezone.utc).isoformat())


def feature_summary(ws: Workspace) -> pd.DataFrame:
    """Rows, entities, time range and the worst null rate of each feature table."""
    rows = []
    for name in FEATURE_TABLES:
        df = pd.read_parquet(ws.require(ws.features_dir / f"{name}.parquet", "features"))
        key = "item_id" if name.startswith("item") else "user_id"
        nulls = df.drop(columns=[key, "event_timestamp"]).isna().mean()
        rows.append({
            "table": name, "rows": len(df), "entities": df[key].nunique(),
            "from": df["event_timestamp"].min().strftime("%Y-%m-%d"),
            "to": df["event_timestamp"].max().strftime("%Y-%m-%d"),
            "max_null_rate": round(float(nulls.max()) if len(nulls) else 0.0, 4),
        })
    return pd.DataFrame(rows)
