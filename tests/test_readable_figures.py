"""The pictures people read: class names on both axes and under each sample tile, the input size each comparison
axis refers to, ticks that let GhostNet's latency be read off, and a loss panel that one spike does not flatten."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("matplotlib")

from common.report import curves, figures
from evaluation import chart

LONG = "great white shark, white shark, man-eater, Carcharodon carcharias"


def tick_texts(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels()]


def test_confusion_matrix_names_both_axes_and_cuts_long_names():
    names = ["tench", "goldfish", LONG]
    ax = figures.confusion_figure(torch.tensor([[3, 1, 0], [0, 4, 0], [1, 0, 2]]), names).axes[0]
    assert tick_texts(ax.xaxis) == tick_texts(ax.yaxis) == ["0 tench", "1 goldfish", "2 great white shark, whit\u2026"]


def test_confusion_matrix_of_many_classes_keeps_readable_index_ticks():
    figure = figures.confusion_figure(torch.eye(200, dtype=torch.long), [f"c{i}" for i in range(200)])
    figure.canvas.draw()
    ticks = figure.axes[0].get_xticks()
    assert 3 <= len(ticks) <= 12 and all(float(t).is_integer() for t in ticks)


def test_samples_sheet_has_each_class_name_under_its_tile():
    figure = figures.captioned_grid(torch.rand(10, 3, 32, 32), ["cat", "dog"] * 4 + [LONG, "cat"], "epoch 0")
    titles = [ax.get_title() for ax in figure.axes if ax.get_images()]
    assert titles == ["cat", "dog"] * 4 + ["great white shark\u2026", "cat"]


def comparison_rows(size: int) -> list[dict]:
    return [{"model": m, "macs": macs * 1e6, "published_top1": top1, "defaults_latency_ms": ms, "input_size": size}
            for m, macs, top1, ms in (("ghostnet", 141, 73.9, 9.1), ("mobilenet_v3_small", 56, 67.7, 5.2),
                                      ("resnet50", 4100, 80.9, 62.0))]


def test_comparison_says_which_input_size_each_axis_is_at_and_labels_latency_ticks():
    macs_ax, latency_ax = chart.compare_figure(comparison_rows(160), "cpu").axes
    assert "160 px" in macs_ax.get_xlabel() and "160 px" in latency_ax.get_xlabel()
    assert "224 px" in macs_ax.get_ylabel()
    labelled = {text for text in tick_texts(latency_ax.xaxis) + [t.get_text() for t in
                latency_ax.xaxis.get_minorticklabels()] if text}
    assert {"8", "9", "10"} <= labelled  # GhostNet's 9.1 ms lies between labelled ticks one millisecond apart


def run_log(train_loss: list[float]) -> curves.RunLog:
    n = len(train_loss)
    columns = {s.column: [None] * n for _, series in curves.PANELS for s in series}
    columns["train_loss"] = train_loss
    return curves.RunLog("main.csv", list(range(n)), columns)


def test_loss_panel_turns_log_scale_after_one_spike_and_says_so():
    spiked = [40.0] + [2.3 * math.exp(-e / 6) + 0.3 for e in range(1, 12)]
    loss_ax = curves.figure(run_log(spiked)).axes[0]
    assert loss_ax.get_yscale() == "log" and loss_ax.get_legend().get_title().get_text() == "log scale"
    plain_ax = curves.figure(run_log([2.3, 1.9, 1.5, 1.2])).axes[0]
    assert plain_ax.get_yscale() == "linear" and plain_ax.get_legend().get_title().get_text() == ""
