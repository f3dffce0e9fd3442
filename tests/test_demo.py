"""The quick start: ``--demo`` draws its dataset once, the same on every machine, and a training run on it learns."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os

import pytest

from common.cli import defaults
from common.data import demo
from common.errors import UserError
from common.models import checkpoint
from common.train import launch
from conftest import run_script


def digest(root: str) -> str:
    """One hash over every file's relative path and bytes."""
    h = hashlib.sha256()
    for folder, _dirs, names in sorted(os.walk(root)):
        for name in sorted(names):
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.mark.slow
def test_the_demo_dataset_is_drawn_once_the_same_everywhere_and_redrawn_when_incomplete(tmp_path):
    first, second = str(tmp_path / "a" / "demo"), str(tmp_path / "b" / "demo")
    demo.ensure_dataset(first)
    for split, per_class in (("train", demo.TRAIN_PER_CLASS), ("val", demo.VAL_PER_CLASS)):
        assert sorted(os.listdir(os.path.join(first, split))) == sorted(demo.CLASSES)
        assert all(len(os.listdir(os.path.join(first, split, c))) == per_class for c in demo.CLASSES)
    stamp = os.stat(os.path.join(first, "train", "star", "star_train_000.jpg")).st_mtime_ns
    demo.ensure_dataset(first)  # complete: left as it is
    assert os.stat(os.path.join(first, "train", "star", "star_train_000.jpg")).st_mtime_ns == stamp
    demo.ensure_dataset(second)
    assert digest(first) == digest(second)  # seeded per image: the same bytes on every run
    os.remove(os.path.join(second, demo.MARKER))  # as after a generation killed before its marker
    os.remove(os.path.join(second, "val", "ring", "ring_val_000.jpg"))
    demo.ensure_dataset(second)
    assert digest(first) == digest(second)
    assert [n for n in os.listdir(tmp_path / "b") if n != "demo"] == []  # no temporary folder left


def test_a_folder_that_is_not_the_demo_dataset_is_never_overwritten(tmp_path):
    root = tmp_path / "demo"
    (root / "train").mkdir(parents=True)
    (root / "train" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not the demo dataset"):
        demo.ensure_dataset(str(root))
    assert (root / "train" / "notes.txt").read_text() == "mine"


def test_demo_defaults_yield_to_every_flag_given():
    import train_main

    args = train_main.get_args_parser().parse_args(["--demo", "--epochs", "3", "-a", "ghostnet"])
    defaults.apply_demo_defaults(args)
    assert (args.epochs, args.arch, args.lr, args.train_crop_size) == (3, "ghostnet", demo.DEFAULTS["lr"], 64)
    with pytest.raises(UserError, match="drop one of them"):
        defaults.apply_demo_defaults(train_main.get_args_parser().parse_args(["--demo", "--dummy"]))


@pytest.mark.slow
def test_demo_with_data_trains_on_that_data_with_the_demos_settings(tiny_data, tmp_path, monkeypatch):
    """--demo only sets defaults: --data wins over the demo dataset (which is not written), the demo's other values
    stay, and flags given win over them."""
    import train_main

    monkeypatch.chdir(tmp_path)
    args = train_main.get_args_parser().parse_args(["--demo", "--data", tiny_data, "--epochs", "1", "-a", "ghostnet",
                                                    "--width-mult", "0.5", "-j", "0", "-p", "1000"])
    with contextlib.redirect_stdout(io.StringIO()):
        launch.prepare(args)
        launch.run_single(args, lambda model, ctx: model, "main.csv")
    saved = checkpoint.load_file(str(tmp_path / "runs" / "demo" / "checkpoint.pth.tar"))
    assert saved["classes"] == sorted(os.listdir(os.path.join(tiny_data, "train")))  # tiny_data's 4, not 6 shapes
    recorded = saved["args"]
    assert (recorded["lr"], recorded["train_crop_size"], recorded["epochs"]) == (demo.DEFAULTS["lr"], 64, 1)
    assert recorded["data"] == tiny_data and not (tmp_path / "runs" / "data").exists()


@pytest.mark.slow
def test_the_quick_start_learns_far_above_chance(tmp_path):
    """The README's first command, seeded: ResNet-18 on the six demo classes (chance: 16.7%)."""
    done = run_script("train_main.py", "--demo", "--seed", "0", "-p", "100", cwd=str(tmp_path), timeout=600)
    assert "wrote the demo dataset: 600 train / 150 val images of 6 classes" in done.stdout
    with open(tmp_path / "runs" / "demo" / "main.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == demo.DEFAULTS["epochs"]
    assert max(float(r["val_top1"]) for r in rows) >= 80.0, [r["val_top1"] for r in rows]
