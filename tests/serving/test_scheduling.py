"""Helper threads under SCHED_BATCH (serving.server.batch_scheduling): the thread that answers
requests keeps the normal policy, every other one of ours and gRPC's stops preempting it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux-only")
ROOT = Path(__file__).resolve().parents[2]

# In a child process: batch_scheduling changes this process's threads, which pytest's must not be.
_SCRIPT = r"""
import json, os, threading
from serving.server import batch_scheduling

ids, go, stop = {}, threading.Event(), threading.Event()
def child():
    ids["child"] = threading.get_native_id()
    stop.wait()
def kept():
    ids["kept"] = threading.get_native_id()
    stop.wait()
def helper():  # after the change it starts a thread of its own, which inherits its policy
    ids["helper"] = threading.get_native_id()
    go.wait()
    threading.Thread(target=child).start()
    stop.wait()
for target in (kept, helper):
    threading.Thread(target=target).start()
while len(ids) < 2:
    pass
changed = batch_scheduling({threading.get_native_id(), ids["kept"]})
go.set()
while "child" not in ids:
    pass
name = {os.SCHED_OTHER: "other", os.SCHED_BATCH: "batch"}
print(json.dumps({"changed": changed, **{k: name.get(os.sched_getscheduler(v), "?") for k, v in ids.items()},
                  "main": name.get(os.sched_getscheduler(threading.get_native_id()), "?")}))
stop.set()
"""


def test_batch_scheduling_demotes_every_thread_but_the_kept_ones():
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["changed"] >= 1
    assert (got["main"], got["kept"]) == ("other", "other")
    assert got["helper"] == "batch"
    assert got["child"] == "batch"  # a thread a helper starts later is a helper too


def test_with_batch_helpers_the_server_loop_keeps_the_normal_policy_and_grpc_threads_are_batch(recommender):
    from serving.server import start

    running = start(recommender, port=0, helper_threads="batch")
    try:
        loop = next(t for t in threading.enumerate() if t.name == "shoprec-grpc")
        assert os.sched_getscheduler(loop.native_id) == os.SCHED_OTHER
        assert os.sched_getscheduler(threading.main_thread().native_id) == os.SCHED_OTHER
        names = {int(tid): Path(f"/proc/self/task/{tid}/comm").read_text().strip()
                 for tid in os.listdir("/proc/self/task")}
        engine = [tid for tid, name in names.items() if name == "event_engine"]
        assert engine, f"no gRPC event-engine thread among {sorted(set(names.values()))}"
        assert all(os.sched_getscheduler(tid) == os.SCHED_BATCH for tid in engine)
    finally:
        running.stop()
        _restore_normal_policy()  # pytest's threads outlive this test


def _restore_normal_policy() -> None:
    for tid in map(int, os.listdir("/proc/self/task")):
        try:
            if os.sched_getscheduler(tid) == os.SCHED_BATCH:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        except OSError:  # the thread ended meanwhile
            continue


def test_helper_threads_must_be_batch_or_normal(recommender):
    from serving.server import start

    with pytest.raises(ValueError, match="helper_threads must be one of"):
        start(recommender, port=0, helper_threads="fifo")
