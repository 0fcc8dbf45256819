"""CPU of RecordEvents' write path: validate, read the user's online row, fold, push (in process).

One event per call, for new users (``bench-event-<n>``) so that every call writes, as serving
does for each RecordEvents call. It WRITES to the workspace's online store: use a copy.

    cp -r var /tmp/ws && .venv/bin/python bench/event_cpu.py --workspace /tmp/ws
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", required=True, help="a COPY of a trained workspace (its online store is written)")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    args = p.parse_args()

    from feature_repo.data.item_table import ItemTable
    from feature_repo.store import open_store
    from feature_repo.workspace import Workspace
    from serving.events import record_events
    from serving.proto import recommender_pb2 as pb

    ws = Workspace.at(Path(args.workspace))
    store, items = open_store(ws), ItemTable.load(ws.features_dir)
    ids = [str(i) for i in items.item_ids[: args.calls + args.warmup]]
    run = f"{time.time():.0f}"
    cpu, wall = [], []
    for n, item in enumerate(ids):
        event = pb.Event(user_id=f"bench-event-{run}-{n}", item_id=item, event_type="view")
        t, c = time.perf_counter(), time.process_time()
        assert record_events(store, [event], items.position)[0].accepted
        if n >= args.warmup:
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    cpu.sort()
    wall.sort()
    out = {"calls": len(cpu), "cpu_ms_median": round(cpu[len(cpu) // 2] * 1000, 2),
           "wall_ms_median": round(wall[len(wall) // 2] * 1000, 2),
           "wall_ms_p99": round(wall[int(len(wall) * 0.99)] * 1000, 2), "online_store": store.config.online_store.type}
    print(json.dumps(out, indent=2))
    print("\n".join(f"{k:15s} {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
