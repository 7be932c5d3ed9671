"""Inline SVG of a labeler's trust over time (no JavaScript, no matplotlib; numbers only)."""
from __future__ import annotations

from html import escape

FLAG_LINE, SUSPEND_LINE = 0.7, 0.2  # the default thresholds, drawn as guides


def trust_svg(series, *, width: int = 640, height: int = 220, compact: bool = False, label: str = "") -> str:
    """SVG markup of ``series`` = [(datetime, trust), ...] (step by step; x is the event number,
    so bursts of events in one loop step stay readable). Starts at 1.0 (everyone's initial trust)."""
    values = [1.0] + [float(v) for _, v in series]
    if compact:
        left, right, top, bottom = 2, 2, 2, 2
    else:
        left, right, top, bottom = 40, 12, 12, 28
    pw, ph = width - left - right, height - top - bottom
    n = max(len(values) - 1, 1)

    def sx(k):
        return left + k / n * pw

    def sy(v):
        return top + (1 - v) * ph

    title = escape(label or "trust over time")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'class="trust-chart" role="img" aria-label="{title}"><title>{title}</title>']
    for v, colour in ((FLAG_LINE, "#d68b00"), (SUSPEND_LINE, "#c0392b")):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="{colour}" '
                   f'stroke-dasharray="4 3" stroke-width="1"/>')
    if not compact:
        for v in (0, 0.5, 1.0):
            out.append(f'<text x="{left - 6}" y="{sy(v) + 4:.1f}" text-anchor="end" font-size="11">{v:.1f}</text>')
        out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle" font-size="11">'
                   f'trust events ({len(values) - 1})</text>')
    pts = " ".join(f"{sx(k):.1f},{sy(v):.1f}" for k, v in enumerate(values))
    out.append(f'<polyline fill="none" stroke="#2456d6" stroke-width="{1.5 if compact else 2}" points="{pts}"/>')
    out.append("</svg>")
    return "".join(out)
