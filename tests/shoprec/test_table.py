"""render(): a header, a dashed separator, then rows; text left-aligned, numbers right-aligned."""
from __future__ import annotations

from shoprec.table import render


def test_header_separator_rows_and_alignment():
    out = render([{"table": "events", "rows": 12345, "share": 0.5},
                  {"table": "users", "rows": 7, "share": 0.123456}])
    lines = out.split("\n")
    assert lines == [
        "table    rows   share",
        "------  -----  ------",
        "events  12345  0.5000",
        "users       7  0.1235",
    ]


def test_column_widths_follow_the_widest_cell_or_header():
    out = render([{"a_long_header": 1, "b": "x"}])
    header, sep, row = out.split("\n")
    assert sep == "-------------  -"
    assert row == "            1  x"
    assert header == "a_long_header  b"


def test_columns_argument_selects_and_orders():
    out = render([{"a": 1, "b": "x", "c": 3}], columns=["c", "a"])
    assert out.split("\n") == ["c  a", "-  -", "3  1"]


def test_missing_value_makes_column_text():
    out = render([{"name": "x", "n": 10}, {"name": "yy"}])
    assert out.split("\n") == ["name  n", "----  --", "x     10", "yy"]


def test_no_rows():
    assert render([]) == "(no rows)"


def test_columns_default_to_all_keys():
    out = render([{"table": "events", "kept": 5}, {"table": "items", "kept": 3, "bad price": 2}])
    header, _, events_row, items_row = out.split("\n")
    assert header.startswith("table") and "kept" in header and header.endswith("bad price")
    assert items_row.startswith("items") and items_row.endswith(" 2")
