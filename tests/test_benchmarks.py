"""Every benchmark starts, prints its help, and finishes a seconds-long run on tiny generated data, writing its CSV
where --out says (by default under runs/benchmarks/, never over the recorded benchmarks/results/)."""
from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys

import pytest

from benchmarks import benchlib
from tests.inprocess import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "benchmarks", "bench_*.py")))

# The smallest run of each benchmark: a few images at 32-64 px, one repeat, ResNet-18 where the model is a choice (its
# ONNX export takes a third of GhostNet's), no loader worker processes (-j 0) where a benchmark starts several runs.
TINY = {
    "bench_classify.py": ["--images", "8", "--photo-classes", "2", "-a", "resnet18", "--val-resize-size", "32",
                          "--val-crop-size", "32", "--no-accel"],
    "bench_distill.py": ["--seeds", "0", "--epochs", "1", "--teacher-epochs", "1", "--generated-per-class", "4",
                         "--sets", "generated"],
    "bench_epoch.py": ["--images", "16", "-a", "resnet18", "-b", "8", "-j", "1", "--no-accel"],
    "bench_export.py": ["--quick", "--archs", "resnet18", "--no-accel"],
    "bench_finetune.py": ["--images", "16", "-a", "resnet18", "-b", "8", "-j", "0", "--no-accel", "--epochs", "2",
                          "--crop-size", "32"],
    "bench_formats.py": ["--images", "32", "-j", "1", "-b", "8"],
    "bench_int8.py": ["--quick", "--archs", "resnet18", "--types", "u8s8", "--calib-images", "4"],
    "bench_int8_trained.py": ["--archs", "resnet18", "--epochs", "1", "--repeats", "1", "--speed-copies", "2",
                              "--calib-images", "8",
                              "--sets", "generated", "--generated-per-class", "4"],
    "bench_launchers.py": ["--crop", "32", "--epochs", "1", "-b", "8", "--images", "16", "-a", "resnet18", "-j", "0",
                           "--repeats", "1"],
    "bench_loader_memory.py": ["--entries", "1000", "-j", "1", "-b", "8"],
    "bench_pipeline.py": ["--images", "16", "-j", "1", "-b", "8", "--repeats", "2", "--crop-size", "32",
                          "--resize-size", "36"],
    "bench_train_step.py": ["--archs", "resnet18", "--size", "32", "--batch", "2", "--steps", "1", "--warmup", "1",
                            "--repeats", "1", "--no-accel"],
}
QUICK_WRITES_NO_CSV = {"bench_export.py", "bench_int8.py"}  # their --quick says so and writes nothing
UNTIMED = {"bench_distill.py", "bench_loader_memory.py"}  # accuracy and memory: no timing whose steadiness to check


def test_every_benchmark_has_a_tiny_run():
    assert sorted(TINY) == BENCHMARKS


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_help_lists_out_under_runs(name):
    """The parser builds (bench_classify's once clashed on --classes), --help exits 0, and the CSV goes under
    runs/benchmarks/ unless --out names another place."""
    parser = load_script(os.path.join("benchmarks", name)).get_args_parser()
    with pytest.raises(SystemExit) as ended:
        parser.parse_args(["--help"])
    assert ended.value.code == 0
    assert parser.parse_args(TINY[name]).out is None
    assert os.path.join("runs", "benchmarks") in parser.format_help()


def test_benchmark_results_default_under_runs():
    assert benchlib.out_path(None, "x.csv") == os.path.join("runs", "benchmarks", "x.csv")
    assert benchlib.out_path("/elsewhere/y.csv", "x.csv") == "/elsewhere/y.csv"


@pytest.mark.slow
def test_bench_classify_help_as_a_program():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_classify.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--photo-classes" in done.stdout


@pytest.mark.slow
def test_gpu_check_exits_0_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: gpu_check.sh would measure for minutes")
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OUT": str(tmp_path / "gpu")})
    assert done.returncode == 0, done.stderr
    assert "no CUDA GPU" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_tiny_run(name, tmp_path):
    """A tiny run from a folder outside the checkout, without --out: the CSV lands in that folder's
    runs/benchmarks/ and nothing in benchmarks/results/ changes."""
    recorded = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(ROOT, "benchmarks", "results", "*"))}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", name), *TINY[name]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.startswith("machine: ")
    written = glob.glob(str(tmp_path / "runs" / "benchmarks" / "*.csv"))
    if name in QUICK_WRITES_NO_CSV:
        assert written == [] and "not written" in done.stdout
    else:
        assert len(written) == 1, os.listdir(tmp_path)
        with open(written[0]) as f:
            rows = list(csv.DictReader(f))
        assert rows and all(row["cpu"] for row in rows)
        if name not in UNTIMED:
            check_steadiness(rows, done.stdout)
    if name not in UNTIMED:
        assert "=> steadiness: " in done.stdout
    assert {p: os.path.getmtime(p) for p in recorded} == recorded


def check_steadiness(rows: list[dict], stdout: str) -> None:
    """Each timed row says the load of other processes and whether it is reliable; one warning line was printed
    per unreliable row; the spread of repeats is there where a figure was timed more than once."""
    assert all(row["reliable"] in ("yes", "no") and float(row["other_cores"]) >= 0 for row in rows)
    warnings = [line for line in stdout.splitlines() if line.startswith("warning: bench_")]
    assert len(warnings) == sum(row["reliable"] == "no" for row in rows)
    for row in rows:
        spreads = [float(v) for k, v in row.items() if k.endswith("_spread_pct") and v]
        assert len(spreads) == (int(row.get("repeats", 1)) > 1) * len([k for k in row if k.endswith("_spread_pct")])
