"""Dependency-free SVG line charts, readable in any markdown viewer and browser.

The project draws few charts (the simulation's conversion by day, the load bench's latency by
percentile), so it writes SVG itself instead of depending on a plotting library.
"""
from __future__ import annotations

from dataclasses import dataclass
from html import escape

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


@dataclass(frozen=True)
class Line:
    name: str
    xs: list[float]
    ys: list[float]
    dashed: bool = False


def line_chart_svg(lines: list[Line], title: str, x_label: str, x_ticks: list[tuple[float, str]],
                   y_label: str = "", reference: tuple[float, str] | None = None, x_grid: bool = False,
                   width: int = 640, height: int = 320, legend_width: int = 150) -> str:
    """One polyline per ``Line`` over a y axis from 0 to the highest value (or the reference
    line's, if higher), ``x_ticks`` as (position, label) pairs, and an optional horizontal
    ``reference`` line (value, label), e.g. a target. Names and labels are escaped."""
    pad_l, pad_r, pad_t, pad_b = 50, legend_width, 30, 35
    xs = [x for line in lines for x in line.xs] + [x for x, _ in x_ticks]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    top = max([y for line in lines for y in line.ys] + ([reference[0]] if reference else []), default=1.0) or 1.0
    px = lambda v: pad_l + (width - pad_l - pad_r) * ((v - x_lo) / ((x_hi - x_lo) or 1.0))  # noqa: E731
    py = lambda v: height - pad_b - (height - pad_t - pad_b) * (v / top)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{pad_l}" y="18" font-size="13">{escape(title)}</text>',
             f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" stroke="black"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" stroke="black"/>']
    for frac in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{pad_l - 6}" y="{py(top * frac) + 4:.1f}" text-anchor="end">{top * frac:.3g}</text>')
    if y_label:
        parts.append(f'<text x="12" y="{(pad_t + height - pad_b) / 2:.1f}" text-anchor="middle" '
                     f'transform="rotate(-90 12 {(pad_t + height - pad_b) / 2:.1f})">{escape(y_label)}</text>')
    for x, label in x_ticks:
        if x_grid:
            parts.append(f'<line x1="{px(x):.1f}" y1="{pad_t}" x2="{px(x):.1f}" y2="{height - pad_b}" stroke="#ddd"/>')
        parts.append(f'<text x="{px(x):.1f}" y="{height - pad_b + 15}" text-anchor="middle">{escape(label)}</text>')
    if reference:
        value, label = reference
        parts.append(f'<line x1="{pad_l}" y1="{py(value):.1f}" x2="{width - pad_r}" y2="{py(value):.1f}" '
                     f'stroke="black" stroke-dasharray="2,3"/>')
        parts.append(f'<text x="{width - pad_r - 4}" y="{py(value) - 4:.1f}" text-anchor="end">{escape(label)}</text>')
    for c, line in enumerate(lines):
        colour = COLOURS[c % len(COLOURS)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(line.xs, line.ys))
        dash = ' stroke-dasharray="6,4"' if line.dashed else ""
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{points}"/>')
        parts.append(f'<text x="{width - pad_r + 8}" y="{pad_t + 14 * c + 10}" fill="{colour}">{escape(line.name)}</text>')
    parts.append(f'<text x="{(width - pad_r + pad_l) / 2}" y="{height - 5}" text-anchor="middle">'
                 f'{escape(x_label)}</text></svg>')
    return "\n".join(parts)
