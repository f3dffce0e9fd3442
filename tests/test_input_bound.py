"""The line that says the input bounds a run, and --profile-input."""
from __future__ import annotations

import re
import time

import pytest

from common.data import transforms
from common.train import loop
from conftest import SMALL, make_image_folder
from inprocess import call_main


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> str:
    return make_image_folder(str(tmp_path_factory.mktemp("bound")), 4, 1, ext="jpg")


def train(folder: str, out: str, *extra: str) -> str:
    return call_main("train_main.py", folder, "-a", "resnet18", "--no-amp", "--epochs", "1", "-b", "8",
                     "--output-dir", out, *SMALL, *extra)[1]


@pytest.mark.slow
def test_the_input_bound_line_appears_when_loading_is_slow_and_not_otherwise(small_folder, tmp_path, monkeypatch):
    assert "the input bounds this run" not in train(small_folder, str(tmp_path / "fast"))
    real = transforms.load_uint8

    def slow(path, min_side=None):
        time.sleep(0.2)
        return real(path, min_side)

    monkeypatch.setattr(transforms, "load_uint8", slow)
    lines = [line for line in train(small_folder, str(tmp_path / "slow")).splitlines() if "input bounds" in line]
    assert len(lines) == 1 and "-j, now 0" in lines[0]


def test_input_bound_line_figures():
    stats = loop.EpochStats(1.0, 0, 0, images=100, seconds=10.0, data_seconds=4.0)
    assert "waited 4.0 of 10.0 s (40%)" in loop.input_bound_line(stats, 2, 4)
    assert loop.input_bound_line(loop.EpochStats(1.0, 0, 0, 100, 10.0, 0.9), 2, 4) is None


def test_profile_input_compares_the_loader_alone_with_the_model_alone(small_folder, tmp_path):
    _, printed = call_main("train_main.py", small_folder, "-a", "resnet18", "--no-amp", "-b", "4",
                           "--profile-input", "2", "--output-dir", str(tmp_path), *SMALL)
    line = next(line for line in printed.splitlines() if line.startswith("=> input alone:"))
    rates = re.findall(r"([0-9.]+) images/s", line)
    assert len(rates) == 2 and all(float(r) > 0 for r in rates)
    faster_input = float(rates[0]) > float(rates[1])
    assert f"the {'model' if faster_input else 'input'} bounds this run" in line
    assert not (tmp_path / "checkpoint.pth.tar").exists()
