"""The server-drawn SVG charts: bar heights follow the counts, marked bins are shaded, a missing value is
a gap in a line, and labels are escaped."""

from annotation_server.web.charts import HEIGHT, PAD, bars, lines


def test_bars_scale_to_the_largest_count_and_shade_marked_groups() -> None:
    svg = str(bars("lead <times>", ["a", "b"], [("answers", [4, 2])], marked=frozenset({0})))
    plot_h = HEIGHT - 2 * PAD
    assert f'height="{plot_h:.1f}"' in svg and f'height="{plot_h / 2:.1f}"' in svg
    assert svg.count('fill="#eee"') == 1
    assert 'aria-label="lead &lt;times&gt;"' in svg and "<times>" not in svg


def test_lines_leave_gaps_for_missing_values() -> None:
    svg = str(lines("alpha", ["1", "2", "3"], [("best", [0.5, None, 1.0]), ("worst", [None, None, None])]))
    assert svg.count("<circle") == 2 and svg.count("<polyline") == 1
    assert "best: 0.500" in svg
