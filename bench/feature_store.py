"""Feast on the synthetic shop: materialization, online reads and point-in-time joins, sqlite vs Redis.

Builds the `default` preset's feature tables in a temp workspace (generate → validate →
features), then for each online store (sqlite in the workspace; a redis-server that this script
starts on a free loopback port and stops at the end):
- materialization: rows written (the latest snapshot per entity of each view) per second;
- online read of the `ranking_user_v1` feature service: 1 user per call (after a warm-up) and
  100 users per call, p50/p99;
then `get_historical_features` (duckdb offline store) for 100k and 1M entity rows over the same
service's views, each in a child process with a time limit, so that a time-out or an
out-of-memory kill is reported instead of taking the benchmark down. Medians are what to
quote: these machines are noisy.

    .venv/bin/python bench/feature_store.py
    .venv/bin/python bench/feature_store.py --entity-rows 100000 --reads 200   # quicker
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

SERVICE = "ranking_user_v1"


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "n": len(ms)}


# --- a redis-server of our own (like tests/feature_repo/conftest.py: no system service) -------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: Path) -> tuple[subprocess.Popen, int]:
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on PATH: `apt-get install redis-server` (no service needed; "
                 "this script starts its own on a free loopback port)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if client.ping():
                return proc, port
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    stop_redis(proc)
    sys.exit(f"redis-server did not answer PING on 127.0.0.1:{port}; see {workdir / 'redis.log'}")


def stop_redis(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the measurements --------------------------------------------------------------------------------

def build_workspace(root: Path, preset: str, seed: int) -> dict[str, float]:
    from feature_repo.workspace import Workspace
    from shoprec import pipeline

    ws, took = Workspace.at(root), {}
    for step, fn in (("generate", lambda: pipeline.generate(ws, preset, seed)), ("validate", lambda: pipeline.validate(ws)),
                     ("features", lambda: pipeline.build_features(ws))):
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            fn()
        took[f"{step}_s"] = round(time.perf_counter() - t, 2)
    return took


def workspace_for(store_name: str, base: Path) -> "object":
    """A workspace of its own per store: Feast records materialization progress in the registry."""
    from feature_repo.workspace import Workspace

    ws = Workspace.at(base.parent / f"ws_{store_name}")
    for f in (base / "features").glob("*.parquet"):
        shutil.copy2(f, ws.features_dir / f.name)
    return ws


def materialization(ws, online_store: str) -> tuple[object, dict]:
    from feature_repo import store as feast_store

    store = feast_store.open_store(ws, online_store)
    t = time.perf_counter()
    feast_store.apply(store, ws)
    apply_s = time.perf_counter() - t
    rows = {}
    for fv in store.list_feature_views():
        key = fv.join_keys[0] if hasattr(fv, "join_keys") else fv.entity_columns[0].name
        path = fv.batch_source.path
        rows[fv.name] = int(pd.read_parquet(path, columns=[key])[key].nunique())
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # Feast prints its progress to stdout
        feast_store.materialize(store, ws)
    seconds = time.perf_counter() - t
    total = sum(rows.values())
    return store, {"apply_s": round(apply_s, 2), "rows": total, "rows_per_view": rows,
                   "materialize_s": round(seconds, 2), "rows_per_s": round(total / seconds)}


def online_reads(store, users: list[str], n: int, batch: int, seed: int) -> dict[str, dict]:
    service = store.get_feature_service(SERVICE)
    rng = np.random.default_rng(seed)

    def read(ids: list[str]) -> dict:
        return store.get_online_features(features=service, entity_rows=[{"user_id": u} for u in ids]).to_dict()

    for i in range(50):  # the first reads are slow (connections, registry, protobuf classes)
        read([users[i % len(users)]])
    got = read(users[:5])
    assert any(v is not None for v in got["n_view"]), "the online store is empty: materialization wrote nothing"
    one = []
    for u in rng.choice(users, size=n):
        t = time.perf_counter()
        read([str(u)])
        one.append(time.perf_counter() - t)
    many = []
    for _ in range(max(20, n // 10)):
        ids = [str(u) for u in rng.choice(users, size=batch, replace=False)]
        t = time.perf_counter()
        read(ids)
        many.append(time.perf_counter() - t)
    return {"1_user": percentiles(one), f"{batch}_users": percentiles(many)}


def historical_child(root: Path, n: int, seed: int) -> None:
    """Child process: one point-in-time join of ``n`` entity rows; prints one JSON line."""
    from feature_repo.store import open_store
    from feature_repo.workspace import Workspace

    ws = Workspace.at(root)
    store = open_store(ws, "sqlite")
    act = pd.read_parquet(ws.features_dir / "user_activity.parquet", columns=["user_id", "event_timestamp"])
    users = act["user_id"].unique()
    lo, hi = act["event_timestamp"].min(), act["event_timestamp"].max() + pd.Timedelta(days=1)
    rng = np.random.default_rng(seed)
    entity = pd.DataFrame({
        "user_id": rng.choice(users, size=n),
        "event_timestamp": lo + pd.to_timedelta(rng.integers(0, int((hi - lo).total_seconds()), size=n), unit="s"),
    })
    service = store.get_feature_service(SERVICE)
    t = time.perf_counter()
    df = store.get_historical_features(entity_df=entity, features=service).to_df()
    seconds = time.perf_counter() - t
    feature_cols = [c for c in df.columns if c not in ("user_id", "event_timestamp")]
    print(json.dumps({"entity_rows": n, "rows_out": len(df), "features": len(feature_cols), "seconds": round(seconds, 2),
                      "rows_per_s": round(n / seconds), "null_rate": round(float(df[feature_cols].isna().mean().mean()), 4),
                      "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))


def historical(root: Path, n: int, seed: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--historical-child", str(n), "--child-workspace", str(root), "--seed", str(seed)]
    t = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"entity_rows": n, "status": f"did not finish within {timeout:.0f} s (killed)"}
    wall = round(time.perf_counter() - t, 1)
    if done.returncode != 0:
        status = "killed by SIGKILL (out of memory?)" if done.returncode == -9 else f"exit {done.returncode}"
        return {"entity_rows": n, "status": status, "wall_s": wall, "stderr_tail": done.stderr[-2000:]}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "status": "ok", "child_wall_s": wall}


def main() -> None:
    from shoprec.table import render

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reads", type=int, default=1000, help="single-user online reads per store")
    p.add_argument("--batch", type=int, default=100, help="users per call in the batched online read")
    p.add_argument("--entity-rows", default="100000,1000000", help="entity-row counts for get_historical_features")
    p.add_argument("--historical-timeout", type=float, default=600, help="seconds per historical run")
    p.add_argument("--historical-child", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--child-workspace", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.historical_child:
        historical_child(Path(args.child_workspace), args.historical_child, args.seed)
        return

    load_at_start = [round(x, 2) for x in os.getloadavg()]  # other work on the machine skews the numbers
    tmp = Path(tempfile.mkdtemp(prefix="bench_feature_store_"))
    redis_proc = None
    try:
        build = build_workspace(tmp / "base", args.preset, args.seed)
        users = sorted(pd.read_parquet(tmp / "base" / "features" / "user_activity.parquet", columns=["user_id"])
                       ["user_id"].unique())
        (tmp / "redis").mkdir()
        redis_proc, port = start_redis(tmp / "redis")
        stores = {"sqlite": "sqlite", "redis": f"redis://127.0.0.1:{port}/0"}
        mat, reads = {}, {}
        for name, url in stores.items():
            ws = workspace_for(name, tmp / "base")
            store, mat[name] = materialization(ws, url)
            reads[name] = online_reads(store, users, args.reads, args.batch, args.seed)
        import redis

        mat["redis"]["redis_used_memory_mib"] = round(
            redis.Redis(host="127.0.0.1", port=port).info("memory")["used_memory"] / 2**20, 1)
        stop_redis(redis_proc)
        redis_proc = None
        hist = [historical(tmp / "ws_sqlite", int(n), args.seed, args.historical_timeout)
                for n in args.entity_rows.split(",")]
    finally:
        if redis_proc is not None:
            stop_redis(redis_proc)
        shutil.rmtree(tmp, ignore_errors=True)

    ratios = {
        "materialize_rows_per_s": round(mat["redis"]["rows_per_s"] / mat["sqlite"]["rows_per_s"], 2),
        **{f"read_{k}_p50": round(reads["redis"][k]["p50_ms"] / reads["sqlite"][k]["p50_ms"], 2) for k in reads["redis"]},
        **{f"read_{k}_p99": round(reads["redis"][k]["p99_ms"] / reads["sqlite"][k]["p99_ms"], 2) for k in reads["redis"]},
    }
    import feast
    import redis

    machine = {"cpus": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
               "machine": platform.machine(), "python": platform.python_version(), "feast": feast.__version__,
               "redis_py": redis.__version__,
               "redis_server": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2],
               "preset": args.preset, "users": len(users), "loadavg_at_start": load_at_start,
               "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps({"machine": machine, "build": build, "materialization": mat, "online_reads": reads,
                      "historical": hist, "redis_vs_sqlite": ratios}, indent=2))
    print()
    print(render([{"store": s, "rows": m["rows"], "apply_s": m["apply_s"], "materialize_s": m["materialize_s"],
                   "rows_per_s": m["rows_per_s"]} for s, m in mat.items()]))
    print()
    print(render([{"store": s, "read": k, **v} for s, r in reads.items() for k, v in r.items()]))
    print()
    print(render([{k: v for k, v in h.items() if k != "stderr_tail"} for h in hist]))
    print()
    print(render([{"redis / sqlite": k, "ratio": v} for k, v in ratios.items()]))


if __name__ == "__main__":
    main()
