"""Benchmark: one training epoch end to end, train_main.py against the PyTorch ImageNet example's way.

Reference: a plain loop as in pytorch/examples imagenet/main.py: torchvision ImageFolder with PIL, RandomResizedCrop +
flip + ToTensor + Normalize in the workers, float batches, an fp32 NCHW model, SGD. Project: ``train_main.py`` with
its defaults (uint8 pipeline normalised per batch, channels_last, bf16 autocast where it pays). Both read the same
JPEG folder with the same batch size and workers; each side's training images/s is taken from the training pass
alone (the project's CSV ``images_per_s``; the reference loop timed the same way), so start-up and validation are
left out of both.

    python benchmarks/bench_epoch.py                          # ResNet-50, 1,000 generated photo-like JPEGs
    python benchmarks/bench_epoch.py --images 256 --arch ghostnet
    python benchmarks/bench_epoch.py --data /data/imagenet-subset   # real photos: DIR/train/<class>/*.JPEG

Prints one table and writes runs/benchmarks/epoch.csv (``--out`` to change).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.errors import exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse
import csv
import subprocess
import tempfile
import time

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from torchvision import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks.benchlib import add_out_flag, announce_machine, make_dataset, out_path, steady_rows, write_csv
from common.data import transforms
from common.models import factory
from common.report.machine import Machine
from common.report.steadiness import LoadMeter


def reference_epoch(train_dir: str, arch: str, batch: int, workers: int, device: torch.device) -> float:
    """Training images/s of the ImageNet example's loop over ``train_dir`` (one epoch, fp32 NCHW)."""
    dataset = datasets.ImageFolder(train_dir, transforms.train_transform(transforms.AugmentConfig(), fast=False))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = factory.create_model(arch, len(dataset.classes)).to(device).train()
    criterion = nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    images, start = 0, time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the example reads the loss every step for its meters
        images += len(y)
    return images / (time.perf_counter() - start)


def project_epoch(root: str, arch: str, batch: int, workers: int, out: str, extra: list[str]) -> tuple[float, str]:
    """Training images/s of ``train_main.py`` for one epoch, from its CSV; and the precision it chose."""
    cmd = [sys.executable, os.path.join(ROOT, "train_main.py"), root, "-a", arch, "--epochs", "1", "-b", str(batch),
           "-j", str(workers), "--output-dir", out, "-p", "1000", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"train_main.py failed:\n{result.stdout}\n{result.stderr}")
    with open(os.path.join(out, "main.csv"), newline="") as f:
        row = list(csv.DictReader(f))[-1]
    chosen = next((line.rsplit("; ", 2)[-2] for line in result.stdout.splitlines() if line.startswith("=> data:")),
                  "?")
    return float(row["images_per_s"]), chosen


def run(args: argparse.Namespace, device: torch.device) -> list[dict]:
    extra = ["--no-accel"] if args.no_accel else []
    with tempfile.TemporaryDirectory(prefix="bench_epoch_") as work:
        root = args.data or make_dataset(os.path.join(work, "photos"), args.images // 4, 2)
        ref = reference_epoch(os.path.join(root, "train"), args.arch, args.batch, args.workers, device)
        fast, chosen = project_epoch(root, args.arch, args.batch, args.workers, os.path.join(work, "run"), extra)
    images = "real photos in " + args.data if args.data else f"{args.images} generated photo-like JPEGs"
    return [{"arch": args.arch, "images": images, "batch": args.batch, "workers": args.workers,
             "device": device.type, "reference": "ImageFolder + PIL transforms, fp32 NCHW",
             "reference_img_s": ref, "project": f"train_main.py defaults ({chosen})", "project_img_s": fast,
             "speedup": fast / ref}]


def report(rows: list[dict], path: str, machine: Machine) -> None:
    for r in rows:
        print(f"{r['arch']} on {r['images']}, batch {r['batch']}, -j {r['workers']}, {r['device']}:")
        print(f"  reference ({r['reference']}): {r['reference_img_s']:.2f} images/s")
        print(f"  project ({r['project']}): {r['project_img_s']:.2f} images/s")
        print(f"  speedup {r['speedup']:.2f}x")
    write_csv(rows, path, machine)
    print(f"written to {path}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="One training epoch: train_main.py vs the ImageNet example's loop.")
    parser.add_argument("--data", default=None, help="dataset root with train/<class>/* (default: generated)")
    parser.add_argument("--images", type=int, default=1000, help="generated training photos (default: 1000)")
    parser.add_argument("-a", "--arch", default="resnet50")
    parser.add_argument("-b", "--batch", type=int, default=32)
    parser.add_argument("-j", "--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-accel", action="store_true", help="run on the CPU even when a GPU is present")
    add_out_flag(parser, "epoch.csv")
    return parser


def main(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_accel else "cpu")
    machine = announce_machine([device])
    with LoadMeter() as meter:
        rows = run(args, device)
    report(steady_rows(rows, meter.load, "bench_epoch", ("arch",)), out_path(args.out, "epoch.csv"), machine)


if __name__ == "__main__":
    with exit_on_user_error():  # a Ctrl+C ends in one line
        main(get_args_parser().parse_args())
