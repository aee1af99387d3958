"""Small inline SVG charts for the HTML report (numbers in, markup out; no labels from data)."""

from __future__ import annotations

from collections.abc import Sequence

COLOURS = ("#1f6feb", "#d9480f", "#2f9e44", "#ae3ec9")


def line_chart(xs: Sequence[int], series: dict[str, Sequence[float | None]], *, title: str,
               y_range: tuple[float, float] | None = None, width: int = 420,
               height: int = 220) -> str:
    """Polylines with dots, axes and a legend; series with no values are left out."""
    left, right, top, bottom = 44, 12, 26, 30
    values = [v for s in series.values() for v in s if v is not None]
    if not values or not xs:
        return ""
    lo, hi = y_range or (min(0.0, min(values)), max(values) * 1.05 or 1.0)
    x0, x1 = min(xs), max(xs)

    def px(x):
        return left + (0.5 if x1 == x0 else (x - x0) / (x1 - x0)) * (width - left - right)

    def py(y):
        return top + (1 - (y - lo) / ((hi - lo) or 1)) * (height - top - bottom)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{title}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{left}" y="16" class="t">{title}</text>']
    for i in range(5):
        y = lo + (hi - lo) * i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
                     f'class="grid"/><text x="{left - 4}" y="{py(y) + 4:.1f}" class="yl">{y:.2f}</text>')
    for x in xs:
        parts.append(f'<text x="{px(x):.1f}" y="{height - 10}" class="xl">{x}</text>')
    legend_x = left + 4
    for (name, ys), colour in zip(series.items(), COLOURS, strict=False):
        pts = [(px(x), py(y)) for x, y in zip(xs, ys, strict=True) if y is not None]
        if not pts:
            continue
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>' for a, b in pts]
        parts.append(f'<text x="{legend_x + 150}" y="16" fill="{colour}" class="lg">{name}</text>')
        legend_x += 80
    parts.append("</svg>")
    return "".join(parts)



def _short_count(n: int) -> str:
    """A count in four characters or fewer (below 10^12), cut (not rounded) to its leading
    digits: 950, 9.9k, 95k, 950k, 9.5M, 950M, 9.5G (the exact count is in the tooltip)."""
    if n < 1_000:
        return str(n)
    if n < 10_000:
        return f"{n // 100 / 10:.1f}k"
    if n < 1_000_000:
        return f"{n // 1_000}k"
    if n < 10_000_000:
        return f"{n // 100_000 / 10:.1f}M"
    if n < 1_000_000_000:
        return f"{n // 1_000_000}M"
    return f"{n // 100_000_000 / 10:.1f}G" if n < 10_000_000_000 else f"{n // 10**9}G"


def reliability_chart(bins: Sequence[dict], *, width: int = 420, height: int = 240) -> str:
    """A reliability diagram: per confidence bin, the accuracy (bar) against the diagonal
    that perfect calibration follows, and over each bar how many images it holds (a bar of
    three images says little); empty bins have no bar."""
    left, right, top, bottom = 44, 12, 40, 34
    if not bins:
        return ""
    w, h = width - left - right, height - top - bottom

    def px(x):
        return left + x * w

    def py(y):
        return top + (1 - y) * h

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             'aria-label="Reliability diagram" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{left}" y="16" class="t">Reliability: accuracy by confidence</text>',
             f'<text x="{left - 4}" y="{top - 8}" class="yl">images</text>']
    for i in range(5):
        y = i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
                     f'class="grid"/><text x="{left - 4}" y="{py(y) + 4:.1f}" class="yl">{y:.2f}</text>')
        parts.append(f'<text x="{px(y):.1f}" y="{height - 18}" class="xl">{y:.2f}</text>')
    parts.append(f'<text x="{left + w / 2:.1f}" y="{height - 4}" class="xl">confidence '
                 '(top probability)</text>')
    for b in bins:
        if not b["count"]:
            continue
        x0, x1 = px(b["low"]) + 1, px(b["high"]) - 1
        parts.append(f'<rect class="bin" x="{x0:.1f}" y="{py(b["accuracy"]):.1f}" '
                     f'width="{x1 - x0:.1f}" height="{py(0) - py(b["accuracy"]):.1f}" '
                     f'fill="{COLOURS[0]}" fill-opacity="0.75"><title>{b["count"]} images, '
                     f'confidence {b["confidence"]:.2f}, accuracy {b["accuracy"]:.2f}'
                     '</title></rect>')
        parts.append(f'<text class="xl count" x="{(x0 + x1) / 2:.1f}" y="{top - 8}">'
                     f'{_short_count(b["count"])}</text>')
    parts.append(f'<line x1="{px(0):.1f}" y1="{py(0):.1f}" x2="{px(1):.1f}" y2="{py(1):.1f}" '
                 f'stroke="{COLOURS[1]}" stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    return "".join(parts)
