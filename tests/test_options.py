"""Each script's --help lists only the flags it honours, every numeric flag refuses a bad value in argparse's one
line, the defaults that --help shows are the recipes', and the prediction scripts start without the training engine.
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from common import limits
from common.cli import options
from common.cli.recipes import RECIPES
from conftest import ROOT, refusal

SCRIPTS = ("train_main", "train_multiprocessing", "train_distributed", "train_dataparallel", "network", "test",
           "classify_test_data", "export")
TRAINING_ONLY = ("--dummy", "--dropout", "--train-crop-size", "--epochs", "--lr", "--resume", "--world-size",
                 "--nprocs", "--sync-bn", "--dist-url", "--checkpoint-interval", "--demo")


def flags_of(script: str) -> set[str]:
    parser = importlib.import_module(script).get_args_parser()
    return {flag for action in parser._actions for flag in action.option_strings}


@pytest.mark.parametrize("script", ["test", "classify_test_data"])
def test_prediction_scripts_show_no_training_flag(script):
    assert not flags_of(script) & set(TRAINING_ONLY)


def test_each_launcher_shows_only_the_process_flags_it_honours():
    assert {"--world-size", "--rank", "--nprocs", "--gpu"} & flags_of("network") == {"--gpu"}
    assert not {"--dropout", "--checkpoint-interval", "--sync-bn", "--recipe"} & flags_of("network")
    assert not {"--world-size", "--nprocs", "--rank"} & flags_of("train_distributed")
    spawned = {"--world-size", "--nprocs", "--dist-url", "--sync-bn", "--dist-timeout"}
    assert not spawned & flags_of("train_dataparallel")
    assert "--gpu" not in flags_of("train_multiprocessing")  # one process per GPU: --gpu would mean nothing
    assert {"--world-size", "--rank", "--nprocs", "--dist-url", "--sync-bn"} <= flags_of("train_main")


def test_the_sorter_takes_output_dir_and_out_as_one_flag():
    import classify_test_data

    parser = classify_test_data.get_args_parser()
    for flag in ("--output-dir", "--out"):
        assert parser.parse_args(["--data", "d", flag, "sorted"]).output_dir == "sorted"


def numeric_actions(script: str):
    parser = importlib.import_module(script).get_args_parser()
    return [a for a in parser._actions if isinstance(a.type, limits.Number)]


def outside(number: limits.Number) -> list[str]:
    """Values ``number`` must refuse: beyond each bound, NaN, infinity, and a float for an integer flag."""
    bad = ["nan", "inf", "x"]
    if number.low is not None:
        bad.append(str(number.low if number.low_open else number.low - 1))
    if number.high is not None:
        bad.append(str(number.high if number.high_open else number.high + 1))
    if number.kind is int:
        bad.append("1.5")
    return bad


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_flag_refuses_bad_values_in_one_line(script):
    parser = importlib.import_module(script).get_args_parser()
    actions = numeric_actions(script)
    assert actions, f"{script} has no numeric flag"
    for action in actions:
        flag = action.option_strings[-1]
        for value in outside(action.type):
            argv = [flag, *([value] * (action.nargs if isinstance(action.nargs, int) else 1))]
            message = refusal(parser.parse_args, argv)
            assert flag in message and f"got {value!r}" in message, message


def test_a_number_type_accepts_its_bounds_and_says_what_it_wants():
    assert options.POSITIVE_INT("1") == 1 and options.PIXELS(str(limits.MAX_PIXELS)) == limits.MAX_PIXELS
    assert options.FRACTION("0") == 0.0 and options.PROBABILITY("1") == 1.0
    assert options.POSITIVE_INT.describe() == "a positive integer"
    assert options.FRACTION.describe() == "a number in [0, 1)"
    assert options.checkpoint_interval("30m") == "30m" and options.checkpoint_interval("500") == "500"
    for bad in ("0", "-3m", "m", "1.5", "nanm"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive number of steps"):
            options.checkpoint_interval(bad)


def test_help_shows_each_recipes_default():
    import train_main

    text = " ".join(train_main.get_args_parser().format_help().split())
    epochs = ", ".join(f"{name} {recipe['epochs']}" for name, recipe in RECIPES.items())
    assert f"(default: {epochs})" in text
    ghostnet = RECIPES["ghostnet"]
    resnet = RECIPES["resnet"]
    assert f"resnet {resnet['lr']:g}, ghostnet {ghostnet['lr']:g} per {ghostnet['lr_ref_batch']} images" in text


@pytest.mark.slow
@pytest.mark.parametrize("script", ["test.py", "classify_test_data.py"])
def test_prediction_scripts_start_without_the_training_engine(script):
    done = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout
    loaded = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "common.predict.inference" in loaded or "common.models.loading" in loaded
    assert not {"common.train.engine", "common.train.launch", "common.train.step"} & loaded
