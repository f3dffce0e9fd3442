"""Benchmark: the four training launchers on the same data and model, one CSV row each.

Each launcher trains the same epochs on the same images (a generated ImageFolder of 500x375 JPEG photos-like
images, or your folder), and the row holds what its CSV log says about the last epoch (images/s, epoch seconds,
seconds waiting for data) plus the peak resident memory of its largest process. DDP launchers use --nprocs
processes (CPU: gloo); on GPUs, one per GPU. The four launchers run in --repeats rounds, one after the other in each
round so that a change in the machine's load reaches all of them; each row is the launcher's fastest round, with
the spread of its images/s over the rounds.

    python benchmarks/bench_launchers.py                                   # CPU, 2 processes for DDP, GhostNet 64 px
    python benchmarks/bench_launchers.py /imagenet-subset -a resnet50 --crop 224 --epochs 2 --nprocs 4

Prints one table and writes runs/benchmarks/bench_launchers_<arch>_<device>.csv (``--out`` to change).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.errors import exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse
import csv
import subprocess
import tempfile

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks.benchlib import add_out_flag, announce_machine, out_path, spread_fields, steady_rows, write_csv
from common.cli import options
from common.report.steadiness import LoadMeter

LAUNCHERS = ("train_main.py", "train_dataparallel.py", "train_multiprocessing.py", "train_distributed.py")
LOGS = {"train_main.py": "main.csv", "train_dataparallel.py": "dataparallel.csv",
        "train_multiprocessing.py": "multiprocessing_distributed.csv", "train_distributed.py": "distributed.csv"}
# Runs a command and prints the peak RSS (KiB) of the largest process it waited for, itself or a descendant.
PEAK_RSS = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
            "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Compare the four training launchers on one dataset.")
    parser.add_argument("data", nargs="?", default=None, help="ImageFolder root (default: generated JPEGs)")
    parser.add_argument("-a", "--arch", default="ghostnet")
    parser.add_argument("--crop", type=int, default=64, help="train/val crop size (default: 64)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per launcher; the last is reported")
    parser.add_argument("-b", "--batch-size", type=int, default=32, help="global batch (default: 32)")
    parser.add_argument("--nprocs", type=int, default=2, help="DDP processes on the CPU (default: 2)")
    parser.add_argument("-j", "--workers", type=int, default=1, help="loader workers per process (default: 1)")
    parser.add_argument("--images", type=int, default=400, help="generated train images (default: 400)")
    parser.add_argument("--repeats", type=options.POSITIVE_INT, default=3, metavar="N",
                        help="rounds of the four launchers; each row is the fastest round (default: 3)")
    add_out_flag(parser, "bench_launchers_<arch>_<device>.csv")
    return parser


def make_photos(root: str, n_train: int, classes: int = 4) -> str:
    """Smooth random-colour 500x375 JPEGs, about ImageNet's size, in train/ and val/ (a quarter as many)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", max(classes, n_train // 4))):
        for i in range(n):
            folder = os.path.join(root, split, f"class{i % classes}")
            os.makedirs(folder, exist_ok=True)
            small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
            Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(os.path.join(folder, f"{i}.jpg"), quality=90)
    return root


def run_launcher(script: str, args: argparse.Namespace, data: str, out: str, accel: bool) -> dict:
    size = str(args.crop)
    flags = [data, "-a", args.arch, "--epochs", str(args.epochs), "-b", str(args.batch_size), "-j",
             str(args.workers), "--train-crop-size", size, "--val-resize-size", size, "--val-crop-size", size,
             "-p", "1000", "--output-dir", out, "--seed", "0"] + ([] if accel else ["--no-accel"])
    if script == "train_multiprocessing.py" and not accel:
        flags += ["--nprocs", str(args.nprocs)]
    nprocs = torch.cuda.device_count() if accel else args.nprocs
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nprocs)]
                if script == "train_distributed.py" else [sys.executable])
    cmd = [sys.executable, "-c", PEAK_RSS, *launcher, os.path.join(ROOT, script), *flags]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    peak_kb = int(proc.stdout.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    with open(os.path.join(out, LOGS[script]), newline="") as f:
        last = list(csv.DictReader(f))[-1]
    processes = 1 if script in ("train_main.py", "train_dataparallel.py") else nprocs
    return {"launcher": script, "processes": processes, "images_per_s": float(last["images_per_s"]),
            "epoch_seconds": float(last["epoch_seconds"]), "data_seconds": float(last["data_seconds"]),
            "peak_rss_mb": peak_kb / 1024, "val_top1": float(last["val_top1"])}


def fastest(runs: tuple[dict, ...]) -> dict:
    """The row of the run with the most images/s, with the number of runs and their images/s spread."""
    best = max(runs, key=lambda r: r["images_per_s"])
    return {**best, "repeats": len(runs), **spread_fields({"images_per_s": [r["images_per_s"] for r in runs]})}


def main(args: argparse.Namespace) -> list[dict]:
    accel = torch.cuda.is_available()
    device = f"cuda{torch.cuda.device_count()}" if accel else "cpu"
    machine = announce_machine([torch.device("cuda", i) for i in range(torch.cuda.device_count())])
    with tempfile.TemporaryDirectory() as tmp, LoadMeter() as meter:
        data = args.data or make_photos(os.path.join(tmp, "photos"), args.images)
        rounds = [[run_launcher(s, args, data, os.path.join(tmp, f"{s}_{r}"), accel) for s in LAUNCHERS]
                  for r in range(args.repeats)]
        rows = [fastest(runs) for runs in zip(*rounds)]
    print(f"{args.arch}, {args.crop} px, global batch {args.batch_size}, -j {args.workers}, {device}; last of "
          f"{args.epochs} epochs, fastest of {args.repeats} round(s)")
    print(f"{'launcher':<26}{'procs':>6}{'images/s':>10}{'epoch s':>9}{'data s':>8}{'peak MB':>9}{'val top-1':>10}")
    for r in rows:
        print(f"{r['launcher']:<26}{r['processes']:>6}{r['images_per_s']:>10.1f}{r['epoch_seconds']:>9.2f}"
              f"{r['data_seconds']:>8.2f}{r['peak_rss_mb']:>9.0f}{r['val_top1']:>10.2f}")
    path = out_path(args.out, f"bench_launchers_{args.arch}_{device}.csv")
    rows = steady_rows(rows, meter.load, "bench_launchers", ("launcher",))
    write_csv(rows, path, machine)
    print(f"=> {path}")
    return rows


if __name__ == "__main__":
    with exit_on_user_error():  # a Ctrl+C ends in one line
        main(get_args_parser().parse_args())
