"""Benchmark: training-step throughput, project defaults against fp32 NCHW, and the loss they reach.

Both sides run ``common.train_step.TrainStep`` (SGD, momentum 0.9) on the same seeded model and the same batches of
photo-like images (already decoded and augmented, so that only the step is timed). Reference: fp32, NCHW, as in
the PyTorch ImageNet example. Project: what ``train_main.py`` chooses on this machine by default
(``common.precision.choose_precision``: channels_last, and bf16 autocast where the CPU computes it natively and the
model has no depthwise convolutions; bf16/fp16 AMP on CUDA). The images of each class carry a class-specific colour
cast, so the loss falls and its value after ``--loss-steps`` steps says whether the fast path trains alike.

    python benchmarks/bench_train_step.py                               # GhostNet and ResNet-50, 224 px, batch 32
    python benchmarks/bench_train_step.py --archs ghostnet --loss-steps 50
    python benchmarks/bench_train_step.py --amp --archs ghostnet        # force bf16 autocast for every arch

Prints one table and writes benchmarks/results/train_step.csv (``--out`` to change).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.benchlib import device_tag, photo_like, write_csv  # noqa: E402
from common import models, precision, transforms  # noqa: E402
from common.train_step import TrainStep  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CLASSES = 4
CASTS = np.array([(40, -20, -20), (-20, 40, -20), (-20, -20, 40), (30, 30, -30)], dtype=np.float32)


def make_batches(count: int, batch: int, size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of normalised (batch, 3, size, size) crops of photo-like images with class colour casts."""
    rng = np.random.default_rng(seed)
    crop = transforms.train_transform(transforms.AugmentConfig(crop_size=size), fast=False)
    torch.manual_seed(seed)
    out = []
    for _ in range(count):
        labels = rng.integers(0, CLASSES, batch)
        images = []
        for label in labels:
            pixels = np.asarray(photo_like(rng, 320, 240), dtype=np.float32) + CASTS[label]
            images.append(crop(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))))
        out.append((torch.stack(images), torch.as_tensor(labels)))
    return out


def make_step(arch: str, prec: precision.Precision, seed: int = 0) -> TrainStep:
    torch.manual_seed(seed)
    model = prec.prepare_model(models.create_model(arch, CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    return TrainStep(model.train(), nn.CrossEntropyLoss(), opt, sched, prec)


def run_steps(step: TrainStep, batches: list, device: torch.device) -> tuple[float, list[float]]:
    """Seconds for all ``batches`` (after each step's loss is read) and the losses."""
    losses, start = [], time.perf_counter()
    for images, labels in batches:
        _, loss = step(transforms.to_model_input(images, device, step.precision.channels_last), labels.to(device))
        losses.append(loss.item())
    return time.perf_counter() - start, losses


def measure(arch: str, prec: precision.Precision, batches: list, warmup: int, device: torch.device) -> float:
    """Images/s over ``batches`` after ``warmup`` untimed steps."""
    step = make_step(arch, prec)
    run_steps(step, batches[:warmup], device)
    seconds, _ = run_steps(step, batches[warmup:], device)
    return sum(len(b[1]) for b in batches[warmup:]) / seconds


def final_loss(arch: str, prec: precision.Precision, batches: list, device: torch.device) -> float:
    """Mean loss over the last 10 of ``len(batches)`` training steps from the same seeded model."""
    _, losses = run_steps(make_step(arch, prec), batches, device)
    return float(np.mean(losses[-10:]))


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_accel else "cpu")
    timed = make_batches(args.warmup + args.steps, args.batch, args.size)
    rows = []
    for arch in args.archs:
        reference = precision.Precision(device.type, None, False)
        probe = models.create_model(arch, CLASSES)
        project = precision.choose_precision(device, probe, True if args.amp else None)
        ref_ips = measure(arch, reference, timed, args.warmup, device)
        fast_ips = measure(arch, project, timed, args.warmup, device)
        row = {"arch": arch, "size": args.size, "batch": args.batch, "device": device_tag(device),
               "reference": reference.describe(), "project": project.describe(), "reference_img_s": ref_ips,
               "project_img_s": fast_ips, "speedup": fast_ips / ref_ips}
        if args.loss_steps:
            batches = make_batches(args.loss_steps, args.batch, args.size, seed=1)
            ref_loss, fast_loss = (final_loss(arch, p, batches, device) for p in (reference, project))
            row.update(loss_steps=args.loss_steps, reference_loss=ref_loss, project_loss=fast_loss,
                       loss_gap_pct=100 * abs(fast_loss - ref_loss) / ref_loss)
        rows.append(row)
        print(f"{arch}: {row}", flush=True)
    return rows


def report(rows: list[dict], path: str) -> None:
    print(f"\n{'arch':<10} {'reference':<14} {'img/s':>7} {'project':<26} {'img/s':>7} {'speedup':>8} "
          f"{'loss ref':>9} {'loss proj':>9} {'gap %':>6}")
    for r in rows:
        loss = (f"{r['reference_loss']:9.4f} {r['project_loss']:9.4f} {r['loss_gap_pct']:6.2f}"
                if "reference_loss" in r else f"{'':>9} {'':>9} {'':>6}")
        print(f"{r['arch']:<10} {r['reference']:<14} {r['reference_img_s']:7.2f} {r['project']:<26} "
              f"{r['project_img_s']:7.2f} {r['speedup']:7.2f}x {loss}")
    write_csv(rows, path)
    print(f"\nmachine: {rows[0]['device']}; written to {path}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Training-step throughput: project defaults vs fp32 NCHW.")
    parser.add_argument("--archs", nargs="+", default=["ghostnet", "resnet50"])
    parser.add_argument("--size", type=int, default=224, help="input size in pixels (default: 224)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (default: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--loss-steps", type=int, default=0,
                        help="also train each configuration this many steps and compare the final loss (default: 0)")
    parser.add_argument("--amp", action="store_true", help="force AMP for the project side, whatever the arch")
    parser.add_argument("--no-accel", action="store_true", help="run on the CPU even when a GPU is present")
    parser.add_argument("--out", default=os.path.join(RESULTS, "train_step.csv"))
    return parser


def main(args: argparse.Namespace) -> None:
    report(run(args), args.out)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
