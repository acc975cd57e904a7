"""Line charts as inline SVG, drawn on the server.

The portal loads nothing from a CDN and runs no script (its Content-Security-Policy forbids both), so a
chart is markup: polylines in a fixed viewBox, axes with three ticks each, a legend. Every piece of text
that came from outside (route names) is escaped here, because the result is marked safe for the template.
Colours are presentation attributes, not `style`, which the policy would block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 40, 28
PALETTE = ("#2563eb", "#dc2626", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2", "#4b5563")


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    """One value per x position; None leaves a gap in the line."""


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least `value` (axis maximum)."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    return next(step * magnitude for step in (1, 2, 2.5, 5, 10) if step * magnitude >= value)


def _number(value: float) -> str:
    return f"{value:g}" if value < 10_000 else f"{value / 1000:g}k"


def line_chart(
    chart_id: str, title: str, times: Sequence[datetime], series: Sequence[Series], unit: str
) -> Markup:
    """An SVG chart; `data-chart` and each line's `data-series` let tests and styles find them."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = nice_ceiling(max((v for s in series for v in s.values if v is not None), default=0.0))
    n = max(len(times), 1)

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" class="chart" role="img" '
        f'data-chart="{escape(chart_id)}" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold" fill="#111827">{escape(title)}</text>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        tick_y = y(top * fraction)
        parts.append(
            f'<line x1="{LEFT}" y1="{tick_y:.1f}" x2="{WIDTH - RIGHT}" y2="{tick_y:.1f}" '
            f'stroke="#e5e7eb" stroke-width="1"/>'
            f'<text x="{LEFT - 6}" y="{tick_y + 4:.1f}" font-size="11" text-anchor="end" fill="#4b5563">'
            f"{escape(_number(top * fraction))}</text>"
        )
    parts.append(
        f'<text x="{LEFT - 6}" y="{TOP - 12}" font-size="11" text-anchor="end" fill="#4b5563">{escape(unit)}</text>'
    )
    if times:
        for i in sorted({0, (len(times) - 1) // 2, len(times) - 1}):
            parts.append(
                f'<text x="{x(i):.1f}" y="{HEIGHT - 8}" font-size="11" text-anchor="middle" fill="#4b5563">'
                f"{times[i]:%H:%M}</text>"
            )
    legend_x = LEFT + 8 * len(title) + 24
    for k, line in enumerate(series):
        colour = PALETTE[k % len(PALETTE)]
        parts.append(
            f'<text x="{legend_x}" y="16" font-size="11" fill="{colour}">&#9632; {escape(line.name)}</text>'
        )
        legend_x += 7 * len(line.name) + 28
        segments: list[list[tuple[float, float]]] = [[]]
        for i, value in enumerate(line.values[:n]):
            if value is None:
                segments.append([])
            else:
                segments[-1].append((x(i), y(value)))
        for points in (segment for segment in segments if segment):
            if len(points) == 1:
                ((px, py),) = points
                parts.append(
                    f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colour}" '
                    f'data-series="{escape(line.name)}"/>'
                )
            else:
                coordinates = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
                parts.append(
                    f'<polyline points="{coordinates}" fill="none" stroke="{colour}" stroke-width="2" '
                    f'data-series="{escape(line.name)}"/>'
                )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every outside value above went through escape()
