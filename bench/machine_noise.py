"""The machine's own tail: a fixed pure-Python task timed many times, and the CPU time stolen.

A latency target at p99 is only as reachable as the machine allows. On a shared virtual
machine the hypervisor takes the CPU away now and then (the ``steal`` column of /proc/stat);
a task that hits such a pause takes several times its usual time, whatever its code. This
script measures that floor with nothing of shoprec loaded: one thread, no I/O, a task of about
1 ms, timed back to back. Run it next to a load test (before, after) to know the machine's
state; docs/benchmarks.md quotes it.

It also times the host's hold on this machine's memory. On this machine class memory that
nobody touched for half a second is slow to touch again, and the guest cannot see why (no page
fault, no steal: the time counts as the thread's own CPU). Measured on 2026-12-04: reading one
byte of every page of 64 MiB after 0.5 s idle took 200-210 ms in 4 KiB pages and 7-11 ms in
2 MiB huge pages while the machine was slow, 10-13 ms and 1.1-1.9 ms an hour later when it was
fast (hot: 0.2-6 ms). The cost is per page the guest maps, so huge pages pay it once per 2 MiB,
and its size is a good gauge of the machine's state. ``cold_touch`` measures both kinds.

    .venv/bin/python bench/machine_noise.py --tasks 5000
"""
from __future__ import annotations

import argparse
import ctypes
import json
import mmap
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


HUGE = 2 << 20  # a transparent huge page, and the host's unit of memory
MADV_HUGEPAGE, MADV_NOHUGEPAGE = 14, 15  # <linux/mman.h>


def _buffer(mb: int, huge: bool) -> np.ndarray:
    """``mb`` MiB of private memory, 2 MiB aligned, in huge pages or in 4 KiB pages, written once;
    the array holds the mapping (unmapped when the array goes)."""
    m = mmap.mmap(-1, (mb << 20) + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    whole = np.frombuffer(m, dtype=np.uint8)
    skip = -whole.ctypes.data % HUGE
    buf = whole[skip:skip + (mb << 20)]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise(ctypes.c_void_p(buf.ctypes.data), ctypes.c_size_t(mb << 20),
                 MADV_HUGEPAGE if huge else MADV_NOHUGEPAGE)  # advice only: THP "never" still gives 4 KiB
    buf[:] = 1
    return buf


def cold_touch(mb: int, idle_seconds: float, huge: bool, rounds: int = 3) -> dict:
    """Milliseconds to read one byte of every 4 KiB page of ``mb`` MiB, right after reading them
    (hot) and after leaving them alone for ``idle_seconds`` (cold); medians of ``rounds``."""
    pages = _buffer(mb, huge)[::4096]

    def sweep() -> float:
        t = time.perf_counter()
        int(pages.sum())
        return (time.perf_counter() - t) * 1000

    hot, cold = [], []
    for _ in range(rounds):
        sweep()
        hot.append(sweep())
        time.sleep(idle_seconds)
        cold.append(sweep())
    in_huge = _anon_huge_kib()
    return {"pages": "2 MiB" if huge else "4 KiB", "mb": mb, "idle_s": idle_seconds,
            "hot_ms": round(float(np.median(hot)), 2), "cold_ms": round(float(np.median(cold)), 2),
            "cold_us_per_mb": round(float(np.median(cold)) * 1000 / mb, 1), "anon_huge_mb_in_process": in_huge >> 10}


def _anon_huge_kib() -> int:
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def task(steps: int) -> int:
    total = 0
    for i in range(steps):
        total += i
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=5000, help="timed repetitions")
    p.add_argument("--steps", type=int, default=20000, help="loop steps per task (~1 ms on this machine class)")
    p.add_argument("--cold-mb", type=int, default=64, help="buffer of the memory probe (0: skip it)")
    p.add_argument("--cold-idle", type=float, default=0.5, help="seconds the probe's buffer stays untouched")
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
    cold = [cold_touch(args.cold_mb, args.cold_idle, huge) for huge in (False, True)] if args.cold_mb else []
    print(json.dumps({**out, "cold_memory": cold}, indent=2))
    print(render([out]))
    if cold:
        print()
        print(render(cold))


if __name__ == "__main__":
    main()
