"""The epoch loop: train, validate, log and checkpoint each epoch, from small configs (no ``args``)."""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from common.data import sampling, transforms, unreadable
from common.models import checkpoint
from common.parallel import faults
from common.parallel.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
)
from common.parallel.precision import Precision
from common.report.metrics import topk_correct
from common.report.progress import AverageMeter, Progress
from common.train import optim
from common.train.step import TrainStep, logits_of
from common.train.watch import TrainingLog, epoch_row


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
    first_wait: float = 0.0  # seconds spent waiting for the first batch: loader start-up, not steady-state input


    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


INPUT_BOUND = 0.10  # share of an epoch spent waiting for batches above which the input is said to bound the run
MIN_WAIT = 0.5  # seconds of waiting (after the first batch) below which no line is printed, whatever the share


@dataclass(frozen=True)
class InputHint:
    """What the input-bound line may advise, decided once from the running script's flags: ``flags`` are
    (flag, what it does) pairs, each a flag the script's parser has and that would change its current settings.
    A loop with no InputHint (cached features, synthetic data) never prints the line."""

    flags: tuple[tuple[str, str], ...] = ()


def input_bound_line(stats: EpochStats, epoch: int, workers: int, hint: InputHint | None) -> str | None:
    """One line when the training loop waited for batches, after the first one (loader start-up), more than
    INPUT_BOUND of the rest of the epoch and at least MIN_WAIT seconds: the figures, and what to try. None when
    the input kept up, or where ``hint`` is None."""
    waited, seconds = stats.data_seconds - stats.first_wait, stats.seconds - stats.first_wait
    if hint is None or waited < MIN_WAIT or waited <= INPUT_BOUND * seconds:
        return None
    tries = [f"more loader workers (-j, now {workers})", *(f"{what} ({flag})" for flag, what in hint.flags),
             "a lighter augmentation, local storage or parquet/shards instead of many small files"]
    return (f"=> the input bounds this run: epoch {epoch} waited {waited:.1f} of {seconds:.1f} s "
            f"({100 * waited / seconds:.0f}%) for batches after the first, at {stats.images_per_s:.1f} images/s; "
            f"try {', '.join(tries)}")


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
    bad_log: unreadable.BadImageLog | None = None
    step: TrainStep | None = None
    ema: optim.ModelEma | None = None
    precision: Precision = dataclasses.field(default_factory=Precision)
    norm: transforms.Normalization = transforms.IMAGENET  # what uint8 batches are normalised with


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
            torch.manual_seed(sampling.sample_seed(self.seed + 7919 * self.rank, self.epoch, self.first_step + i))


@dataclass(frozen=True)
class ResumePoint:
    """Where a run continues: epoch, step within it (0 = its start), best top-1 so far (None: no epoch yet), and
    whether it continues a stopped run from its checkpoint (``resumed``: the CSV row of ``epoch`` says so)."""

    epoch: int = 0
    step: int = 0
    best_acc1: float | None = None
    resumed: bool = False


Forward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class PassConfig:
    """How a pass over a loader reports and places its batches: progress prefix, every how many batches a
    progress line is printed, and whether images go to the model channels-last."""

    prefix: str
    print_freq: int = 10
    channels_last: bool = False
    norm: transforms.Normalization = transforms.IMAGENET


@dataclass
class Trainee:
    """What an epoch trains and validates (the loop's hook). The training scripts train the whole model; network.py
    trains only a new head, either on cached features (``module`` is the head) or on images through a frozen
    backbone (``module`` is the model, ``trained`` the head): the rest stays in eval mode, so its BatchNorm
    statistics never move."""

    module: nn.Module
    trained: nn.Module | None = None

    def train_mode(self) -> None:
        """Put what is trained in training mode, and everything else in ``module`` in eval mode."""
        if self.trained is None:
            self.module.train()
        else:
            self.module.eval()
            self.trained.train()


def eval_forward(model: nn.Module, criterion: nn.Module, precision: Precision) -> Forward:
    """``(images, target) -> (logits, loss)`` without gradients' bookkeeping, under ``precision``'s autocast."""

    def forward(images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with precision.autocast():
            output = logits_of(model(images))
        return output, criterion(output.float(), target)

    return forward


def run_epoch(loader: DataLoader, forward: Forward, ctx: DistContext, show: PassConfig,
              control: StepControl | None = None) -> EpochStats:
    """One pass over ``loader``; ``forward`` is a training step (TrainStep) or an ``eval_forward``.

    Totals span all ranks; ``control`` (training only) seeds each step and may stop the pass after one."""
    batch_time, data_time = AverageMeter("Time", ":6.3f"), AverageMeter("Data", ":6.3f")
    losses, top1, top5 = AverageMeter("Loss", ":.4e"), AverageMeter("Acc@1", ":6.2f"), AverageMeter("Acc@5", ":6.2f")
    progress = Progress(len(loader), [batch_time, data_time, losses, top1, top5], show.prefix, show.print_freq,
                        ctx.is_main)
    start = end = time.perf_counter()
    stopped, first_wait = False, 0.0
    for i, batch in enumerate(loader):
        data_time.update(time.perf_counter() - end)
        if i == 0:
            first_wait = data_time.val
        if batch is None:  # every image of this evaluation batch was unreadable and skipped
            progress.step(i)
            continue
        images, target, _paths = batch
        if control is not None:
            control.before_step(i)
        images = transforms.to_model_input(images, ctx.device, show.channels_last, norm=show.norm)
        target = target.to(ctx.device, non_blocking=True)
        output, loss = forward(images, target)
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
                      stopped, first_wait)


def eval_pass(run: Run, print_freq: int, label: str = "") -> PassConfig:
    """How a validation pass of ``run`` shows itself: ``Test`` (or ``Test EMA``) progress every ``print_freq``
    batches, in the run's memory format and normalisation."""
    return PassConfig(f"Test{label}: ", print_freq, run.precision.channels_last, run.norm)


def evaluate(model: nn.Module, loader: DataLoader, criterion: nn.Module, ctx: DistContext, show: PassConfig,
             precision: Precision | None = None) -> EpochStats:
    """Exact validation: the bare model with rank 0's buffers; each image counted once over all ranks."""
    precision = precision or Precision()
    bare = checkpoint.unwrap(model)
    broadcast_buffers(bare, ctx)
    bare.eval()
    with torch.inference_mode():
        stats = run_epoch(loader, eval_forward(bare, criterion, precision), ctx, show)
    if ctx.is_main:
        label = show.prefix.removeprefix("Test").removesuffix(": ")
        print(f" *{label} Acc@1 {stats.top1:.3f} Acc@5 {stats.top5:.3f} Loss {stats.loss:.4f} "
              f"on {stats.images} images", flush=True)
    return stats


def train_one_epoch(run: Run, trainee: Trainee, ctx: DistContext, print_freq: int,
                    control: StepControl) -> EpochStats:
    """One training epoch from step ``control.first_step``; every rank shuffles alike for ``control.epoch``."""
    sampler = run.train_loader.sampler
    sampler = getattr(sampler, "sampler", sampler)  # a loader of cached features wraps it in a BatchSampler
    sampler.set_epoch(control.epoch)
    sampler.set_start(control.first_step)
    trainee.train_mode()
    return run_epoch(run.train_loader, run.step, ctx,
                     PassConfig(f"Epoch: [{control.epoch}]", print_freq, run.step.precision.channels_last, run.norm),
                     control)


def training_state(run: Run, cfg: LoopConfig, epoch: int, step: int, best_acc1: float | None,
                   better: str = "raw") -> dict:
    """The checkpoint dict; ``(epoch, step)`` is where a resumed run continues. With EMA, ``state_dict_ema`` holds
    the averaged weights and ``best_weights`` says which of the two scored better on the last validation."""
    state = {"epoch": epoch, "step": step, "arch": cfg.arch, "state_dict": checkpoint.unwrap(run.model).state_dict(),
             "best_acc1": float(best_acc1 or 0.0), "optimizer": run.optimizer.state_dict(),
             "scheduler": run.scheduler.state_dict(), "args": dict(cfg.saved_args), "classes": list(run.classes)}
    if run.ema is not None:
        state.update(state_dict_ema=run.ema.module.state_dict(), ema_updates=int(run.ema.n_averaged),
                     best_weights=better)
    return state


@dataclass(frozen=True)
class LoopConfig:
    """The settings of the epoch loop, read from the flags once by ``fit`` (or network.py's ``train``).

    ``saved_args`` are the flags as plain values (``checkpoint.plain_args``), stored in every checkpoint;
    ``checkpoint_interval`` asks for mid-epoch checkpoints (``"500"`` steps or ``"30m"``); ``step_log`` writes
    the per-step CSV beside the epoch CSV ``log_name``.
    """

    epochs: int
    output_dir: str
    log_name: str
    arch: str
    saved_args: dict
    print_freq: int = 10
    seed: int | None = None
    checkpoint_interval: str | None = None
    tensorboard: bool = False
    step_log: bool = True
    input_hint: InputHint | None = None


@dataclass
class Loop:
    """What one ``train_loop`` call holds across its epochs besides the run: signal stop, mid-epoch checkpoint
    timer, rank 0's log (None on other ranks), and the fault a test planned for this rank (None: no cost per step)."""

    run: Run
    trainee: Trainee
    ctx: DistContext
    cfg: LoopConfig
    stop: faults.StopRequest
    log: TrainingLog | None = None
    timer: faults.CheckpointTimer = dataclasses.field(default_factory=lambda: faults.CheckpointTimer(None))
    fault: faults.Fault | None = None


def step_hook(loop: Loop, epoch: int, first_step: int, best_acc1: float | None) -> StepControl:
    """The per-step control of one epoch: step log, fault injection, agreed stop on a signal, mid-epoch checkpoints."""
    run, ctx, cfg = loop.run, loop.ctx, loop.cfg
    last = len(run.train_loader) - 1

    def after_step(i: int, loss: float) -> bool:
        if loop.log is not None and ((first_step + i) % cfg.print_freq == 0 or i == last):
            loop.log.step(epoch, first_step + i, run.scheduler.last_epoch - 1, run.step.last_lr, loss)
        if loop.fault is not None:
            loop.fault.check(run.scheduler.last_epoch)
        signum = loop.stop.agreed(ctx)
        if (signum or loop.timer.due()) and ctx.is_main:
            checkpoint.save_checkpoint(training_state(run, cfg, epoch, first_step + i + 1, best_acc1),
                                       cfg.output_dir, is_best=False)
        return bool(signum)

    return StepControl(epoch, first_step, after_step, cfg.seed, ctx.rank)


@dataclass
class EpochRecorder:
    """What the training loop does after an epoch's validation: track the best top-1, and on rank 0 write the
    CSV row and the checkpoint (``model_best.pth.tar`` too when top-1 improved); ``finish`` prints the footer.

    With EMA weights, an epoch scores the better of the raw and the EMA top-1, and the checkpoint marks which."""

    log: TrainingLog | None
    cfg: LoopConfig
    best_acc1: float | None = None
    best_epoch: int | None = None
    best_acc5: float | None = None
    started: float = dataclasses.field(default_factory=time.time)

    def end_epoch(self, run: Run, ctx: DistContext, epoch: int, row: dict, val: EpochStats,
                  val_ema: EpochStats | None = None) -> None:
        better, score = ("ema", val_ema) if val_ema is not None and val_ema.top1 > val.top1 else ("raw", val)
        is_best = self.best_acc1 is None or score.top1 > self.best_acc1
        if is_best:
            self.best_acc1, self.best_acc5, self.best_epoch = score.top1, score.top5, epoch
        if ctx.is_main:
            self.log.write(row)
            checkpoint.save_checkpoint(training_state(run, self.cfg, epoch + 1, 0, self.best_acc1, better),
                                       self.cfg.output_dir, is_best)

    def finish(self, ctx: DistContext, val: EpochStats | None) -> dict:
        if ctx.is_main:
            where = (f" (Acc@5 {self.best_acc5:.3f}) at epoch {self.best_epoch}" if self.best_epoch is not None
                     else "")
            print(f"=> done in {time.time() - self.started:.1f} s: best Acc@1 {self.best_acc1 or 0.0:.3f}{where}; "
                  f"checkpoints in {self.cfg.output_dir}")
            self.log.close()
        return {"best_acc1": self.best_acc1, "best_epoch": self.best_epoch, "val": val}


def validate(run: Run, trainee: Trainee, ctx: DistContext, print_freq: int) -> tuple[EpochStats, EpochStats | None]:
    """Validation of what is trained, and of the EMA weights when kept."""
    val = evaluate(trainee.module, run.val_loader, run.criterion, ctx, eval_pass(run, print_freq), run.precision)
    if run.ema is None:
        return val, None
    return val, evaluate(run.ema.module, run.val_loader, run.criterion, ctx, eval_pass(run, print_freq, " EMA"),
                         run.precision)


def train_epoch(loop: Loop, record: EpochRecorder, epoch: int, first_step: int,
                seen: set[str], resumed: bool = False) -> EpochStats:
    """One epoch of train + validate + log + checkpoint; a signal stops it after the step in hand, with a checkpoint
    of that step (``faults.Interrupted``). ``resumed``: the epoch's first step (``first_step``) continues a stopped
    run, which its CSV row records. Returns the validation stats."""
    run, ctx, cfg = loop.run, loop.ctx, loop.cfg
    lr, started = run.optimizer.param_groups[0]["lr"], time.time()
    control = step_hook(loop, epoch, first_step, record.best_acc1)
    train = train_one_epoch(run, loop.trainee, ctx, cfg.print_freq, control)
    if train.stopped:
        raise stopped_message(ctx, loop.stop.signum or signal.SIGTERM, epoch, cfg.output_dir)
    workers = getattr(run.train_loader, "num_workers", 0)
    bound = input_bound_line(train, epoch, workers, cfg.input_hint) if ctx.is_main else None
    if bound:
        print(bound, flush=True)
    val, val_ema = validate(run, loop.trainee, ctx, cfg.print_freq)
    bad = count_bad_images(run.bad_log, ctx, seen)  # with network.py's feature cache: met while caching
    row = epoch_row(epoch, started, lr, train, val, bad, val_ema, first_step if resumed else None)
    record.end_epoch(run, ctx, epoch, row, val, val_ema)
    return val


def train_loop(run: Run, ctx: DistContext, cfg: LoopConfig, start: ResumePoint, trainee: Trainee | None = None,
               stop: faults.StopRequest | None = None) -> dict:
    """Epochs of train + validate + log + checkpoint, from ``start`` to ``cfg.epochs``; stops cleanly on a signal.

    ``trainee`` says what is trained (the whole model when None). A signal that arrives between epochs (during
    validation) stops the run before the next one, after that epoch's checkpoint. A ``stop`` the caller installed
    (network.py's, already listening while features are cached) is used and left to the caller to uninstall.
    """
    own_stop = stop is None
    stop = faults.StopRequest().install() if stop is None else stop
    log = (TrainingLog(os.path.join(cfg.output_dir, cfg.log_name), cfg.tensorboard, cfg.step_log)
           if ctx.is_main else None)
    loop = Loop(run, trainee or Trainee(run.model), ctx, cfg, stop, log,
                faults.CheckpointTimer(cfg.checkpoint_interval), faults.planned_fault(ctx.rank))
    record, val, seen = EpochRecorder(log, cfg, start.best_acc1), None, set()
    try:
        for epoch in range(start.epoch, cfg.epochs):
            signum = stop.agreed(ctx)
            if signum:
                raise stopped_message(ctx, signum, epoch, cfg.output_dir)
            first = epoch == start.epoch
            val = train_epoch(loop, record, epoch, start.step if first else 0, seen, first and start.resumed)
    finally:
        if own_stop:
            stop.uninstall()
    return record.finish(ctx, val)


def count_bad_images(bad_log: unreadable.BadImageLog | None, ctx: DistContext, seen: set[str]) -> int:
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
    then = f"rerun with --resume auto to continue from the last checkpoint written in {output_dir}."
    return faults.Interrupted(signum, f"during epoch {epoch}", then)
