"""The one training/evaluation engine that all four training scripts call through ``fit(args, ctx, wrap, log_name)``.

A script only decides how processes start (``ctx``) and how the model is wrapped (``wrap``); everything else, from
datasets to checkpoints, happens here. ``fit`` is the only function that reads ``args``.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import random
import signal
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torchvision
from torch.utils.data import DataLoader

from common import checkpoint, data, faults, models, optim, recipes, schedule, transforms
from common.distributed import DistContext, all_reduce_sum, barrier, broadcast_buffers
from common.errors import UserError
from common.logger import Progress, epoch_row
from common.meters import AverageMeter
from common.metrics import topk_correct
from common.precision import Precision, choose_precision
from common.train_step import TrainStep, logits_of
from common.watch import RunLog

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
    step: TrainStep | None = None
    ema: optim.ModelEma | None = None
    precision: Precision = dataclasses.field(default_factory=Precision)


@dataclass
class StepControl:
    """Per-step duties of a training epoch besides optimisation: seeding, and a hook after each step.

    With a seed, torch's generator is re-seeded from (seed, rank, epoch, step) before every step, so dropout
    masks are the same whether a run went straight through or was resumed mid-epoch. ``after_step`` gets the
    index of the finished step within the epoch and its loss, and returns True to stop the epoch there.
    """

    epoch: int
    first_step: int
    after_step: Callable[[int, float], bool]
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


def run_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module, ctx: DistContext, prefix: str,
              print_freq: int, step: TrainStep | None = None, control: StepControl | None = None,
              precision: Precision | None = None) -> EpochStats:
    """One pass over ``loader``: training when a ``step`` is given, else evaluation. Totals span all ranks."""
    precision = precision or (step.precision if step is not None else Precision())
    batch_time, data_time = AverageMeter("Time", ":6.3f"), AverageMeter("Data", ":6.3f")
    losses, top1, top5 = AverageMeter("Loss", ":.4e"), AverageMeter("Acc@1", ":6.2f"), AverageMeter("Acc@5", ":6.2f")
    progress = Progress(len(loader), [batch_time, data_time, losses, top1, top5], prefix, print_freq, ctx.is_main)
    start = end = time.perf_counter()
    stopped = False
    for i, batch in enumerate(loader):
        data_time.update(time.perf_counter() - end)
        if batch is None:  # every image of this evaluation batch was unreadable and skipped
            progress.step(i)
            continue
        images, target, _paths = batch
        if control is not None:
            control.before_step(i)
        images = transforms.to_model_input(images, ctx.device, precision.channels_last)
        target = target.to(ctx.device, non_blocking=True)
        if step is not None:
            output, loss = step(images, target)
        else:
            with precision.autocast():
                output = logits_of(model(images))
            loss = criterion(output.float(), target)
        n = target.size(0)
        c1, c5 = topk_correct(output.detach(), target)
        losses.update(loss.item(), n)
        top1.add(100.0 * c1, n)
        top5.add(100.0 * c5, n)
        batch_time.update(time.perf_counter() - end)
        progress.step(i)
        if control is not None and control.after_step(i, losses.val):
            stopped = True
            break
        end = time.perf_counter()
    progress.close()
    for meter in (losses, top1, top5):
        meter.all_reduce(ctx)
    return EpochStats(losses.avg, top1.avg, top5.avg, losses.count, time.perf_counter() - start, data_time.sum,
                      stopped)


def evaluate(model: nn.Module, loader: DataLoader, criterion: nn.Module, ctx: DistContext,
             print_freq: int = 10, precision: Precision | None = None, label: str = "") -> EpochStats:
    """Exact validation: the bare model with rank 0's buffers; each image counted once over all ranks."""
    bare = checkpoint.unwrap(model)
    broadcast_buffers(bare, ctx)
    bare.eval()
    with torch.inference_mode():
        stats = run_epoch(bare, loader, criterion, ctx, f"Test{label}: ", print_freq, precision=precision)
    if ctx.is_main:
        print(f" *{label} Acc@1 {stats.top1:.3f} Acc@5 {stats.top5:.3f} Loss {stats.loss:.4f} "
              f"on {stats.images} images", flush=True)
    return stats


def train_one_epoch(run: Run, ctx: DistContext, print_freq: int, control: StepControl) -> EpochStats:
    """One training epoch from step ``control.first_step``; every rank shuffles alike for ``control.epoch``."""
    run.train_loader.sampler.set_epoch(control.epoch)
    run.train_loader.sampler.set_start(control.first_step)
    run.model.train()
    return run_epoch(run.model, run.train_loader, run.criterion, ctx, f"Epoch: [{control.epoch}]", print_freq,
                     run.step, control)


def build_run(args: argparse.Namespace, ctx: DistContext, wrap: Wrap) -> Run:
    """Datasets, loaders, model (created with the same seed on every rank, then wrapped), loss, SGD, schedule."""
    bad_log = data.BadImageLog(args.bad_images)
    train_set, val_set, classes = data.build_datasets(data_config(args, bad_log))
    batch = data.per_process_batch(args.batch_size, ctx.world_size)
    workers = data.default_workers(ctx.local_world_size) if args.workers is None else args.workers
    train_loader, val_loader = data.build_loaders(train_set, val_set, batch, workers, ctx, seed=args.seed)
    seed_process(args.seed)
    model = build_model(args, len(classes)).to(ctx.device)
    precision = choose_precision(ctx.device, model, args.amp, args.amp_dtype, args.channels_last)
    model = precision.prepare_model(model)
    ema = optim.ModelEma(model, args.model_ema_decay) if args.model_ema else None
    model = wrap(model, ctx)
    if args.compile:
        model = torch.compile(model)
    seed_process(args.seed, offset=ctx.rank)
    optimizer = optim.build_optimizer(model, optim.OptimConfig(args.lr, args.momentum, args.weight_decay,
                                                               args.nesterov, args.norm_weight_decay))
    sched_cfg = schedule.ScheduleConfig(args.lr_schedule, args.epochs, len(train_loader), args.warmup_epochs,
                                        args.lr_step_size, args.lr_gamma)
    scheduler = schedule.build_scheduler(optimizer, sched_cfg)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing).to(ctx.device)
    step = TrainStep(model, criterion, optimizer, scheduler, precision, args.accum_steps, args.clip_grad_norm,
                     optim.build_mix(args.mixup_alpha, args.cutmix_alpha, len(classes)), ema)
    return Run(model, train_loader, val_loader, criterion, optimizer, scheduler, classes, bad_log, step, ema, precision)


def augment_config(args: argparse.Namespace) -> transforms.AugmentConfig:
    return transforms.AugmentConfig(args.train_crop_size, args.rrc_scale, args.rrc_ratio, args.hflip,
                                    args.auto_augment, args.color_jitter, args.random_erase)


def data_config(args: argparse.Namespace, bad_log: data.BadImageLog) -> data.DataConfig:
    """The datasets the flags ask for: folder or synthetic, sizes, augmentation, uint8 or classic pipeline."""
    return data.DataConfig(args.data, args.dummy, args.train_crop_size, args.val_resize_size, args.val_crop_size,
                           bad_log=bad_log, augment=augment_config(args), fast=args.uint8_pipeline)


def build_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The bare model: random init, ImageNet weights, ``--weights``, or ``--finetune-from``'s weights."""
    if args.finetune_from:
        print(f"=> fine-tuning from the weights of {args.finetune_from}: new optimizer, schedule and epoch count",
              flush=True)
    return models.create_model(args.arch, num_classes, args.pretrained, args.finetune_from or args.weights,
                               args.width_mult, args.dropout)


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
    if run.ema is not None and "state_dict_ema" in ckpt:
        run.ema.load(ckpt["state_dict_ema"], int(ckpt.get("ema_updates", 0)))
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
    """What the run is about to do, printed by rank 0 before it starts: model, data, devices, optimisation, speed."""
    bare = checkpoint.unwrap(run.model)
    macs = models.count_macs(bare, args.train_crop_size)
    model = (f"=> {args.arch}: {models.count_params(bare) / 1e6:.2f} M params, {macs / 1e6:.1f} M MACs at "
             f"{args.train_crop_size} px, {len(run.classes)} classes")
    where = (f"=> data: {len(run.train_loader.dataset)} train / {len(run.val_loader.dataset)} val images"
             f"{' (synthetic)' if args.dummy else ''}; {ctx.world_size} process(es) on {ctx.device.type}"
             f" ({type(getattr(run.model, '_orig_mod', run.model)).__name__}); {run.precision.describe()}"
             f"{', torch.compile' if args.compile else ''}; output {args.output_dir}")
    pipeline = (f"=> input: {transforms.describe(augment_config(args), args.uint8_pipeline)}; "
                f"{transforms.describe_eval(args.val_resize_size, args.val_crop_size, args.uint8_pipeline)}")
    return "\n".join([model, where, pipeline, optimisation_line(args, run)])


def optimisation_line(args: argparse.Namespace, run: Run) -> str:
    """Recipe, effective global batch, lr, schedule, optimiser and regularisation of the run, in one line."""
    norm = "" if args.norm_weight_decay is None else f" (norm/bias {args.norm_weight_decay:g})"
    extras = [name for name, on in (("EMA", run.ema is not None), ("MixUp/CutMix", run.step.mix is not None),
                                    (f"grad clip {args.clip_grad_norm}", args.clip_grad_norm),
                                    (f"{args.accum_steps} micro-batches", args.accum_steps > 1)) if on]
    return (f"=> {recipes.describe(args)}: global batch {args.batch_size}, lr {args.lr:g} {args.lr_schedule} "
            f"schedule (warm-up {args.warmup_epochs:g} epochs), SGD momentum {args.momentum:g}"
            f"{' Nesterov' if args.nesterov else ''}, wd {args.weight_decay:g}{norm}, label smoothing "
            f"{args.label_smoothing:g}, {args.epochs} epochs" + (f"; {', '.join(extras)}" if extras else ""))


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
        val = evaluate(run.model, run.val_loader, run.criterion, ctx, args.print_freq, run.precision)
        return {"best_acc1": val.top1, "best_epoch": None, "val": val}
    return train_loop(run, ctx, args, start, os.path.join(args.output_dir, log_name))


def training_state(run: Run, args: argparse.Namespace, epoch: int, step: int, best_acc1: float | None,
                   better: str = "raw") -> dict:
    """The checkpoint dict; ``(epoch, step)`` is where a resumed run continues. With EMA, ``state_dict_ema`` holds
    the averaged weights and ``best_weights`` says which of the two scored better on the last validation."""
    state = {"epoch": epoch, "step": step, "arch": args.arch, "state_dict": checkpoint.unwrap(run.model).state_dict(),
             "best_acc1": float(best_acc1 or 0.0), "optimizer": run.optimizer.state_dict(),
             "scheduler": run.scheduler.state_dict(), "args": checkpoint.plain_args(args), "classes": list(run.classes)}
    if run.ema is not None:
        state.update(state_dict_ema=run.ema.module.state_dict(), ema_updates=int(run.ema.n_averaged),
                     best_weights=better)
    return state


def step_hook(run: Run, ctx: DistContext, args: argparse.Namespace, epoch: int, first_step: int,
              best_acc1: float | None, stop: faults.StopRequest, timer: faults.CheckpointTimer,
              log: RunLog | None = None) -> StepControl:
    """The per-step control of one epoch: step log, fault injection, agreed stop on a signal, mid-epoch checkpoints."""
    last = len(run.train_loader) - 1

    def after_step(i: int, loss: float) -> bool:
        if log is not None and ((first_step + i) % args.print_freq == 0 or i == last):
            log.step(epoch, first_step + i, run.scheduler.last_epoch - 1, run.step.last_lr, loss)
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
    CSV row and the checkpoint (``model_best.pth.tar`` too when top-1 improved); ``finish`` prints the footer.

    With EMA weights, an epoch scores the better of the raw and the EMA top-1, and the checkpoint marks which."""

    log: RunLog
    output_dir: str
    best_acc1: float | None = None
    best_epoch: int | None = None
    best_acc5: float | None = None
    started: float = dataclasses.field(default_factory=time.time)

    def end_epoch(self, run: Run, ctx: DistContext, args: argparse.Namespace, epoch: int, row: dict,
                  val: EpochStats, val_ema: EpochStats | None = None) -> None:
        better, score = ("ema", val_ema) if val_ema is not None and val_ema.top1 > val.top1 else ("raw", val)
        is_best = self.best_acc1 is None or score.top1 > self.best_acc1
        if is_best:
            self.best_acc1, self.best_acc5, self.best_epoch = score.top1, score.top5, epoch
        if ctx.is_main:
            self.log.write(row)
            checkpoint.save_checkpoint(training_state(run, args, epoch + 1, 0, self.best_acc1, better),
                                       self.output_dir, is_best)

    def finish(self, ctx: DistContext, val: EpochStats | None) -> dict:
        if ctx.is_main:
            where = (f" (Acc@5 {self.best_acc5:.3f}) at epoch {self.best_epoch}" if self.best_epoch is not None
                     else "")
            print(f"=> done in {time.time() - self.started:.1f} s: best Acc@1 {self.best_acc1 or 0.0:.3f}{where}; "
                  f"checkpoints in {self.output_dir}")
            if isinstance(self.log, RunLog):
                self.log.close()
        return {"best_acc1": self.best_acc1, "best_epoch": self.best_epoch, "val": val}


def validate(run: Run, ctx: DistContext, print_freq: int) -> tuple[EpochStats, EpochStats | None]:
    """Validation of the raw weights, and of the EMA weights when kept."""
    val = evaluate(run.model, run.val_loader, run.criterion, ctx, print_freq, run.precision)
    if run.ema is None:
        return val, None
    return val, evaluate(run.ema.module, run.val_loader, run.criterion, ctx, print_freq, run.precision, " EMA")


def train_loop(run: Run, ctx: DistContext, args: argparse.Namespace, start: ResumePoint, log_path: str) -> dict:
    """Epochs of train + evaluate + log + checkpoint, from ``start`` to ``args.epochs``; stops cleanly on a signal."""
    log = RunLog(log_path, args.tensorboard) if ctx.is_main else None
    record, val = EpochRecorder(log, args.output_dir, start.best_acc1), None
    stop, timer = faults.StopRequest().install(), faults.CheckpointTimer(args.checkpoint_interval)
    seen: set[str] = set()
    if args.save_samples and ctx.is_main:
        save_samples(run.train_loader, start.epoch, os.path.join(args.output_dir, SAMPLES_NAME))
    try:
        for epoch in range(start.epoch, args.epochs):
            lr, started = run.optimizer.param_groups[0]["lr"], time.time()
            first_step = start.step if epoch == start.epoch else 0
            control = step_hook(run, ctx, args, epoch, first_step, record.best_acc1, stop, timer, log)
            train = train_one_epoch(run, ctx, args.print_freq, control)
            if train.stopped:
                raise stopped_message(ctx, stop.signum or signal.SIGTERM, epoch, args.output_dir)
            val, val_ema = validate(run, ctx, args.print_freq)
            bad = count_bad_images(run.bad_log, ctx, seen)
            row = epoch_row(epoch, started, lr, train, val, bad, val_ema)
            record.end_epoch(run, ctx, args, epoch, row, val, val_ema)
    finally:
        stop.uninstall()
    return record.finish(ctx, val)


SAMPLES_NAME = "train_samples.png"


def save_samples(loader: DataLoader, epoch: int, path: str, count: int = 32) -> None:
    """The first training batch of ``epoch`` (at most ``count`` images), augmented exactly as training will see it
    before MixUp/CutMix, as a grid of 8 images per row."""
    loader.sampler.set_epoch(epoch)
    keys = list(itertools.islice(iter(loader.sampler), min(count, loader.batch_size)))
    images = torch.stack([loader.dataset[key][0] for key in keys])
    if images.dtype == torch.uint8:
        images = images.float() / 255
    else:  # normalised floats: undo the normalisation for display
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (transforms.IMAGENET_MEAN, transforms.IMAGENET_STD))
        images = (images * std + mean).clamp(0, 1)
    torchvision.utils.save_image(images, path, nrow=8, padding=2)
    print(f"=> {len(keys)} augmented training images of epoch {epoch} saved to {path}", flush=True)


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
    return faults.Interrupted(signum, f"stopped by {name} during epoch {epoch}; rerun with --resume auto to "
                                      f"continue from the last checkpoint written in {output_dir}.")
