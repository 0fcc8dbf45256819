"""bench/load.py's tail shape: a stalled process is told apart from a machine that is slow all over."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.load import stalls  # noqa: E402


def _window(stall_at: list[float], per_s: int = 400, seconds: float = 10.0, seed: int = 0):
    """Calls to two processes, ~9 ms each; at each time in ``stall_at`` process 0's four calls in
    flight come back 15 ms late."""
    rng = np.random.default_rng(seed)
    started = np.sort(rng.uniform(0, seconds, int(per_s * seconds)))
    route = np.arange(len(started)) % 2
    lat = rng.normal(0.009, 0.001, len(started))
    for t in stall_at:
        hit = np.flatnonzero((route == 0) & (started >= t))[:4]
        lat[hit] += 0.015
    return started.tolist(), lat.tolist(), route.tolist()


def test_periodic_stalls_of_one_process_are_counted_and_show_in_its_p99():
    started, lat, route = _window([0.4 * i for i in range(1, 25)])  # every 0.4 s, as seen in a slow start
    shape = stalls(started, lat, route, processes=2, window_s=10.0)
    assert 2.0 <= shape["stalls_per_s"] <= 2.6  # 24 stalls in 10 s (plus a stray slow call at most)
    assert shape["p99_ms_per_process"][0] > 20 > shape["p99_ms_per_process"][1]
    assert 0.02 <= shape["slow_share"] <= 0.03  # 96 of 4,000 calls


def test_a_machine_slow_all_over_has_no_stalls():
    started, lat, route = _window([])
    slower = (np.array(lat) * 1.8).tolist()  # every call 80% slower: p50 moves with it
    shape = stalls(started, slower, route, processes=2, window_s=10.0)
    assert shape["stalls_per_s"] < 0.2 and shape["slow_share"] < 0.001
    assert abs(shape["p99_ms_per_process"][0] - shape["p99_ms_per_process"][1]) < 2


def test_one_connection_per_coroutine_reports_no_per_process_split():
    started, lat, route = _window([1.0, 2.0])
    shape = stalls(started, lat, [0] * len(route), processes=1, window_s=10.0)
    assert "p99_ms_per_process" not in shape and shape["stalls_per_s"] > 0
    assert stalls([], [], [], processes=2, window_s=10.0) == {}


def test_the_median_of_repeats_keeps_each_process_p99():
    from bench.load import median_of

    def run(p99s: list) -> dict:
        return {"p50_ms": 8.0, "p90_ms": 10.0, "p99_ms": max(p99s), "qps": 900.0, "n": 100, "errors": {},
                "loadavg_1m": 2.0, "p99_ms_per_process": p99s}

    out = median_of([run([12.0, 20.0]), run([14.0, 22.0]), run([13.0, 30.0])])
    assert out["p99_ms_per_process"] == [13.0, 22.0]  # per process, not the windows' p99
    assert "p99_ms_per_process" not in median_of([{**run([1.0]), "p99_ms_per_process": None}])
