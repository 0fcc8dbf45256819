"""bench/load.py's latency curve: each window records it, repeats are combined point by point,
and the plot draws one line per start and method against the target."""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.load import CURVE_PERCENTILES, latency_plot_svg, median_of, summary  # noqa: E402


def _window(seed: int, scale: float) -> dict:
    lat = np.random.default_rng(seed).exponential(0.008 * scale, 5000)
    out = summary(lat.tolist(), 10.0, {})
    out.update(loadavg_1m=1.0)
    return out


def test_each_window_records_its_latency_curve():
    lat = np.linspace(0.001, 0.1, 1000)  # 1 .. 100 ms, evenly
    curve = dict(summary(lat.tolist(), 1.0, {})["latency_by_percentile_ms"])
    assert list(curve) == list(CURVE_PERCENTILES)
    assert curve[50] == summary(lat.tolist(), 1.0, {})["p50_ms"]
    assert abs(curve[99] - 99.01) < 0.01 and curve[10] < curve[90] < curve[99.9]


def test_repeats_are_combined_percentile_by_percentile():
    runs = [_window(0, 1.0), _window(1, 2.0), _window(2, 3.0)]
    combined = dict(median_of(runs)["latency_by_percentile_ms"])
    for i, q in enumerate(CURVE_PERCENTILES):
        assert combined[q] == round(float(np.median([r["latency_by_percentile_ms"][i][1] for r in runs])), 3)


def test_plot_has_a_line_per_start_and_method_and_the_target():
    load = [{"server": "2:ranker=dcn", "start": s, "method": m, "routing": "least-busy-2", "concurrency": 8,
             **median_of([_window(s, 1.0 if m == "GetInfo" else 4.0)])}
            for s in (1, 2) for m in ("GetInfo", "Recommend")]
    svg = latency_plot_svg(load, 15.0)
    lines = list(ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}polyline"))
    assert len(lines) == 4 and sum(line.get("stroke-dasharray") == "6,4" for line in lines) == 2  # GetInfo dashed
    assert "start 2: Recommend least-busy-2 (2:ranker=dcn)" in svg and "target p99 15 ms" in svg and ">p99.9<" in svg
