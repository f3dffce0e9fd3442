"""The one training/evaluation engine that all four training scripts call through ``fit(args, ctx, wrap, log_name)``.

A script only decides how processes start (``ctx``) and how the model is wrapped (``wrap``); everything else, from
datasets to checkpoints, happens here. ``fit`` is the only function that reads ``args``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import random
import signal
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from common import checkpoint, data, faults, models, schedule
from common.distributed import DistContext, all_reduce_sum, barrier, broadcast_buffers
from common.errors import UserError
from common.logger import CsvLog, Progress, epoch_row
from common.meters import AverageMeter
from common.metrics import topk_correct

Wrap = Callable[[nn.Module, DistContext], nn.Module]


@dataclass
class EpochStats:
    """Totals of one pass over a loader, already summed over all ranks."""

    loss: float
    top1: float
    top5: float
    images: int
    seconds: float
    data_seconds: float
    stopped: bool = False

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Run:
    """Everything a training run holds: model (possibly wrapped), loaders, loss, optimizer, schedule."""

    model: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    classes: list[str]
    bad_log: data.BadImageLog | None = None


@dataclass
class StepControl:
    """Per-step duties of a training epoch besides optimisation: seeding, and a hook after each step.

    With a seed, torch's generator is re-seeded from (seed, rank, epoch, step) before every step, so dropout
    masks are the same whether a run went straight through or was resumed mid-epoch. ``after_step`` gets the
    index of the finished step within the epoch and returns True to stop the epoch there.
    """

    epoch: int
    first_step: int
    after_step: Callable[[int], bool]
    seed: int | None = None
    rank: int = 0

    def before_step(self, i: int) -> None:
        if self.seed is not None:
            torch.manual_seed(data.sample_seed(self.seed + 7919 * self.rank, self.epoch, self.first_step + i))


@dataclass(frozen=True)
class ResumePoint:
    """Where a run continues: epoch, step within it (0 = its start), best top-1 so far (None: no epoch yet)."""

    epoch: int = 0
    step: int = 0
    best_acc1: float | None = None


def seed_process(seed: int | None, offset: int = 0) -> None:
    """Seed Python, NumPy and torch with ``seed + offset`` (no-op without a seed)."""
    if seed is None:
        return
    random.seed(seed + offset)
    np.random.seed((seed + offset) % 2**32)
    torch.manual_seed(seed + offset)


def logits_of(output) -> torch.Tensor:
    """Main logits of a model output (GoogLeNet/Inception return a namedtuple with aux logits in training)."""
    return getattr(output, "logits", output)


def run_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module, ctx: DistContext, prefix: str,
              print_freq: int, optimizer: torch.optim.Optimizer | None = None, scheduler=None,
              control: StepControl | None = None) -> EpochStats:
    """One pass over ``loader``: training when an optimizer is given, else evaluation. Totals span all ranks."""
    training, stopped = optimizer is not None, False
    batch_time, data_time = AverageMeter("Time", ":6.3f"), AverageMeter("Data", ":6.3f")
    losses, top1, top5 = AverageMeter("Loss", ":.4e"), AverageMeter("Acc@1", ":6.2f"), AverageMeter("Acc@5", ":6.2f")
    progress = Progress(len(loader), [batch_time, data_time, losses, top1, top5], prefix, print_freq, ctx.is_main)
    start = end = time.perf_counter()
    for i, batch in enumerate(loader):
        data_time.update(time.perf_counter() - end)
        if batch is None:  # every image of this evaluation batch was unreadable and skipped
            progress.step(i)
            continue
        images, target, _paths = batch
        if control is not None:
            control.before_step(i)
        images = images.to(ctx.device, non_blocking=True)
        target = target.to(ctx.device, non_blocking=True)
        output = logits_of(model(images))
        loss = criterion(output, target)
        if training:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        n = target.size(0)
        c1, c5 = topk_correct(output.detach(), target)
        losses.update(loss.item(), n)
        top1.add(100.0 * c1, n)
        top5.add(100.0 * c5, n)
        batch_time.update(time.perf_counter() - end)
        progress.step(i)
        if control is not None and control.after_step(i):
            stopped = True
            break
        end = time.perf_counter()
    progress.close()
    for meter in (losses, top1, top5):
        meter.all_reduce(ctx)
    return EpochStats(losses.avg, top1.avg, top5.avg, losses.count, time.perf_counter() - start, data_time.sum,
                      stopped)


def evaluate(model: nn.Module, loader: DataLoader, criterion: nn.Module, ctx: DistContext,
             print_freq: int = 10) -> EpochStats:
    """Exact validation: the bare model with rank 0's buffers; each image counted once over all ranks."""
    bare = checkpoint.unwrap(model)
    broadcast_buffers(bare, ctx)
    bare.eval()
    with torch.inference_mode():
        stats = run_epoch(bare, loader, criterion, ctx, "Test: ", print_freq)
    if ctx.is_main:
        print(f" * Acc@1 {stats.top1:.3f} Acc@5 {stats.top5:.3f} Loss {stats.loss:.4f} "
              f"on {stats.images} images", flush=True)
    return stats


def train_one_epoch(run: Run, ctx: DistContext, print_freq: int, control: StepControl) -> EpochStats:
    """One training epoch from step ``control.first_step``; every rank shuffles alike for ``control.epoch``."""
    run.train_loader.sampler.set_epoch(control.epoch)
    run.train_loader.sampler.set_start(control.first_step)
    run.model.train()
    return run_epoch(run.model, run.train_loader, run.criterion, ctx, f"Epoch: [{control.epoch}]", print_freq,
                     run.optimizer, run.scheduler, control)


def build_run(args: argparse.Namespace, ctx: DistContext, wrap: Wrap) -> Run:
    """Datasets, loaders, model (created with the same seed on every rank, then wrapped), loss, SGD, schedule."""
    bad_log = data.BadImageLog(args.bad_images)
    cfg = data.DataConfig(args.data, args.dummy, args.train_crop_size, args.val_resize_size, args.val_crop_size,
                          bad_log=bad_log)
    train_set, val_set, classes = data.build_datasets(cfg)
    batch = data.per_process_batch(args.batch_size, ctx.world_size)
    workers = data.default_workers(ctx.local_world_size) if args.workers is None else args.workers
    train_loader, val_loader = data.build_loaders(train_set, val_set, batch, workers, ctx, seed=args.seed)
    seed_process(args.seed)
    model = models.create_model(args.arch, len(classes), args.pretrained, args.weights, args.width_mult, args.dropout)
    model = wrap(model.to(ctx.device), ctx)
    seed_process(args.seed, offset=ctx.rank)
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    sched_cfg = schedule.ScheduleConfig(args.lr_schedule, args.epochs, len(train_loader), args.warmup_epochs,
                                        args.lr_step_size, args.lr_gamma)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing).to(ctx.device)
    return Run(model, train_loader, val_loader, criterion, optimizer,
               schedule.build_scheduler(optimizer, sched_cfg), classes, bad_log)


def restore(path: str, run: Run, arch: str) -> ResumePoint:
    """Load model, optimizer and schedule from a checkpoint; return where the run continues."""
    ckpt = checkpoint.load_file(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path} is a bare state_dict, not a training checkpoint; start from it with --weights.")
    if ckpt.get("arch", arch) != arch:
        raise UserError(f"{path} was trained with -a {ckpt['arch']}, not {arch}; pass -a {ckpt['arch']}.")
    if ckpt.get("classes", run.classes) != run.classes:
        raise UserError(f"{path} was trained on other classes than this dataset's; resume on the same data.")
    checkpoint.unwrap(run.model).load_state_dict(checkpoint.strip_prefixes(ckpt["state_dict"]))
    if "optimizer" in ckpt:
        run.optimizer.load_state_dict(ckpt["optimizer"])
    if "scheduler" in ckpt:
        run.scheduler.load_state_dict(ckpt["scheduler"])
    point = ResumePoint(int(ckpt.get("epoch", 0)), int(ckpt.get("step", 0)), ckpt.get("best_acc1"))
    where = f"epoch {point.epoch}" + (f", step {point.step}" if point.step else "")
    print(f"=> resumed from {path} ({where}, best Acc@1 {point.best_acc1 or 0.0:.3f})", flush=True)
    return point


def resume(path: str, run: Run, arch: str) -> tuple[int, float | None]:
    """``restore`` for callers that resume at epoch boundaries only: (next epoch, best top-1)."""
    point = restore(path, run, arch)
    return point.epoch, point.best_acc1


def resume_path(resume_flag: str, output_dir: str) -> str | None:
    """The checkpoint ``--resume`` points at; ``auto`` means ``output_dir/checkpoint.pth.tar`` when it exists."""
    if resume_flag != "auto":
        return resume_flag or None
    path = os.path.join(output_dir, checkpoint.CHECKPOINT_NAME)
    return path if os.path.isfile(path) else None


def header(args: argparse.Namespace, ctx: DistContext, run: Run) -> str:
    """One short description of the run, printed by rank 0 before it starts."""
    bare = checkpoint.unwrap(run.model)
    return (f"=> {args.arch}: {models.count_params(bare) / 1e6:.2f} M params, {len(run.classes)} classes | "
            f"data: {len(run.train_loader.dataset)} train / {len(run.val_loader.dataset)} val images"
            f"{' (synthetic)' if args.dummy else ''} | {ctx.world_size} process(es) on {ctx.device.type}"
            f" ({type(run.model).__name__}) | batch {args.batch_size} global | lr {args.lr} {args.lr_schedule}"
            f" schedule, warm-up {args.warmup_epochs} epochs | epochs {args.epochs} | output {args.output_dir}")


def check_output_dir(path: str) -> None:
    """Create the output folder and make sure it is writable, before any training starts."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --output-dir {path!r} ({exc.strerror}); choose a writable folder.") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"--output-dir {path!r} is not writable; choose a writable folder.")


def fit(args: argparse.Namespace, ctx: DistContext, wrap: Wrap, log_name: str) -> dict:
    """Train (or with ``-e`` only evaluate) as the flags say; rank 0 writes the CSV log and checkpoints.

    Returns a summary: best top-1, the epoch it was reached, and the last validation stats.
    """
    if ctx.is_main:
        check_output_dir(args.output_dir)
    torch.backends.cudnn.benchmark = args.seed is None
    run = build_run(args, ctx, wrap)
    path = resume_path(args.resume, args.output_dir)
    start = restore(path, run, args.arch) if path else ResumePoint()
    if args.start_epoch is not None:
        start = ResumePoint(args.start_epoch, 0, start.best_acc1)
    if ctx.is_main:
        print(header(args, ctx, run), flush=True)
    if args.evaluate:
        val = evaluate(run.model, run.val_loader, run.criterion, ctx, args.print_freq)
        return {"best_acc1": val.top1, "best_epoch": None, "val": val}
    return train_loop(run, ctx, args, start, os.path.join(args.output_dir, log_name))


def training_state(run: Run, args: argparse.Namespace, epoch: int, step: int, best_acc1: float | None) -> dict:
    """The checkpoint dict; ``(epoch, step)`` is where a resumed run continues."""
    return {"epoch": epoch, "step": step, "arch": args.arch, "state_dict": checkpoint.unwrap(run.model).state_dict(),
            "best_acc1": float(best_acc1 or 0.0), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "args": checkpoint.plain_args(args), "classes": list(run.classes)}


def step_hook(run: Run, ctx: DistContext, args: argparse.Namespace, epoch: int, first_step: int,
              best_acc1: float | None, stop: faults.StopRequest, timer: faults.CheckpointTimer) -> StepControl:
    """The per-step control of one epoch: fault injection, agreed stop on a signal, mid-epoch checkpoints."""

    def after_step(i: int) -> bool:
        faults.inject_fault(ctx.rank, run.scheduler.last_epoch)
        signum = stop.agreed(ctx)
        if (signum or timer.due()) and ctx.is_main:
            checkpoint.save_checkpoint(training_state(run, args, epoch, first_step + i + 1, best_acc1),
                                       args.output_dir, is_best=False)
        return bool(signum)

    return StepControl(epoch, first_step, after_step, args.seed, ctx.rank)


@dataclass
class EpochRecorder:
    """What every training loop does after an epoch's validation: track the best top-1, and on rank 0 write the
    CSV row and the checkpoint (``model_best.pth.tar`` too when top-1 improved); ``finish`` prints the footer."""

    log: CsvLog
    output_dir: str
    best_acc1: float | None = None
    best_epoch: int | None = None
    started: float = dataclasses.field(default_factory=time.time)

    def end_epoch(self, run: Run, ctx: DistContext, args: argparse.Namespace, epoch: int, row: dict,
                  val: EpochStats) -> None:
        is_best = self.best_acc1 is None or val.top1 > self.best_acc1
        if is_best:
            self.best_acc1, self.best_epoch = val.top1, epoch
        if ctx.is_main:
            self.log.write(row)
            checkpoint.save_checkpoint(training_state(run, args, epoch + 1, 0, self.best_acc1), self.output_dir,
                                       is_best)

    def finish(self, ctx: DistContext, val: EpochStats | None) -> dict:
        if ctx.is_main:
            where = f" at epoch {self.best_epoch}" if self.best_epoch is not None else ""
            print(f"=> done in {time.time() - self.started:.1f} s: best Acc@1 {self.best_acc1 or 0.0:.3f}{where}; "
                  f"checkpoints in {self.output_dir}")
        return {"best_acc1": self.best_acc1, "best_epoch": self.best_epoch, "val": val}


def train_loop(run: Run, ctx: DistContext, args: argparse.Namespace, start: ResumePoint, log_path: str) -> dict:
    """Epochs of train + evaluate + log + checkpoint, from ``start`` to ``args.epochs``; stops cleanly on a signal."""
    record, val = EpochRecorder(CsvLog(log_path), args.output_dir, start.best_acc1), None
    stop, timer = faults.StopRequest().install(), faults.CheckpointTimer(args.checkpoint_interval)
    seen: set[str] = set()
    try:
        for epoch in range(start.epoch, args.epochs):
            lr, started = run.optimizer.param_groups[0]["lr"], time.time()
            first_step = start.step if epoch == start.epoch else 0
            control = step_hook(run, ctx, args, epoch, first_step, record.best_acc1, stop, timer)
            train = train_one_epoch(run, ctx, args.print_freq, control)
            if train.stopped:
                raise stopped_message(ctx, stop.signum or signal.SIGTERM, epoch, args.output_dir)
            val = evaluate(run.model, run.val_loader, run.criterion, ctx, args.print_freq)
            bad = count_bad_images(run.bad_log, ctx, seen)
            record.end_epoch(run, ctx, args, epoch, epoch_row(epoch, started, lr, train, val, bad), val)
    finally:
        stop.uninstall()
    return record.finish(ctx, val)


def count_bad_images(bad_log: data.BadImageLog | None, ctx: DistContext, seen: set[str]) -> int:
    """Unreadable images met this epoch on all ranks; each file is named once per run, when first met."""
    reports = bad_log.drain() if bad_log is not None else []
    for path, reason in reports:
        if path not in seen:
            seen.add(path)
            print(f"=> skipped unreadable image {path}: {reason}", flush=True)
    total = int(all_reduce_sum([float(len(reports))], ctx)[0])
    if total and ctx.is_main:
        print(f"=> {total} unreadable image(s) skipped this epoch ({len(seen)} distinct on rank {ctx.rank})")
    return total


def stopped_message(ctx: DistContext, signum: int, epoch: int, output_dir: str) -> faults.Interrupted:
    """Wait until rank 0 has written its checkpoint, then describe the stop (raised by the caller)."""
    barrier(ctx)
    name = signal.Signals(signum).name
    return faults.Interrupted(signum, f"stopped by {name} during epoch {epoch}; the checkpoint in {output_dir} "
                                      "holds the last finished step: rerun with --resume auto to continue.")
