"""bench/probe_pages.py's page comparison: the share of the exact page's items kept."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.probe_pages import overlap  # noqa: E402


def test_overlap_counts_the_exact_pages_items_kept_in_the_top():
    exact = [["a", "b", "c", "d"], ["x", "y"]]
    got = [["b", "a", "z", "c"], ["y", "x"]]
    assert overlap(got, exact, 4) == pytest.approx((3 / 4 + 1) / 2)  # order within the top does not count
    assert overlap(got, exact, 2) == pytest.approx((2 / 2 + 1) / 2)
    assert overlap([["q"], ["x", "y"]], exact, 1) == pytest.approx((0 + 1) / 2)


def test_overlap_skips_empty_exact_pages():
    assert overlap([["a"], []], [["a"], []], 20) == 1.0
    assert overlap([[]], [[]], 20) == 1.0
