"""evaluation/compare.py: sizes and published figures against torchvision's weights metadata, the three output files
of a --quick run, the figure's two panels, and latencies that rank resnet50 behind resnet18."""
from __future__ import annotations

import csv
import os

import pytest
import torch
import torchvision
from PIL import Image

from common.models import factory
from common.parallel.precision import Precision
from evaluation import chart, compare, measure, published
from tests.conftest import refusal
from tests.inprocess import call_main

TORCHVISION_DEFAULTS = [m for m in compare.DEFAULT_MODELS if not m.startswith("ghostnet")]


@pytest.fixture(scope="module")
def default_set() -> dict[str, torch.nn.Module]:
    """Every model of the default set, built once (random init, not run)."""
    archs = factory.available_archs()
    return {spec: factory.create_model(*_arch_width(spec, archs)) for spec in compare.DEFAULT_MODELS}


def _arch_width(spec: str, archs: list[str]) -> tuple[str, int, bool, None, float]:
    arch, width = compare.parse_model(spec, archs)
    return arch, factory.IMAGENET_CLASSES, False, None, width


def _meta(arch: str) -> dict:
    return torchvision.models.get_model_weights(arch).DEFAULT.meta


@pytest.mark.parametrize("spec", TORCHVISION_DEFAULTS)
def test_params_equal_torchvision_num_params(default_set, spec):
    assert factory.count_params(default_set[spec]) == _meta(spec)["num_params"]


def test_ghostnet_1x_has_5_182_508_params_and_141m_macs(default_set):
    model = default_set["ghostnet"]
    assert factory.count_params(model) == 5_182_508
    assert compare.count_macs(model, 224) == pytest.approx(141e6, rel=0.02)


@pytest.mark.parametrize("spec", TORCHVISION_DEFAULTS)
def test_macs_within_2_percent_of_torchvision_ops(default_set, spec):
    """torchvision's ``_ops`` are GFLOPS counted as multiply-adds; counted here on the meta device (no arithmetic),
    which gives FlopCounterMode the same shapes as a real forward."""
    macs = compare.count_macs(default_set[spec], 224)
    assert macs == pytest.approx(_meta(spec)["_ops"] * 1e9, rel=0.02)


@pytest.mark.parametrize("spec", TORCHVISION_DEFAULTS)
def test_published_columns_equal_the_weights_metadata(spec):
    weights = torchvision.models.get_model_weights(spec).DEFAULT
    preprocess = weights.transforms()
    pub = published.published(spec)
    assert (pub.top1, pub.top5) == (weights.meta["_metrics"]["ImageNet-1K"]["acc@1"],
                                    weights.meta["_metrics"]["ImageNet-1K"]["acc@5"])
    assert (pub.resize, pub.crop, pub.interpolation) == (preprocess.resize_size[0], preprocess.crop_size[0],
                                                         preprocess.interpolation.value)
    assert str(weights) in pub.source


def test_ghostnet_figures_are_the_release_and_the_papers():
    one, half, wide = (published.published("ghostnet", w) for w in (1.0, 0.5, 1.3))
    assert (one.top1, one.top5, one.resize, one.crop, one.interpolation) == (73.98, 91.46, 256, 224, "bilinear")
    assert "official release" in one.source
    assert (half.top1, half.top5, wide.top1, wide.top5) == (66.2, None, 75.7, None)
    assert "paper" in half.source and "paper" in wide.source and half.crop is None
    assert published.published("ghostnet", 0.75) == published.Published()


@pytest.mark.slow
def test_quick_run_writes_csv_markdown_and_png(tmp_path, capsys):
    rows, out = call_main("evaluation/compare.py", "--quick", "--threads", "1", "--output-dir", str(tmp_path))
    assert "\r" not in out + capsys.readouterr().err  # pytest's capture is no terminal: lines, not a tqdm bar
    assert [r["model"] for r in rows] == list(compare.QUICK_MODELS)
    with open(tmp_path / "compare.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == list(compare.QUICK_MODELS) and list(table[0]) == compare.COLUMNS
    for written, row in zip(table, rows):
        assert written["error"] == "" and int(written["params"]) == row["params"] > 0
        arch, width = compare.parse_model(row["model"], factory.available_archs())
        assert int(written["macs"]) == factory.count_macs(factory.create_model(arch, 1000, width_mult=width), 32)
        pub = published.published(arch, width)
        assert float(written["published_top1"]) == pub.top1 and float(written["published_top5"]) == pub.top5
        for setup in compare.SETUPS:
            assert all(float(written[f"{setup}_{f}"]) > 0 for f in compare.FIGURES if f != "peak_mib")
            assert float(written[f"{setup}_latency_spread_pct"]) >= 0  # 3 repeats: a spread
        assert int(written["repeats"]) == 3 and float(written["other_cores"]) >= 0
        assert written["reliable"] == ("no" if f"warning: {row['model']}'s timing is unreliable" in out else "yes")
    markdown = (tmp_path / "compare.md").read_text().splitlines()
    assert markdown[2].startswith("| model |") and len([line for line in markdown if line.startswith("| ")]) == 3
    assert markdown[-1].startswith("Steadiness: ") and "=> Steadiness: " in out
    assert ("unreliable timing" in markdown[-1]) == any(r["reliable"] == "no" for r in table)
    assert "compare.csv, compare.md, compare.png" in out
    with Image.open(tmp_path / "compare.png") as png:
        assert png.format == "PNG" and png.size == (1500, 640)


def test_figure_has_both_panels_with_every_rated_point_and_the_front():
    rows = [{"model": m, "macs": macs, "published_top1": top1, "defaults_latency_ms": ms, "input_size": 224}
            for m, macs, top1, ms in (("ghostnet", 141e6, 73.98, 9.0), ("resnet18", 1.8e9, 69.8, 20.0),
                                      ("resnet50", 4.1e9, 80.9, 50.0), ("mnasnet0_5", 104e6, 67.7, ""),
                                      ("unrated", 1e8, "", 3.0))]
    figure = chart.compare_figure(rows, "cpu")
    left, right = figure.axes
    points = [[tuple(c.get_offsets()[0]) for c in ax.collections if len(c.get_offsets())] for ax in (left, right)]
    assert sorted(points[0]) == sorted([(141.0, 73.98), (1800.0, 69.8), (4100.0, 80.9), (104.0, 67.7)])
    assert sorted(points[1]) == sorted([(9.0, 73.98), (20.0, 69.8), (50.0, 80.9)])
    front = next(line for line in right.lines if line.get_label() == "Pareto front")
    assert list(front.get_xdata()) == [9.0, 50.0]
    assert {t.get_text() for t in left.texts} == {"GhostNet 1.0x", "resnet18", "resnet50", "mnasnet0_5"}


def test_pareto_front_keeps_only_points_no_other_beats():
    assert chart.pareto_front([(1, 60), (2, 70), (3, 65), (4, 80), (4, 75)]) == [(1, 60), (2, 70), (4, 80)]


def test_resnet50_measures_slower_than_resnet18():
    """Median of 7 batch-1 runs at 32 px, fp32 on one thread: 84 M against 37 M multiply-adds, and twice the layers."""
    budget = measure.Budget(input_size=32, batch_size=1, repeats=7, steps=1, warmup=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        median = {arch: sorted(measure.latencies(factory.create_model(arch, 1000).eval(), torch.device("cpu"),
                                                 Precision(), budget))[3] for arch in ("resnet18", "resnet50")}
    finally:
        torch.set_num_threads(threads)
    assert median["resnet50"] > median["resnet18"]


@pytest.mark.slow
def test_a_model_that_cannot_run_keeps_a_row_with_the_reason(tmp_path):
    rows, _ = call_main("evaluation/compare.py", "--models", "squeezenet1_1", "ghostnet:0.5", "--input-size", "16",
                        "--batch-size", "2", "--repeats", "2", "--threads", "1", "--output-dir", str(tmp_path))
    failed, ran = rows
    assert failed["error"].startswith("forward at 16 px: RuntimeError") and "defaults_latency_ms" not in failed
    assert failed["published_top1"] == _meta("squeezenet1_1")["_metrics"]["ImageNet-1K"]["acc@1"]
    assert ran["error"] == "" and ran["fp32_latency_ms"] > 0 and ran["width"] == 0.5
    assert os.path.isfile(tmp_path / "compare.png")


def parse(*argv: str) -> None:
    args = compare.get_args_parser().parse_args(list(argv))
    compare.fill_defaults(args)
    compare.check_args(args)


@pytest.mark.parametrize("argv, message", [
    (["--models", "mobilenet_v4"], "unknown architecture 'mobilenet_v4'"),
    (["--models", "resnet18:0.5"], "only the GhostNets take a width"),
    (["--models", "ghostnet:0"], "the width must be a number in (0, 4]"),
    (["--device", "tpu"], "not a device name"),
    (["--repeats", "0"], "--repeats: must be an integer in [1, 100000]"),
    (["--input-size", "0"], "--input-size: must be an integer in [1, 4096]"),
    (["--threads", "1.5"], "--threads: must be an integer in [1, 1024]"),
    (["-b", "-1"], "--batch-size: must be a positive integer"),
])
def test_bad_flags_are_refused_in_one_line(argv, message, tmp_path):
    assert message in refusal(parse, *argv, "--output-dir", str(tmp_path))


def test_help_lists_only_flags_the_script_reads():
    text = compare.get_args_parser().format_help()
    assert "--uint8-pipeline" not in text and "--amp" in text and "--compile" in text
