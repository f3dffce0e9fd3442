"""The four training scripts, end to end on a tiny generated ImageFolder on the CPU."""
from __future__ import annotations

import csv
import os
import re
import shutil
import sys

import pytest
import torch

from common.errors import UserError
from common.models import checkpoint, factory
from common.train import engine
from common.train.watch import CSV_FIELDS
from conftest import COLORS, SMALL, make_image_folder, run_script

TRAIN = ["-a", "ghostnet", "-b", "16", "--lr", "0.02", "--seed", "1", "--no-accel", *SMALL]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
RESULT = re.compile(r"\* Acc@1 ([\d.]+) Acc@5 ([\d.]+) Loss ([\d.]+) on (\d+) images")

# script, launcher, extra flags, CSV log name
LAUNCHERS = {
    "main": ("train_main.py", None, [], "main.csv"),
    "dataparallel": ("train_dataparallel.py", None, [], "dataparallel.csv"),
    "multiprocessing": ("train_multiprocessing.py", None, ["--nprocs", "2"], "multiprocessing_distributed.csv"),
    "distributed": ("train_distributed.py", TORCHRUN, [], "distributed.csv"),
}


def results(stdout: str) -> list[tuple[float, float, float, int]]:
    """Every ``* Acc@1 .. Acc@5 .. Loss .. on N images`` line a run printed."""
    return [(float(a), float(b), float(c), int(n)) for a, b, c, n in RESULT.findall(stdout)]


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def learnable_data(tmp_path_factory) -> str:
    """4 colour classes, 100 train / 10 val images each: enough for 2 epochs of GhostNet to beat chance."""
    return make_image_folder(str(tmp_path_factory.mktemp("learnable")), train_per_class=100, val_per_class=10)


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> str:
    """3 classes with 7 val images each: 21 images divide neither over 2 ranks nor into batches of 8."""
    return make_image_folder(str(tmp_path_factory.mktemp("odd")), train_per_class=12, val_per_class=7,
                             classes=((200, 30, 30), (30, 200, 30), (30, 30, 200)))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAUNCHERS))
def test_script_trains_ghostnet_three_epochs_above_chance_and_writes_loadable_checkpoints(name, learnable_data,
                                                                                         tmp_path):
    script, launcher, extra, log_name = LAUNCHERS[name]
    out = str(tmp_path)  # three epochs: after two, BatchNorm's running statistics may still hold the val at chance
    proc = run_script(script, learnable_data, *TRAIN, *extra, "--epochs", "3", "--output-dir", out, launcher=launcher)
    final = results(proc.stdout)
    assert len(final) == 3 and final[-1][3] == 40, proc.stdout
    assert max(r[0] for r in final) > 25.0, f"val top-1 never above chance (4 classes): {final}"
    assert sorted(f for f in os.listdir(out) if not f.startswith(".")) == sorted(
        ["checkpoint.pth.tar", "model_best.pth.tar", log_name, log_name.replace(".csv", "_steps.csv")])
    ckpt = torch.load(os.path.join(out, "checkpoint.pth.tar"), map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["arch"] == "ghostnet" and isinstance(ckpt["best_acc1"], float)
    assert ckpt["classes"] == ["class0", "class1", "class2", "class3"] and isinstance(ckpt["args"], dict)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    factory.create_model("ghostnet", 4).load_state_dict(ckpt["state_dict"], strict=True)
    rows = read_csv(os.path.join(out, log_name))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and tuple(rows[0]) == CSV_FIELDS
    assert float(rows[2]["val_top1"]) == pytest.approx(final[2][0], abs=1e-3) and rows[2]["val_images"] == "40"


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint_and_evaluate_reports_it(tiny_data, tmp_path):
    out = str(tmp_path)
    run_script("train_main.py", tiny_data, *TRAIN, "--epochs", "1", "--output-dir", out)
    first = checkpoint.load_file(os.path.join(out, "checkpoint.pth.tar"))
    shutil.copy(os.path.join(out, "checkpoint.pth.tar"), os.path.join(out, "epoch1.pth.tar"))
    proc = run_script("train_main.py", tiny_data, *TRAIN, "--epochs", "2", "--output-dir", out,
                      "--resume", os.path.join(out, "epoch1.pth.tar"))
    assert "resumed from" in proc.stdout and len(results(proc.stdout)) == 1  # only epoch 1 ran
    second = checkpoint.load_file(os.path.join(out, "checkpoint.pth.tar"))
    assert second["epoch"] == 2 and second["best_acc1"] >= first["best_acc1"]
    assert second["scheduler"]["last_epoch"] == 2 * first["scheduler"]["last_epoch"]
    assert [r["epoch"] for r in read_csv(os.path.join(out, "main.csv"))] == ["0", "1"]
    evaluated = run_script("train_main.py", tiny_data, *TRAIN, "-e", "--resume",
                           os.path.join(out, "checkpoint.pth.tar"), "--output-dir", out)
    assert results(evaluated.stdout)[0][0] == pytest.approx(results(proc.stdout)[0][0])


@pytest.mark.slow
def test_two_processes_count_the_same_validation_images_as_one(odd_data, tmp_path):
    out = str(tmp_path)
    single = run_script("train_main.py", odd_data, *TRAIN, "--epochs", "1", "-b", "8", "--output-dir", out)
    ckpt = os.path.join(out, "checkpoint.pth.tar")
    one = results(run_script("train_main.py", odd_data, *TRAIN, "-b", "8", "-e", "--resume", ckpt,
                             "--output-dir", out).stdout)[0]
    spawned = results(run_script("train_multiprocessing.py", odd_data, *TRAIN, "-b", "8", "--nprocs", "2", "-e",
                                 "--resume", ckpt, "--output-dir", out).stdout)[0]
    torchrun = results(run_script("train_distributed.py", odd_data, *TRAIN, "-b", "8", "-e", "--resume", ckpt,
                                  "--output-dir", out, launcher=TORCHRUN).stdout)[0]
    assert results(single.stdout)[0][3] == one[3] == spawned[3] == torchrun[3] == 21
    for other in (spawned, torchrun):
        assert other[:2] == one[:2] and other[2] == pytest.approx(one[2], rel=1e-4)


@pytest.mark.slow
def test_dummy_data_run_ends_with_a_checkpoint(tmp_path):
    run_script("train_main.py", "--dummy", "-a", "ghostnet", "--epochs", "1", "-b", "32", *SMALL,
               "--output-dir", str(tmp_path))
    assert checkpoint.load_file(str(tmp_path / "model_best.pth.tar"))["classes"][:2] == ["class0000", "class0001"]


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    (["/nonexistent/dir"], "does not exist"),
    (["--dummy", "-a", "ghostnett"], "Did you mean ghostnet"),
    (["--dummy", "--resume", "/nonexistent.pth.tar"], "--resume"),
])
def test_user_errors_are_one_line_without_traceback(argv, message, tmp_path):
    proc = run_script("train_main.py", *argv, check=False, cwd=str(tmp_path))  # not the checkout's runs/train
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


BN_CASES = [
    ("train_main.py", ["-b", "1"], "-b 1 over 1 process(es) leaves a pass with 1"),
    ("train_main.py", ["-b", "4", "--accum-steps", "4"], "in --accum-steps 4 micro-batches leaves a pass with 1"),
    ("train_multiprocessing.py", ["-b", "2", "--nprocs", "2"], "-b 2 over 2 process(es) leaves a pass with 1"),
    ("train_main.py", ["-b", "16", "--data", "ONE"], "on a train set of 1 images leaves a pass with 1"),
]


@pytest.mark.slow
@pytest.mark.parametrize("script, flags, words", BN_CASES, ids=["b1", "accum", "two-procs", "one-image"])
def test_a_batchnorm_model_is_never_given_a_single_image_pass(tiny_data, tmp_path, script, flags, words):
    if "ONE" in flags:
        flags = [f if f != "ONE" else make_image_folder(str(tmp_path / "one"), 1, 1, COLORS[:1]) for f in flags]
    else:
        flags = [tiny_data, *flags]
    base = [f for f in TRAIN if f not in ("-b", "16")]
    done = run_script(script, *base, *flags, "--epochs", "1", "--output-dir", str(tmp_path / "out"), check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: GhostNet has BatchNorm layers, which need at least 2 images per forward pass")
    assert words in lines[0] and not os.path.exists(tmp_path / "out" / "checkpoint.pth.tar")


def test_the_batchnorm_rule_spares_models_without_batchnorm_and_counts_dataparallel_replicas():

    engine.check_batchnorm_batch(factory.create_model("squeezenet1_1", 4), 100, 1, 1, 1)  # no BatchNorm: allowed
    ghostnet = factory.create_model("ghostnet", 4)
    engine.check_batchnorm_batch(ghostnet, 100, 2, 1, 1)
    replicated = torch.nn.DataParallel(ghostnet)
    replicated.device_ids = [0, 1, 2]  # as on three GPUs: 5 images are split 2, 2, 1
    with pytest.raises(UserError, match="over 1 process\\(es\\) and 3 GPUs leaves a pass with 1"):
        engine.check_batchnorm_batch(replicated, 100, 5, 1, 1)
