"""Benchmark: training-step throughput, project defaults against fp32 NCHW, and the loss they reach.

Both sides run ``common.train_step.TrainStep`` (SGD, momentum 0.9) on the same seeded model and the same batches of
photo-like images (already decoded and augmented, so that only the step is timed). Reference: fp32, NCHW, as in
the PyTorch ImageNet example. Project: what ``train_main.py`` chooses on this machine by default
(``common.precision.choose_precision``: channels_last, and bf16 autocast where the CPU computes it natively and the
model has no depthwise convolutions; bf16/fp16 AMP on CUDA). The images of each class carry a class-specific colour
cast, so the loss can fall, and its mean over the last 10 of ``--loss-steps`` steps says whether the fast path trains
alike. A control run, fp32 channels_last, shows how far float rounding alone moves that loss.

    python benchmarks/bench_train_step.py                               # GhostNet and ResNet-50, 224 px, batch 32
    python benchmarks/bench_train_step.py --archs ghostnet --loss-steps 50
    python benchmarks/bench_train_step.py --amp --archs ghostnet        # force bf16 autocast for every arch
    python benchmarks/bench_train_step.py --archs resnet50 --loss-steps 50 --lr 0.001 --weights imagenet \\
        --data /imagenet/val

Prints one table and writes runs/benchmarks/train_step.csv (``--out`` to change).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.errors import exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from benchmarks.benchlib import (
    add_out_flag,
    announce_machine,
    machine_line,
    out_path,
    photo_like,
    spread_fields,
    steady_rows,
    write_csv,
)
from common.data import (
    imagefolder,
    transforms,
)
from common.data.images import load_rgb
from common.models import factory
from common.parallel import precision
from common.report.machine import Machine
from common.report.steadiness import LoadMeter
from common.train.step import TrainStep

CLASSES = 4
CASTS = np.array([(40, -20, -20), (-20, 40, -20), (-20, -20, 40), (30, 30, -30)], dtype=np.float32)


def make_batches(count: int, batch: int, size: int, seed: int = 0,
                 photos: list[str] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of normalised (batch, 3, size, size) crops of photos with class colour casts: generated
    photo-like images, or the files ``photos`` in turn (their own labels are not used; the cast is the class)."""
    rng = np.random.default_rng(seed)
    crop = transforms.train_transform(transforms.AugmentConfig(crop_size=size), fast=False)
    torch.manual_seed(seed)
    out = []
    for b in range(count):
        labels = rng.integers(0, CLASSES, batch)
        images = []
        for i, label in enumerate(labels):
            photo = load_rgb(photos[(b * batch + i) % len(photos)]) if photos else photo_like(rng, 320, 240)
            pixels = np.asarray(photo, dtype=np.float32) + CASTS[label]
            images.append(crop(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))))
        out.append((torch.stack(images), torch.as_tensor(labels)))
    return out


def make_step(arch: str, prec: precision.Precision, lr: float = 0.01, seed: int = 0,
              weights: str | None = None) -> TrainStep:
    """A seeded model (``weights``: a local file, 'imagenet' for torchvision's weights, None for random init)."""
    torch.manual_seed(seed)
    model = factory.create_model(arch, CLASSES, pretrained=weights == "imagenet",
                                weights_path=None if weights in (None, "imagenet") else weights)
    model = prec.prepare_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
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


def rounds_of(repeats: int, arch: str, precisions: tuple, batches: list, warmup: int, device: torch.device) -> list:
    """The images/s of each precision in each of ``repeats`` rounds (one list per precision), taken in turn so that
    drift in the machine's load reaches both sides alike."""
    rounds = [[measure(arch, p, batches, warmup, device) for p in precisions] for _ in range(repeats)]
    return [list(column) for column in zip(*rounds)]


def final_loss(arch: str, prec: precision.Precision, batches: list, device: torch.device, lr: float,
               weights: str | None) -> float:
    """Mean loss over the last 10 of ``len(batches)`` training steps from the same seeded model."""
    _, losses = run_steps(make_step(arch, prec, lr, weights=weights), batches, device)
    return float(np.mean(losses[-10:]))


def loss_gaps(arch: str, reference: precision.Precision, project: precision.Precision, args: argparse.Namespace,
              device: torch.device) -> dict:
    """Final losses of the reference and the project, and of a control: fp32 channels_last, which changes nothing
    but the order of float sums. The control's gap is how far rounding alone moves this run's loss; a project gap of
    the same size is rounding noise, not a precision problem."""
    photos = [path for path, _ in imagefolder.image_folder(args.data, None).samples] if args.data else None
    batches = make_batches(args.loss_steps, args.batch, args.size, seed=1, photos=photos)
    control = precision.Precision(device.type, None, True)
    runs = {"reference": reference, "project": project, "control": control}
    loss = {name: final_loss(arch, p, batches, device, args.lr, args.weights) for name, p in runs.items()}
    return {"loss_steps": args.loss_steps, "lr": args.lr, "weights": args.weights or "random",
            "reference_loss": loss["reference"], "project_loss": loss["project"], "control_loss": loss["control"],
            "loss_gap_pct": 100 * abs(loss["project"] - loss["reference"]) / loss["reference"],
            "control_gap_pct": 100 * abs(loss["control"] - loss["reference"]) / loss["reference"]}


def run(args: argparse.Namespace, device: torch.device) -> list[dict]:
    timed = make_batches(args.warmup + args.steps, args.batch, args.size)
    rows = []
    for arch in args.archs:
        reference = precision.Precision(device.type, None, False)
        probe = factory.create_model(arch, CLASSES)
        project = precision.choose_precision(device, probe, True if args.amp else None)
        ref_rounds, fast_rounds = rounds_of(args.repeats, arch, (reference, project), timed, args.warmup, device)
        ref_ips, fast_ips = max(ref_rounds), max(fast_rounds)  # the best round: the least disturbed
        row = {"arch": arch, "size": args.size, "batch": args.batch, "device": device.type,
               "reference": reference.describe(), "project": project.describe(), "reference_img_s": ref_ips,
               "project_img_s": fast_ips, "speedup": fast_ips / ref_ips, "repeats": args.repeats,
               **spread_fields({"reference_img_s": ref_rounds, "project_img_s": fast_rounds})}
        if args.loss_steps:
            row.update(loss_gaps(arch, reference, project, args, device))
        rows.append(row)
        print(f"{arch}: {row}", flush=True)
    return rows


def report(rows: list[dict], path: str, machine: Machine) -> None:
    print(f"\n{machine_line(machine)}")  # again: the per-arch lines came after the header
    print(f"{'arch':<10} {'reference':<14} {'img/s':>7} {'project':<26} {'img/s':>7} {'speedup':>8} "
          f"{'loss ref':>9} {'loss proj':>9} {'gap %':>6} {'control gap %':>13}")
    for r in rows:
        loss = (f"{r['reference_loss']:9.4f} {r['project_loss']:9.4f} {r['loss_gap_pct']:6.2f} "
                f"{r['control_gap_pct']:13.2f}" if "reference_loss" in r else "")
        print(f"{r['arch']:<10} {r['reference']:<14} {r['reference_img_s']:7.2f} {r['project']:<26} "
              f"{r['project_img_s']:7.2f} {r['speedup']:7.2f}x {loss}")
    write_csv(rows, path, machine)
    print(f"\n=> written to {path}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Training-step throughput: project defaults vs fp32 NCHW.")
    parser.add_argument("--archs", nargs="+", default=["ghostnet", "resnet50"])
    parser.add_argument("--size", type=int, default=224, help="input size in pixels (default: 224)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (default: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds of each configuration, alternating; the best is kept (default: 3)")
    parser.add_argument("--loss-steps", type=int, default=0,
                        help="also train each configuration this many steps and compare the final loss (default: 0)")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate of the loss runs (default: 0.01)")
    parser.add_argument("--weights", default=None, metavar="imagenet|PATH",
                        help="start the loss runs from torchvision's ImageNet weights (hub cache or download) or a "
                             "weights file, with a new 4-class head; a stable start that random init is not "
                             "(default: random init)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="photos for the loss runs: a folder of class folders (default: generated photo-like)")
    parser.add_argument("--amp", action="store_true", help="force AMP for the project side, whatever the arch")
    parser.add_argument("--no-accel", action="store_true", help="run on the CPU even when a GPU is present")
    add_out_flag(parser, "train_step.csv")
    return parser


def main(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_accel else "cpu")
    machine = announce_machine([device])
    with LoadMeter() as meter:
        rows = run(args, device)
    report(steady_rows(rows, meter.load, "bench_train_step", ("arch",)), out_path(args.out, "train_step.csv"), machine)


if __name__ == "__main__":
    with exit_on_user_error():  # a Ctrl+C ends in one line
        main(get_args_parser().parse_args())
