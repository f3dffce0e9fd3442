"""Ctrl+C and SIGTERM during evaluation (test.py), sorting (classify_test_data.py) and head training (network.py):
a clean stop with exit status 128 + signal, one line on stderr, no traceback and no process left; what was done is
kept (the sorter's manifest, network.py's checkpoint), and running the command again finishes the rest.

    python -m pytest tests/test_interrupt.py -q
"""
from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from common.errors import exit_on_user_error
from common.models import checkpoint
from common.report import curves
from conftest import ROOT, SMALL, make_image_folder, run_script
from inprocess import call_main
from test_distributed import processes_in_group

# 40 images at 128 px, one per batch, with a loader worker: slow enough that a signal sent after the first batch
# lands mid-run, and the worker is there to be left behind if the stop were not clean.
EVAL = ["--val-resize-size", "128", "--val-crop-size", "128", "-b", "1", "-j", "1"]


def interrupt(script: str, args: list[str], marker: str, sig: int, group: bool) -> tuple[int, str, str]:
    """Run ``script``, send ``sig`` once a stdout line starts with ``marker`` (to the whole process group, as
    Ctrl+C in a terminal does, or to the main process only, as ``kill PID`` does); return status, stdout, stderr."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(marker):
                break
        assert proc.poll() is None, "".join(lines)
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.5)
    assert processes_in_group(proc.pid) == []  # no loader worker outlives the stop
    return proc.returncode, "".join(lines) + stdout, stderr


def assert_clean_stop(status: int, stderr: str, sig: int) -> None:
    assert status == 128 + sig, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith(f"=> stopped by {signal.Signals(sig).name} after ")


@pytest.mark.slow
def test_ctrl_c_during_a_folder_evaluation_stops_cleanly_without_a_report(trained_ckpt, tiny_data, tmp_path):
    args = ["--ckpt", trained_ckpt, "--data", tiny_data, *EVAL, "--output-dir", str(tmp_path)]
    status, _, stderr = interrupt("test.py", args, "Predict: [", signal.SIGINT, group=True)
    assert_clean_stop(status, stderr, signal.SIGINT)
    assert "of 40 images" in stderr and "nothing was written" in stderr
    assert not os.path.exists(tmp_path / "predictions.csv")


def tree(folder: str) -> dict[str, str]:
    """Relative path -> sha256 of every file below ``folder``."""
    out = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.mark.slow
def test_sigterm_while_sorting_keeps_a_manifest_and_a_rerun_ends_as_an_uninterrupted_run(trained_ckpt, tiny_data,
                                                                                          tmp_path):
    out, fresh = str(tmp_path / "out"), str(tmp_path / "fresh")
    args = ["--ckpt", trained_ckpt, "--data", tiny_data, *EVAL, "--out", out]
    # to the whole process group, as SLURM sends it to a job step: the loader worker dies of it at once
    status, _, stderr = interrupt("classify_test_data.py", args, "Predict: [", signal.SIGTERM, group=True)
    assert_clean_stop(status, stderr, signal.SIGTERM)
    assert "listed in manifest.csv" in stderr and "run the same command again" in stderr
    with open(os.path.join(out, "manifest.csv"), newline="") as f:
        placed = list(csv.DictReader(f))
    assert 0 < len(placed) < 40 and f"{len(placed)} placed into" in stderr
    for row in placed:  # what the manifest lists is in place, and nothing else is
        assert os.path.samefile(row["source"], os.path.join(out, row["destination"]))
    assert len([name for name in tree(out) if "/right/" in name or "/wrong/" in name]) == len(placed)
    rerun = run_script("classify_test_data.py", *args)
    assert f"{len(placed)} already in place" in rerun.stdout
    call_main("classify_test_data.py", *args[:-1], fresh)
    assert tree(out) == tree(fresh)


@pytest.mark.slow
def test_sigterm_stops_network_py_with_a_checkpoint_that_resume_continues(trained_ckpt, tmp_path):
    root = make_image_folder(str(tmp_path / "data"), train_per_class=8, val_per_class=2)  # 8 steps of 4 images
    flags = [root, "-a", "ghostnet", "--weights", trained_ckpt, "-b", "4", "--lr", "0.5", "--seed", "0",
             "--no-cache-features", *SMALL[:6], "-j", "1", "-p", "1", "--output-dir", str(tmp_path / "out")]
    status, _, stderr = interrupt("network.py", [*flags, "--epochs", "100"], "Epoch: [0][0/", signal.SIGTERM,
                                  group=False)
    assert status == 128 + signal.SIGTERM and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert "stopped by SIGTERM during epoch 0" in stderr and "--resume auto" in stderr
    ckpt = checkpoint.load_file(str(tmp_path / "out" / "checkpoint.pth.tar"))
    assert ckpt["epoch"] == 0 and 1 <= ckpt["step"] < 8
    resumed = run_script("network.py", *flags, "--epochs", "1", "--resume", "auto")
    assert f"epoch 0, step {ckpt['step']}" in resumed.stdout
    assert checkpoint.load_file(str(tmp_path / "out" / "checkpoint.pth.tar"))["epoch"] == 1
    # the record says where it was resumed: the row of epoch 0 covers the steps from there on, and the curves say so
    log = str(tmp_path / "out" / "network.csv")
    with open(log, newline="") as f:
        assert [row["resumed_at_step"] for row in csv.DictReader(f)] == [str(ckpt["step"])]
    assert curves.title_of(curves.read_log(log)).endswith(f"(1 epoch; resumed at epoch 0 step {ckpt['step']})")


def test_a_ctrl_c_that_no_loop_caught_exits_130_in_one_line(capsys):
    # before any stoppable loop started (model loading, scanning the folder), or a second Ctrl+C
    with pytest.raises(SystemExit) as exc, exit_on_user_error():
        raise KeyboardInterrupt
    assert exc.value.code == 130 and capsys.readouterr().err == "=> interrupted by Ctrl+C (SIGINT)\n"


@pytest.mark.slow
def test_a_loader_worker_killed_from_outside_ends_in_one_line_naming_memory_and_the_checkpoint(tiny_data, tmp_path):
    # As the kernel's out-of-memory killer does: SIGKILL to the loader workers, not to the training process.
    out = str(tmp_path / "out")
    flags = [tiny_data, "-a", "ghostnet", "-b", "16", "--seed", "0", "--no-accel", "--epochs", "50", *SMALL[:6],
             "-j", "1", "-p", "1", "--output-dir", out]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_main.py"), *flags], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in proc.stdout:
            if line.startswith("Epoch: [1][ 3/"):  # epoch 0's checkpoint is written
                break
        for pid in processes_in_group(proc.pid):
            if pid != proc.pid:
                os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    last = os.path.join(out, "checkpoint.pth.tar")
    assert proc.returncode == 1 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    # torch's own words in the parentheses depend on which end notices first: the worker's pid and signal, an
    # EOFError on its queue, or a connection reset; the project's line around them does not
    assert stderr.startswith("error: a data loading worker died (")
    assert "lower -j/--workers or -b/--batch-size" in stderr
    assert f"the last checkpoint, {last}, with --resume auto" in stderr
    assert checkpoint.load_file(last)["epoch"] == 1


@pytest.mark.parametrize("script", ["train_main.py", "test.py", "classify_test_data.py", "network.py", "ghost_net.py",
                                    "benchmarks/bench_export.py"])
def test_ctrl_c_while_the_script_starts_prints_one_line(script):
    # -X importtime reports each module as its import ends: SIGINT goes out once torch._C is loaded, that is
    # inside "import torch", which takes a second or more; the report's own lines are left out of the comparison.
    proc = subprocess.Popen([sys.executable, "-X", "importtime", os.path.join(ROOT, script), "--help"], cwd=ROOT,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stderr:
        if line.split("|")[-1].strip() == "torch._C":
            proc.send_signal(signal.SIGINT)
            break
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stdout == "", (proc.returncode, stdout)
    assert [line for line in stderr.splitlines() if not line.startswith("import time:")] == [
        "=> interrupted by Ctrl+C (SIGINT)"]
