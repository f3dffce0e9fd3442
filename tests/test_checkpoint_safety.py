"""Checkpoints survive a kill mid-write and a failed write mid-run, and a resumed run is bit-identical to one that
went straight through."""
from __future__ import annotations

import glob
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from common.errors import UserError
from common.models import checkpoint, loading
from common.report import curves
from conftest import ROOT, SMALL, make_image_folder, run_script

pytestmark = pytest.mark.slow  # every test trains, or damages and loads trained_ckpt (a training run of 5-90 s)

TRAIN = ["-a", "ghostnet", "-b", "16", "--lr", "0.02", "--seed", "0", "--no-accel", *SMALL[:6], "-j", "1",
         "-p", "100"]


def test_one_epoch_then_resume_equals_two_epochs_bit_for_bit(tiny_data, tmp_path):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    run_script("train_main.py", tiny_data, *TRAIN, "--epochs", "2", "--output-dir", straight)
    run_script("train_main.py", tiny_data, *TRAIN, "--epochs", "1", "--output-dir", split)
    run_script("train_main.py", tiny_data, *TRAIN, "--epochs", "2", "--output-dir", split, "--resume", "auto")
    a = checkpoint.load_file(os.path.join(straight, "checkpoint.pth.tar"))
    b = checkpoint.load_file(os.path.join(split, "checkpoint.pth.tar"))
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:  # weights and BatchNorm buffers
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    momentum = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    assert all(torch.equal(x, s["momentum_buffer"]) for x, s in zip(momentum, b["optimizer"]["state"].values()))
    straight_log, split_log = (curves.read_log(os.path.join(d, "main.csv")) for d in (straight, split))
    assert curves.best_val_top1(straight_log) == curves.best_val_top1(split_log)  # over both parts of the run
    assert (straight_log.resumes, split_log.resumes) == ((), ((1, 0),))
    assert curves.title_of(split_log) == curves.title_of(straight_log)[:-1] + "; resumed at epoch 1)"


WRITER = """
import sys, torch
sys.path.insert(0, {root!r})
from common.models import checkpoint
state = {{"epoch": 99, "state_dict": {{"w": torch.randn(96_000_000)}}}}  # ~380 MB, long enough to be caught
checkpoint.save_checkpoint(state, {out!r}, is_best=True)
"""


def test_kill_during_a_large_save_keeps_the_previous_checkpoint_and_resume_works(tiny_data, tmp_path):
    out = str(tmp_path)
    run_script("train_main.py", tiny_data, *TRAIN, "--epochs", "1", "--output-dir", out)
    before = checkpoint.load_file(os.path.join(out, "checkpoint.pth.tar"))
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(root=ROOT, out=out)])
    deadline = time.monotonic() + 60
    while not any(os.path.getsize(p) > 1_000_000 for p in glob.glob(os.path.join(out, ".tmp-*.part"))):
        assert writer.poll() is None and time.monotonic() < deadline, "the writer finished before it was killed"
        time.sleep(0.005)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    after = checkpoint.load_file(os.path.join(out, "checkpoint.pth.tar"))
    assert after["epoch"] == before["epoch"] == 1
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    resumed = run_script("train_main.py", tiny_data, *TRAIN, "--epochs", "2", "--output-dir", out, "--resume", "auto")
    assert "resumed from" in resumed.stdout
    assert checkpoint.load_file(os.path.join(out, "checkpoint.pth.tar"))["epoch"] == 2


def test_a_save_that_fails_mid_run_keeps_the_previous_checkpoint_and_the_next_save_retries(tmp_path):
    # A real failing write: after epoch 0's checkpoints, the process's file size limit (RLIMIT_FSIZE, set from here
    # with prlimit) drops below a checkpoint's size, so the epoch 1 save fails with EFBIG ("File too large"), as a
    # full disk fails with ENOSPC (Python ignores SIGXFSZ, which would otherwise kill the process). Lifted again,
    # the epoch 2 save goes through.
    out, unlimited = str(tmp_path / "out"), resource.getrlimit(resource.RLIMIT_FSIZE)
    root = make_image_folder(str(tmp_path / "data"), train_per_class=8, val_per_class=2)  # 2 steps per epoch
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_main.py"), root, *TRAIN, "--epochs", "3",
                             "-p", "1", "--output-dir", out], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output, failures = [], []
    try:
        for line in proc.stdout:
            output.append(line)
            if line.startswith("Epoch: [1][0/"):  # epoch 0's checkpoint and model_best are written
                resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1_000_000, unlimited[1]))
            elif line.startswith("=> could not write"):
                failures.append(line)
                kept = torch.load(os.path.join(out, "checkpoint.pth.tar"), map_location="cpu", weights_only=True)
                leftovers = glob.glob(os.path.join(out, ".tmp*")) + glob.glob(os.path.join(out, "*.tmp"))
                resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, unlimited)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, "".join(output)
    assert len(failures) == 1, "".join(output)
    assert "checkpoint.pth.tar (File too large); the previous one is kept" in failures[0]
    assert kept["epoch"] == 1 and leftovers == []  # as it was during the failed save, with nothing left behind
    assert checkpoint.load_file(os.path.join(out, "checkpoint.pth.tar"))["epoch"] == 3  # the next save went through
    assert "Traceback" not in "".join(output)


# ---------------------------------------------------------------------------------------------------- damaged files

DAMAGE = [
    ("width_mult", lambda c: c["args"].update(width_mult=1e6), "'args.width_mult' entry is 1000000.0"),
    ("crop", lambda c: c["args"].update(val_crop_size=10**6), "'args.val_crop_size' entry is 1000000"),
    ("best", lambda c: c.update(best_acc1=float("nan")), "'best_acc1' entry is nan, not a percentage"),
    ("epoch", lambda c: c.update(epoch=-1), "'epoch' entry is -1"),
    ("classes", lambda c: c.update(classes=["a", "a", "b", "c"]), "'classes' entry is ['a', 'a', 'b', 'c']"),
    ("no-classes", lambda c: c.update(classes=[]), "'classes' entry is [], not a non-empty list"),
    ("epoch-text", lambda c: c.update(epoch="three"), "'epoch' entry is 'three', not a whole number"),
    ("width-text", lambda c: c["args"].update(width_mult="wide"), "'args.width_mult' entry is 'wide'"),
    ("optimizer", lambda c: c.update(optimizer="sgd"), "'optimizer' entry is 'sgd'"),
    ("arch", lambda c: c.update(arch=7), "'arch' entry is 7, not an architecture name"),
]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_checkpoint_field_is_named_before_anything_is_built(trained_ckpt, tmp_path, damage):
    _name, tamper, words = damage
    ckpt = checkpoint.load_file(trained_ckpt)
    tamper(ckpt)
    path = str(tmp_path / "damaged.pth.tar")
    torch.save(ckpt, path)
    with pytest.raises(UserError) as err:
        loading.load_model(loading.ModelSource(path))
    assert words in str(err.value) and str(err.value).startswith(path) and "\n" not in str(err.value)


def test_a_checkpoint_that_does_not_fit_the_run_is_refused_in_one_line_on_resume(tiny_data, trained_ckpt, tmp_path):
    ckpt = checkpoint.load_file(trained_ckpt)
    ckpt["optimizer"]["param_groups"] = ckpt["optimizer"]["param_groups"][:1]  # another optimizer's groups
    ckpt["optimizer"]["param_groups"][0]["params"] = [0]
    bad_optimizer = str(tmp_path / "optimizer.pth.tar")
    torch.save(ckpt, bad_optimizer)
    common = [*TRAIN, "--epochs", "2", "--output-dir", str(tmp_path / "out")]
    for resume, words in ((bad_optimizer, f"{bad_optimizer}: its optimizer state does not fit this run"),
                          (trained_ckpt, f"{trained_ckpt} does not fit this model (")):
        extra = ["--width-mult", "0.5"] if resume == trained_ckpt else []
        done = run_script("train_main.py", tiny_data, *common, "--resume", resume, *extra, check=False)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and words in lines[0], done.stderr


def test_network_py_refuses_to_resume_a_checkpoint_of_another_setting(tiny_data, trained_ckpt, tmp_path):
    # trained_ckpt is a whole-model run of train_main.py: its optimizer holds every weight, network.py's the head only
    done = run_script("network.py", tiny_data, "-a", "ghostnet", "--weights", trained_ckpt, "--resume", trained_ckpt,
                      "--epochs", "2", "-b", "16", *SMALL, "--output-dir", str(tmp_path / "probe"), check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {trained_ckpt}: its optimizer state does not fit this run")
    assert not os.path.exists(tmp_path / "probe" / "checkpoint.pth.tar")
