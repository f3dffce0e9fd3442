"""The line that says the input bounds a run, and --profile-input."""
from __future__ import annotations

import re
import time

import pytest
import torch

from common.data import transforms
from common.models import factory
from common.train import engine, loop
from conftest import SMALL, make_image_folder
from inprocess import call_main, load_script


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
    assert named_flags(lines[0]) <= parser_flags("train_main.py")
    assert "--uint8-pipeline" not in lines[0]  # already on by default: no advice to turn it on


def named_flags(line: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", line))


def parser_flags(script: str) -> set[str]:
    return {flag for action in load_script(script).get_args_parser()._actions for flag in action.option_strings}


HINT = loop.InputHint((("--uint8-pipeline", "the uint8 pipeline"),))


def test_input_bound_line_figures_leave_out_the_first_batch():
    stats = loop.EpochStats(1.0, 0, 0, images=100, seconds=12.0, data_seconds=6.0, first_wait=2.0)
    line = loop.input_bound_line(stats, 2, 4, HINT)
    assert "waited 4.0 of 10.0 s (40%)" in line and "(--uint8-pipeline)" in line and "-j, now 4" in line
    assert loop.input_bound_line(loop.EpochStats(1.0, 0, 0, 100, 10.0, 0.9), 2, 4, HINT) is None
    assert loop.input_bound_line(stats, 2, 4, None) is None  # cached features, synthetic data
    # A one-epoch run whose only wait was the loader's start-up, and a run too short to have waited: no line.
    assert loop.input_bound_line(loop.EpochStats(1.0, 0, 0, 100, 5.0, 4.0, first_wait=4.0), 0, 4, HINT) is None
    assert loop.input_bound_line(loop.EpochStats(1.0, 0, 0, 100, 0.04, 0.03), 0, 4, HINT) is None


@pytest.mark.parametrize("script", ["train_main.py", "train_distributed.py", "network.py"])
def test_input_hint_names_only_flags_of_the_script_that_change_its_settings(script, tmp_path):
    module = load_script(script)
    args = module.get_args_parser().parse_args([str(tmp_path)])
    hint = engine.input_hint(args)
    assert {flag for flag, _ in hint.flags} <= parser_flags(script)
    assert "--uint8-pipeline" not in dict(hint.flags)  # on by default in the trainers, absent from network.py
    if script == "network.py":
        assert module.loop_config(args, cache=True).input_hint is None
    else:
        assert dict(engine.input_hint(module.get_args_parser().parse_args([str(tmp_path), "--no-uint8-pipeline"]))
                    .flags).keys() >= {"--uint8-pipeline"}
        assert engine.input_hint(module.get_args_parser().parse_args(["--dummy"])) is None


@pytest.mark.slow
def test_network_cached_features_never_print_the_input_bound_line(small_folder, tmp_path, monkeypatch):
    real = transforms.load_uint8

    def slow(path, min_side=None):
        time.sleep(0.2)
        return real(path, min_side)

    weights = str(tmp_path / "backbone.pth")
    torch.save(factory.create_model("resnet18", 1000).state_dict(), weights)
    monkeypatch.setattr(transforms, "load_uint8", slow)
    _, printed = call_main("network.py", small_folder, "-a", "resnet18", "--weights", weights, "--epochs", "2",
                           "-b", "8", "--output-dir", str(tmp_path / "run"), *SMALL)
    assert "feature cache on" in printed
    assert "input bounds" not in printed


def test_profile_input_compares_the_loader_alone_with_the_model_alone(small_folder, tmp_path):
    _, printed = call_main("train_main.py", small_folder, "-a", "resnet18", "--no-amp", "-b", "4",
                           "--profile-input", "2", "--output-dir", str(tmp_path), *SMALL)
    line = next(line for line in printed.splitlines() if line.startswith("=> input alone:"))
    rates = re.findall(r"([0-9.]+) images/s", line)
    assert len(rates) == 2 and all(float(r) > 0 for r in rates)
    faster_input = float(rates[0]) > float(rates[1])
    assert f"the {'model' if faster_input else 'input'} bounds this run" in line
    assert not (tmp_path / "checkpoint.pth.tar").exists()
