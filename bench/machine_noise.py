"""The machine's own tail: a fixed pure-Python task timed many times, and the CPU time stolen.

A latency target at p99 is only as reachable as the machine allows. On a shared virtual
machine the hypervisor takes the CPU away now and then (the ``steal`` column of /proc/stat);
a task that hits such a pause takes several times its usual time, whatever its code. This
script measures that floor with nothing of shoprec loaded: one thread, no I/O, a task of about
1 ms, timed back to back. Run it next to a load test (before, after) to know the machine's
state; docs/benchmarks.md quotes it.

    .venv/bin/python bench/machine_noise.py --tasks 5000
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.load_server import TICK  # noqa: E402
from shoprec.table import render  # noqa: E402


def steal_seconds() -> float:
    """CPU time stolen from this machine's vCPUs since boot, summed over them (/proc/stat):
    over a window, stolen seconds / window seconds = cores taken away on average."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return int(fields[7]) / TICK if len(fields) > 7 else 0.0


def task(steps: int) -> int:
    total = 0
    for i in range(steps):
        total += i
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=5000, help="timed repetitions")
    p.add_argument("--steps", type=int, default=20000, help="loop steps per task (~1 ms on this machine class)")
    args = p.parse_args()
    for _ in range(200):  # warm-up
        task(args.steps)
    stolen, started = steal_seconds(), time.perf_counter()
    times = np.empty(args.tasks)
    for i in range(args.tasks):
        t = time.perf_counter()
        task(args.steps)
        times[i] = time.perf_counter() - t
    wall = time.perf_counter() - started
    ms = times * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    out = {"tasks": args.tasks, "p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
           "p99_ms": round(float(p99), 3), "max_ms": round(float(ms.max()), 2),
           "p99_over_p50": round(float(p99 / p50), 2),
           "steal_cores": round((steal_seconds() - stolen) / wall, 3), "wall_s": round(wall, 1)}
    print(json.dumps(out, indent=2))
    print(render([out]))


if __name__ == "__main__":
    main()
