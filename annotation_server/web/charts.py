"""Small charts as inline SVG, drawn on the server from the numbers (no front-end build, no script):
grouped bars and lines. Each chart carries its numbers as <title> tooltips, so it reads without a legend
lookup, and a role="img" with a label for screen readers."""

from collections.abc import Sequence

from markupsafe import Markup, escape

from dspo.services.quality import QualityReport

WIDTH, HEIGHT, PAD = 420, 160, 28
COLOURS = ("#2f6fb0", "#c0504d", "#888888")


def _frame(label: str, body: list[str]) -> Markup:
    return Markup(
        f'<svg class="chart" role="img" aria-label="{escape(label)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>'
    )


def _legend(names: Sequence[str]) -> list[str]:
    return [
        f'<rect x="{PAD + 90 * i}" y="2" width="10" height="10" fill="{COLOURS[i]}"/>'
        f'<text x="{PAD + 14 + 90 * i}" y="11" font-size="10">{escape(name)}</text>'
        for i, name in enumerate(names)
    ]


def bars(
    label: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[int]]],
    marked: frozenset[int] = frozenset(),
) -> Markup:
    """Grouped bars: one group per label, one bar per series; groups in `marked` are hatched grey
    (e.g. the lead-time bins under the floor)."""
    top = max((v for _, values in series for v in values), default=0) or 1
    plot_h = HEIGHT - 2 * PAD
    group_w = (WIDTH - 2 * PAD) / max(len(labels), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    body = _legend([name for name, _ in series]) if len(series) > 1 else []
    axis = HEIGHT - PAD
    body.append(f'<line x1="{PAD}" y1="{axis}" x2="{WIDTH - PAD}" y2="{axis}" stroke="#444"/>')
    body.append(f'<text x="2" y="{PAD + 4}" font-size="10">{top}</text>')
    for g, text in enumerate(labels):
        x0 = PAD + g * group_w
        if g in marked:
            body.append(f'<rect x="{x0:.1f}" y="{PAD}" width="{group_w:.1f}" height="{plot_h}" fill="#eee"/>')
        for s, (name, values) in enumerate(series):
            h = plot_h * values[g] / top
            x = x0 + group_w * 0.1 + s * bar_w
            body.append(
                f'<rect x="{x:.1f}" y="{HEIGHT - PAD - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{COLOURS[s % len(COLOURS)]}">'
                f"<title>{escape(name)} {escape(text)}: {values[g]}</title></rect>"
            )
        body.append(
            f'<text x="{x0 + group_w / 2:.1f}" y="{HEIGHT - PAD + 14}" font-size="10" '
            f'text-anchor="middle">{escape(text)}</text>'
        )
    return _frame(label, body)


def lines(label: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]]) -> Markup:
    """Lines over the same x labels, y from min(0, lowest value) to 1 (alpha's range in practice); a
    None value is a gap, drawn as no point."""
    values = [v for _, vs in series for v in vs if v is not None]
    low = min([0.0, *values])
    plot_h, n = HEIGHT - 2 * PAD, len(labels)
    step = (WIDTH - 2 * PAD) / max(n - 1, 1)

    def y(v: float) -> float:
        return HEIGHT - PAD - plot_h * (v - low) / (1 - low)

    body = _legend([name for name, _ in series])
    body += [
        f'<line x1="{PAD}" y1="{y(v):.1f}" x2="{WIDTH - PAD}" y2="{y(v):.1f}" stroke="#ccc"/>'
        f'<text x="2" y="{y(v) + 4:.1f}" font-size="10">{v:g}</text>'
        for v in sorted({low, 0.0, 1.0})
    ]
    for s, (name, vs) in enumerate(series):
        colour = COLOURS[s % len(COLOURS)]
        points = [(PAD + i * step, y(v), v) for i, v in enumerate(vs) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in points)
            body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        body += [
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}">'
            f"<title>{escape(name)}: {v:.3f}</title></circle>"
            for px, py, v in points
        ]
    body += [
        f'<text x="{PAD + i * step:.1f}" y="{HEIGHT - PAD + 14}" font-size="10" text-anchor="middle">'
        f"{escape(text)}</text>"
        for i, text in enumerate(labels)
    ]
    return _frame(label, body)


def _seconds(ms: int) -> str:
    return f"{ms / 1000:g}s"


def quality_charts(report: QualityReport) -> dict[str, Markup]:
    """The charts of the quality page: alpha over windows of tasks, best and worst per shown position
    (the project's, and each annotator's by user id), and the lead-time histogram with the bins under
    the project's floor shaded."""
    positions = [str(i + 1) for i in range(report.n_candidates)]
    edges = report.lead_time_edges_ms
    bins = [f"{_seconds(lo)}–{_seconds(hi)}" for lo, hi in zip(edges, edges[1:], strict=False)]
    charts = {
        "alpha": lines(
            "Krippendorff's alpha per window of tasks",
            [f"{i + 1}" for i in range(len(report.alpha_windows))],
            [
                ("best", [w.best for w in report.alpha_windows]),
                ("worst", [w.worst for w in report.alpha_windows]),
            ],
        ),
        "positions": bars(
            "best and worst choices per shown position",
            positions,
            [("best", report.best_positions.counts), ("worst", report.worst_positions.counts)],
        ),
        "lead_time": bars(
            "answers per lead-time bin",
            [*bins, f"≥{_seconds(edges[-1])}"],
            [("answers", report.lead_time_counts)],
            marked=frozenset(i for i, lo in enumerate(edges) if lo < report.min_lead_time_ms),
        ),
    }
    for row in report.annotators:
        charts[f"positions-{row.user_id}"] = bars(
            f"{row.username}: best and worst per shown position",
            positions,
            [("best", row.best_positions.counts), ("worst", row.worst_positions.counts)],
        )
    return charts
