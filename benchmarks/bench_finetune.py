"""Benchmark: head fine-tuning with network.py, 5 epochs (``--epochs``) against 1 and against the original approach.

network.py computes the frozen backbone's features once and trains the head on them, so further epochs cost almost
nothing (target: 5 epochs at most 1.5x one epoch). The original approach ran the whole network forward (and
backward, to the head) on every image in every epoch: ``network.py --no-cache-features`` does exactly that. Each
row is one run of network.py in a fresh process, wall time from start to exit (start-up included for all rows).

    python benchmarks/bench_finetune.py                         # ResNet-50 backbone, 200 generated photo-like JPEGs
    python benchmarks/bench_finetune.py -a ghostnet --images 400

The backbone has random weights saved to a local file (no download possible here); the speed does not depend on
them. Prints one table and writes runs/benchmarks/finetune.csv (``--out`` to change).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.errors import exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse
import subprocess
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks.benchlib import add_out_flag, announce_machine, make_dataset, out_path, steady_rows, write_csv
from common.models import factory
from common.report.machine import Machine
from common.report.steadiness import LoadMeter


def timed_run(root: str, weights: str, args: argparse.Namespace, out: str, extra: list[str]) -> float:
    """Seconds of one network.py run."""
    cmd = [sys.executable, os.path.join(ROOT, "network.py"), root, "-a", args.arch, "--weights", weights,
           "-b", str(args.batch), "-j", str(args.workers), "--lr", "0.1", "--output-dir", out, "-p", "1000", *extra]
    if args.crop_size:
        cmd += ["--val-resize-size", str(args.crop_size), "--val-crop-size", str(args.crop_size)]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"network.py failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - start


def run(args: argparse.Namespace, device: torch.device) -> list[dict]:
    extra = ["--no-accel"] if args.no_accel else []
    n = str(args.epochs)
    cases = [("network.py, 1 epoch (feature cache)", ["--epochs", "1"]),
             (f"network.py, {n} epochs (feature cache)", ["--epochs", n]),
             (f"original: whole network every epoch, {n} epochs", ["--epochs", n, "--no-cache-features"])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as work:
        root = make_dataset(os.path.join(work, "photos"), args.images // 8, args.images // 8 // 4 or 1, classes=8)
        weights = os.path.join(work, "backbone.pth")
        torch.save(factory.create_model(args.arch, 1000).state_dict(), weights)
        for i, (name, flags) in enumerate(cases):
            seconds = timed_run(root, weights, args, os.path.join(work, f"run{i}"), [*flags, *extra])
            rows.append({"method": name, "arch": args.arch, "device": device.type, "seconds": seconds})
    for row in rows:
        row["vs_1_epoch"] = row["seconds"] / rows[0]["seconds"]
    return rows


def report(rows: list[dict], path: str, machine: Machine, epochs: int = 5) -> None:
    width = max(len(r["method"]) for r in rows)
    print(f"{'method':<{width}} {'seconds':>8} {'x 1 epoch':>10}")
    for r in rows:
        print(f"{r['method']:<{width}} {r['seconds']:8.1f} {r['vs_1_epoch']:9.2f}x")
    print(f"=> {rows[0]['arch']} on {rows[0]['device']}: {epochs} cached epochs cost {rows[1]['vs_1_epoch']:.2f}x one "
          f"epoch (target <= 1.5x); the original approach {rows[2]['seconds'] / rows[1]['seconds']:.1f}x network.py's")
    write_csv(rows, path, machine)
    print(f"written to {path}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="network.py head fine-tuning: 5 epochs vs 1, vs the original way.")
    parser.add_argument("-a", "--arch", default="resnet50")
    parser.add_argument("--images", type=int, default=200, help="generated training photos (default: 200)")
    parser.add_argument("-b", "--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the longer runs, against 1 (default: 5)")
    parser.add_argument("--crop-size", type=int, default=None, metavar="PX",
                        help="evaluation resize and crop size of network.py, whose features the head trains on "
                             "(default: network.py's, 224)")
    parser.add_argument("-j", "--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-accel", action="store_true", help="run on the CPU even when a GPU is present")
    add_out_flag(parser, "finetune.csv")
    return parser


def main(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_accel else "cpu")
    machine = announce_machine([device])
    with LoadMeter() as meter:
        rows = run(args, device)
    report(steady_rows(rows, meter.load, "bench_finetune", ("method",)), out_path(args.out, "finetune.csv"), machine,
           args.epochs)


if __name__ == "__main__":
    with exit_on_user_error():  # a Ctrl+C ends in one line
        main(get_args_parser().parse_args())
