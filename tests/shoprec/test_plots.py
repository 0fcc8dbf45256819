"""The SVG line chart: lines where the values put them, labels escaped, the reference line drawn."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from shoprec.plots import Line, line_chart_svg

SVG = "{http://www.w3.org/2000/svg}"


def _points(svg: str) -> list[list[tuple[float, float]]]:
    root = ET.fromstring(svg)  # also checks that the escaped names leave well-formed XML
    return [[tuple(map(float, p.split(","))) for p in line.get("points").split()]
            for line in root.iter(f"{SVG}polyline")]


def test_lines_are_scaled_to_the_axes_and_a_higher_value_is_drawn_higher():
    svg = line_chart_svg([Line("a", [0, 1, 2], [1.0, 2.0, 4.0]), Line("b <&>", [0, 2], [4.0, 1.0], dashed=True)],
                         "t", "x", [(0, "zero"), (2, "two")], width=400, height=200, legend_width=100)
    a, b = _points(svg)
    assert [x for x, _ in a] == [50.0, 175.0, 300.0]  # pad 50 .. width - legend 300
    assert a[0][1] > a[1][1] > a[2][1]  # SVG y grows downwards
    assert a[2][1] == b[0][1] == 30.0  # the highest value touches the top
    assert "b &lt;&amp;&gt;" in svg and 'stroke-dasharray="6,4"' in svg
    assert ">zero<" in svg and ">two<" in svg


def test_a_reference_above_the_data_raises_the_axis_and_is_labelled():
    svg = line_chart_svg([Line("a", [0, 1], [5.0, 10.0])], "t", "x", [], reference=(20.0, "target 20 ms"))
    (a,) = _points(svg)
    assert a[1][1] > 30.0  # 10 is no longer the top: 20 is
    ref = re.search(r'<line x1="50" y1="([\d.]+)"[^>]*stroke-dasharray="2,3"', svg)
    assert ref and float(ref.group(1)) == 30.0 and "target 20 ms" in svg
