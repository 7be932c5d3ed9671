"""A tiny inline SVG chart of accuracy vs labels bought (no JavaScript, no matplotlib)."""
from __future__ import annotations

from html import escape

SERIES = (("secured_accuracy", "secured-set accuracy", "#2456d6"),
          ("ground_truth_accuracy", "accuracy on imported ground truth", "#1e7b34"))


def accuracy_svg(metrics, width: int = 640, height: int = 280) -> str:
    """SVG markup for ``metrics`` (IterationMetric-like objects); an empty string without data."""
    points = [(m.labels_bought, {k: getattr(m, k) for k, _, _ in SERIES}) for m in metrics]
    if not points:
        return ""
    left, right, top, bottom = 48, 16, 16, 40
    xs = [p[0] for p in points]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return top + (1 - y) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="chart" role="img" '
           f'aria-label="accuracy versus labels bought">']
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#e3e6ea"/>')
        out.append(f'<text x="{left - 6}" y="{sy(v) + 4:.1f}" text-anchor="end" font-size="11">{v:.2f}</text>')
    for x in sorted({x0, x1, *(xs[:: max(1, len(xs) // 6)])}):
        if xs and x in xs:
            out.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" text-anchor="middle" font-size="11">{int(x)}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle" font-size="12">labels bought</text>')
    for key, label, colour in SERIES:
        pts = [(sx(x), sy(vals[key])) for x, vals in points if vals[key] is not None]
        if not pts:
            continue
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"><title>{escape(label)}</title></polyline>')
        for x, y in pts:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
    ly = top + 4
    for key, label, colour in SERIES:
        if any(vals[key] is not None for _, vals in points):
            out.append(f'<rect x="{left + 8}" y="{ly}" width="10" height="10" fill="{colour}"/>'
                       f'<text x="{left + 22}" y="{ly + 9}" font-size="11">{escape(label)}</text>')
            ly += 16
    out.append("</svg>")
    return "".join(out)
