"""The comparison's picture, after the GhostNet paper's first figure: published top-1 against multiply-adds and
against the batch-1 latency measured here, each point labelled, the Pareto front drawn and GhostNet highlighted."""
from __future__ import annotations

from typing import TYPE_CHECKING

from common.report import figures
from common.report.figures import DPI

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

GHOST_COLOUR, OTHER_COLOUR, FRONT_COLOUR = "tab:red", "tab:blue", "0.45"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points that no other point beats on both counts (lower cost ``x``, higher accuracy ``y``), by cost."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _log_labels(ax: Axes) -> None:
    """Plain numbers on the log cost axis (not 6 x 10^0), a tick at every 1..9 times each power of ten: all of them
    labelled when the axis spans less than a factor of thirty (GhostNet's point can be read off), else 1, 2, 3 and 5
    times each power of ten."""
    from matplotlib import ticker

    def label(value: float, _pos) -> str:
        low, high = ax.get_xlim()
        return f"{value:g}" if high < 30 * low or f"{value:.0e}"[0] in "1235" else ""

    ax.xaxis.set_minor_locator(ticker.LogLocator(subs=range(2, 10), numticks=50))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(label))
    ax.xaxis.set_minor_formatter(ticker.FuncFormatter(label))
    ax.tick_params(axis="x", which="minor", labelsize=8)


def _display_name(model: str) -> str:
    """``ghostnet:0.5`` as ``GhostNet 0.5x``, ``ghostnetv3`` as ``GhostNetV3 1.0x``; other names as they are."""
    arch, _, width = model.partition(":")
    names = {"ghostnet": "GhostNet", "ghostnetv2": "GhostNetV2", "ghostnetv3": "GhostNetV3"}
    return f"{names[arch]} {float(width or 1):.1f}x" if arch in names else model


def _panel(ax: Axes, points: list[tuple[str, float, float]], xlabel: str, title: str) -> list:
    """One scatter of (model, cost, top-1) on a log cost axis, with the Pareto front as a dashed staircase; returns
    the point labels, GhostNet's first, for ``_place_labels``."""
    ax.set(xscale="log", xlabel=xlabel, ylabel="ImageNet top-1, % (published, evaluated at 224 px)", title=title)
    ax.grid(True, which="both", alpha=0.3)
    if not points:
        ax.text(0.5, 0.5, "no model has both figures", ha="center", va="center", transform=ax.transAxes)
        return []
    front = pareto_front([(x, y) for _, x, y in points])
    ax.plot([x for x, _ in front], [y for _, y in front], drawstyle="steps-post", ls="--", color=FRONT_COLOUR,
            lw=1.2, label="Pareto front", zorder=1)
    labels = []
    for model, x, y in sorted(points, key=lambda p: not p[0].startswith("ghostnet")):
        ghost = model.startswith("ghostnet")
        ax.scatter(x, y, s=110 if ghost else 36, marker="*" if ghost else "o", zorder=3,
                   color=GHOST_COLOUR if ghost else OTHER_COLOUR)
        labels.append(ax.annotate(_display_name(model), (x, y), xytext=(4, 3), textcoords="offset points",
                                  fontsize=8, color=GHOST_COLOUR if ghost else "black",
                                  fontweight="bold" if ghost else "normal", zorder=4,
                                  bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.75}))
    ax.scatter([], [], s=110, marker="*", color=GHOST_COLOUR, label="GhostNet")
    ax.margins(x=0.12, y=0.06)
    _log_labels(ax)
    ax.legend(loc="best", fontsize=8)  # where it hides the fewest points
    return labels


def _place_labels(ax: Axes, labels: list, renderer) -> None:
    """Move each label to the first spot around its point (right, left, then further up or down) where it covers
    neither another point nor an earlier label, so that every name stays readable; the figure must be laid out."""
    from matplotlib.transforms import Bbox

    points = ax.transData.transform([label.xy for label in labels])
    taken = [Bbox.from_extents(x - 5, y - 5, x + 5, y + 5) for x, y in points]
    frame = ax.get_window_extent(renderer)
    for i, label in enumerate(labels):
        others = taken[:i] + taken[i + 1:]
        width = label.get_window_extent(renderer).width * 72 / DPI  # in points, as the offsets are
        spots = [(dx, dy) for step in range(6) for dy in (3 + 9 * step, -10 - 9 * step) for dx in (4, -width - 4)]
        for spot in spots:
            label.set_position(spot)
            box = label.get_window_extent(renderer)
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(other) for other in others):
                break
        else:
            label.set_position(spots[0])
        taken.append(label.get_window_extent(renderer))


def compare_figure(rows: list[dict], device: str, caption: str = "") -> Figure:
    """Two panels from the comparison ``rows``: top-1 vs MACs, and top-1 vs the project defaults' batch-1 latency
    on ``device``, under ``caption`` (the machine measured on) when given. Models without a published top-1 (or a
    latency, for the second panel) are left out."""
    figure = figures.new_figure(1500, 640, "the comparison PNG", constrained=True)
    if caption:
        figure.suptitle(caption, fontsize=10)
    left, right = figure.subplots(1, 2)
    rated = [r for r in rows if r.get("published_top1") not in (None, "")]
    by_macs = [(r["model"], r["macs"] / 1e6, r["published_top1"]) for r in rated if r.get("macs")]
    by_latency = [(r["model"], r["defaults_latency_ms"], r["published_top1"]) for r in rated
                  if r.get("defaults_latency_ms") not in (None, "")]
    size = rows[0]["input_size"] if rows else ""
    labels = {left: _panel(left, by_macs, f"multiply-adds at {size} px input, millions (log)",
                           "top-1 vs multiply-adds"),
              right: _panel(right, by_latency, f"batch-1 latency at {size} px input on {device}, ms, project "
                            "defaults (log)", "top-1 vs measured latency")}
    figure.canvas.draw()  # lays the axes out, so that label boxes are where they will be saved
    renderer = figure.canvas.get_renderer()
    for ax, texts in labels.items():
        _place_labels(ax, texts, renderer)
    return figure
