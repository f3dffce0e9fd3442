"""The one training/evaluation engine that all four training scripts call through ``fit(args, ctx, wrap, log_name)``.

A script only decides how processes start (``ctx``) and how the model is wrapped (``wrap``); everything else, from
datasets to checkpoints, happens here. Only ``fit`` and the builders it calls (``build_run``, ``augment_config``,
``data_config``, ``build_model``, ``header``, ``optimisation_line``, ``loop_config``) read ``args``. The loop below
them takes small configs instead: ``train_loop`` a ``LoopConfig``, ``run_epoch`` a ``PassConfig``. ``train_loop``
also takes a ``Trainee`` saying what is trained; that is how network.py trains only a new head, on cached features or
through a frozen backbone, in the same loop as the training scripts.
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
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torchvision
from torch.utils.data import DataLoader

from common import checkpoint, data, faults, files, models, optim, recipes, schedule, transforms
from common.distributed import DistContext, all_reduce_sum, barrier, broadcast_buffers
from common.errors import UserError
from common.logger import Progress, epoch_row
from common.meters import AverageMeter
from common.metrics import topk_correct
from common.precision import Precision, choose_precision, synchronize
from common.train_step import TrainStep, logits_of
from common.watch import TrainingLog

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


INPUT_BOUND = 0.10  # share of an epoch spent waiting for batches above which the input is said to bound the run


def input_bound_line(stats: EpochStats, epoch: int, workers: int) -> str | None:
    """One line when the training loop waited for data (``data_seconds``, the CSV column) more than INPUT_BOUND of
    the epoch: the figures, and what to try. None when the input kept up."""
    if stats.seconds <= 0 or stats.data_seconds <= INPUT_BOUND * stats.seconds:
        return None
    return (f"=> the input bounds this run: epoch {epoch} waited {stats.data_seconds:.1f} of {stats.seconds:.1f} s "
            f"({100 * stats.data_seconds / stats.seconds:.0f}%) for batches, at {stats.images_per_s:.1f} images/s; "
            f"try more loader workers (-j, now {workers}), the uint8 pipeline (--uint8-pipeline), a lighter "
            "augmentation, local storage or parquet/shards instead of many small files; --profile-input measures "
            "input alone against the model alone")


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
    stopped = False
    for i, batch in enumerate(loader):
        data_time.update(time.perf_counter() - end)
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
                      stopped)


def evaluate(model: nn.Module, loader: DataLoader, criterion: nn.Module, ctx: DistContext,
             print_freq: int = 10, precision: Precision | None = None, label: str = "",
             norm: transforms.Normalization = transforms.IMAGENET) -> EpochStats:
    """Exact validation: the bare model with rank 0's buffers; each image counted once over all ranks."""
    precision = precision or Precision()
    bare = checkpoint.unwrap(model)
    broadcast_buffers(bare, ctx)
    bare.eval()
    with torch.inference_mode():
        stats = run_epoch(loader, eval_forward(bare, criterion, precision), ctx,
                          PassConfig(f"Test{label}: ", print_freq, precision.channels_last, norm))
    if ctx.is_main:
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
    check_batchnorm_batch(model, len(train_set), args.batch_size, ctx.world_size, args.accum_steps)
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
    return Run(model, train_loader, val_loader, criterion, optimizer, scheduler, classes, bad_log, step, ema, precision,
               normalization(args))


def check_batchnorm_batch(model: nn.Module, num_samples: int, global_batch: int, world_size: int,
                          accum_steps: int) -> None:
    """Refuse, before training, settings that give a BatchNorm model a forward pass of a single image.

    BatchNorm cannot normalise one value per channel, and where a layer's map is 1x1 (small crops, or the layers
    after global pooling) one image is one value: training would stop with a traceback mid-epoch. The rule is kept
    simple so that it is easy to predict: every forward pass of a BatchNorm model holds at least 2 images.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    replicas = len(model.device_ids) if isinstance(model, nn.DataParallel) and model.device_ids else 1
    smallest = data.smallest_forward_batch(num_samples, global_batch, world_size, accum_steps, replicas)
    if smallest >= 2:
        return
    where = (f"-b {global_batch} over {world_size} process(es)" + (f" and {replicas} GPUs" if replicas > 1 else "")
             + (f" in --accum-steps {accum_steps} micro-batches" if accum_steps > 1 else "")
             + (f" on a train set of {num_samples} images" if num_samples < global_batch else ""))
    raise UserError(f"{type(checkpoint.unwrap(model)).__name__} has BatchNorm layers, which need at least 2 images "
                    f"per forward pass, but {where} leaves a pass with {smallest}; raise -b/--batch-size, lower "
                    "--accum-steps, use fewer processes, or add training images.")


def augment_config(args: argparse.Namespace) -> transforms.AugmentConfig:
    return transforms.AugmentConfig(args.train_crop_size, args.rrc_scale, args.rrc_ratio, args.hflip,
                                    args.auto_augment, args.color_jitter, args.random_erase, args.interpolation)


def normalization(args: argparse.Namespace) -> transforms.Normalization:
    """The mean and std that ``options.fill_size_defaults`` chose (the starting weights' own, or ImageNet's)."""
    return transforms.Normalization(args.mean, args.std)


def data_config(args: argparse.Namespace, bad_log: data.BadImageLog) -> data.DataConfig:
    """The datasets the flags ask for: folder or synthetic, sizes, augmentation, uint8 or classic pipeline."""
    return data.DataConfig(args.data, args.dummy, args.train_crop_size, args.val_resize_size, args.val_crop_size,
                           bad_log=bad_log, augment=augment_config(args), fast=args.uint8_pipeline,
                           interpolation=args.interpolation, norm=normalization(args))


def build_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The bare model: random init, ImageNet weights, ``--weights``, or ``--finetune-from``'s weights."""
    if args.finetune_from:
        print(f"=> fine-tuning from the weights of {args.finetune_from}: new optimizer, schedule and epoch count",
              flush=True)
    return models.create_model(args.arch, num_classes, args.pretrained, args.finetune_from or args.weights,
                               args.width_mult, args.dropout)


def restore_state(target: Any, state: dict | None, path: str, what: str) -> None:
    """``target.load_state_dict(state)`` unless ``state`` is None; a state of another optimizer or of other
    parameter groups becomes one UserError naming the file."""
    if state is None:
        return
    try:
        target.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise UserError(f"{path}: its {what} state does not fit this run ({str(exc).splitlines()[0][:120]}); "
                        "resume with the flags it was trained with.") from None


def restore(path: str, run: Run, arch: str) -> ResumePoint:
    """Load model, optimizer and schedule from a checkpoint; return where the run continues."""
    ckpt = checkpoint.load_file(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"{path} is a bare state_dict, not a training checkpoint; start from it with --weights.")
    checkpoint.check_fields(ckpt, path)
    if ckpt.get("arch", arch) != arch:
        raise UserError(f"{path} was trained with -a {ckpt['arch']}, not {arch}; pass -a {ckpt['arch']}.")
    if ckpt.get("classes", run.classes) != run.classes:
        raise UserError(f"{path} was trained on other classes than this dataset's; resume on the same data.")
    checkpoint.load_exact(checkpoint.unwrap(run.model), checkpoint.strip_prefixes(ckpt["state_dict"]), path,
                          "resume with the -a, --width-mult and dataset it was trained with.")
    restore_state(run.optimizer, ckpt.get("optimizer"), path, "optimizer")
    restore_state(run.scheduler, ckpt.get("scheduler"), path, "scheduler")
    if run.ema is not None and "state_dict_ema" in ckpt:
        run.ema.load(ckpt["state_dict_ema"], int(ckpt.get("ema_updates", 0)))
    point = ResumePoint(int(ckpt.get("epoch", 0)), int(ckpt.get("step", 0)), ckpt.get("best_acc1"))
    where = f"epoch {point.epoch}" + (f", step {point.step}" if point.step else "")
    print(f"=> resumed from {path} ({where}, best Acc@1 {point.best_acc1 or 0.0:.3f})", flush=True)
    return point


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
             f" ({data.describe_source(args.data, args.dummy)}); {ctx.world_size} process(es) on {ctx.device.type}"
             f" ({type(getattr(run.model, '_orig_mod', run.model)).__name__}); {run.precision.describe()}"
             f"{', torch.compile' if args.compile else ''}; output {args.output_dir}")
    evaluation = transforms.describe_eval(args.val_resize_size, args.val_crop_size, args.uint8_pipeline,
                                          args.interpolation, normalization(args))
    pipeline = (f"=> input: {transforms.describe(augment_config(args), args.uint8_pipeline)}; "
                f"{evaluation} (from {args.preprocess_source})")
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
    save_samples: bool = False


def loop_config(args: argparse.Namespace, log_name: str) -> LoopConfig:
    """The loop settings the training scripts' flags ask for."""
    return LoopConfig(args.epochs, args.output_dir, log_name, args.arch, checkpoint.plain_args(args),
                      args.print_freq, args.seed, args.checkpoint_interval, args.tensorboard,
                      save_samples=args.save_samples)


def fit(args: argparse.Namespace, ctx: DistContext, wrap: Wrap, log_name: str) -> dict:
    """Train (or with ``-e`` only evaluate) as the flags say; rank 0 writes the CSV log and checkpoints.

    Returns a summary: best top-1, the epoch it was reached, and the last validation stats.
    """
    if ctx.is_main:
        files.check_output_dir(args.output_dir)
    torch.backends.cudnn.benchmark = args.seed is None
    run = build_run(args, ctx, wrap)
    path = resume_path(args.resume, args.output_dir)
    start = restore(path, run, args.arch) if path else ResumePoint()
    if args.start_epoch is not None:
        start = ResumePoint(args.start_epoch, 0, start.best_acc1)
    if ctx.is_main:
        print(header(args, ctx, run), flush=True)
    if args.profile_input:
        return profile_input(run, ctx, args.profile_input)
    if args.evaluate:
        val = evaluate(run.model, run.val_loader, run.criterion, ctx, args.print_freq, run.precision, norm=run.norm)
        return {"best_acc1": val.top1, "best_epoch": None, "val": val}
    return train_loop(run, ctx, loop_config(args, log_name), start)


def profile_input(run: Run, ctx: DistContext, steps: int) -> dict:
    """``--profile-input``: images/s of the training loader alone (``steps`` batches after the first, which pays
    for the workers' start) against images/s of ``steps`` training steps on one synthetic batch of the same shape,
    on this rank; rank 0 prints both and which one bounds the run. Nothing is saved."""
    run.train_loader.sampler.set_epoch(0)
    batches = iter(run.train_loader)
    first, _target, _ = next(batches)
    seen, start = 0, time.perf_counter()
    for _, (images, _t, _k) in zip(range(steps), batches):
        seen += len(images)
    input_rate = seen / max(time.perf_counter() - start, 1e-9)
    del batches
    images = transforms.to_model_input(first, ctx.device, run.precision.channels_last, norm=run.norm)
    target = torch.randint(len(run.classes), (len(first),), device=ctx.device)
    run.model.train()
    run.step(images, target)  # warm-up: allocations, cudnn autotuning
    synchronize(ctx.device)
    start = time.perf_counter()
    for _ in range(steps):
        run.step(images, target)
    synchronize(ctx.device)
    model_rate = steps * len(first) / max(time.perf_counter() - start, 1e-9)
    bound = "input" if input_rate < model_rate else "model"
    if ctx.is_main:
        print(f"=> input alone: {input_rate:.1f} images/s ({seen} images, {run.train_loader.num_workers} workers); "
              f"model alone: {model_rate:.1f} images/s ({steps} steps on a synthetic batch of {len(first)}); "
              f"the {bound} bounds this run (per process)", flush=True)
    return {"input_images_per_s": input_rate, "model_images_per_s": model_rate, "bound": bound}


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
    val = evaluate(trainee.module, run.val_loader, run.criterion, ctx, print_freq, run.precision, norm=run.norm)
    if run.ema is None:
        return val, None
    return val, evaluate(run.ema.module, run.val_loader, run.criterion, ctx, print_freq, run.precision, " EMA",
                         run.norm)


def train_epoch(loop: Loop, record: EpochRecorder, epoch: int, first_step: int,
                seen: set[str]) -> EpochStats:
    """One epoch of train + validate + log + checkpoint; a signal stops it after the step in hand, with a checkpoint
    of that step (``faults.Interrupted``). Returns the validation stats."""
    run, ctx, cfg = loop.run, loop.ctx, loop.cfg
    lr, started = run.optimizer.param_groups[0]["lr"], time.time()
    control = step_hook(loop, epoch, first_step, record.best_acc1)
    train = train_one_epoch(run, loop.trainee, ctx, cfg.print_freq, control)
    if train.stopped:
        raise stopped_message(ctx, loop.stop.signum or signal.SIGTERM, epoch, cfg.output_dir)
    bound = input_bound_line(train, epoch, getattr(run.train_loader, "num_workers", 0)) if ctx.is_main else None
    if bound:
        print(bound, flush=True)
    val, val_ema = validate(run, loop.trainee, ctx, cfg.print_freq)
    bad = count_bad_images(run.bad_log, ctx, seen)  # with network.py's feature cache: met while caching
    record.end_epoch(run, ctx, epoch, epoch_row(epoch, started, lr, train, val, bad, val_ema), val, val_ema)
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
    if cfg.save_samples and ctx.is_main:
        save_samples(run.train_loader, start.epoch, os.path.join(cfg.output_dir, SAMPLES_NAME), norm=run.norm)
    try:
        for epoch in range(start.epoch, cfg.epochs):
            signum = stop.agreed(ctx)
            if signum:
                raise stopped_message(ctx, signum, epoch, cfg.output_dir)
            val = train_epoch(loop, record, epoch, start.step if epoch == start.epoch else 0, seen)
    finally:
        if own_stop:
            stop.uninstall()
    return record.finish(ctx, val)


SAMPLES_NAME = "train_samples.png"


def save_samples(loader: DataLoader, epoch: int, path: str, count: int = 32,
                 norm: transforms.Normalization = transforms.IMAGENET) -> None:
    """The first training batch of ``epoch`` (at most ``count`` images), augmented exactly as training will see it
    before MixUp/CutMix, as a grid of 8 images per row."""
    loader.sampler.set_epoch(epoch)
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):  # shards: the first batch of the stream
        images = next(iter(loader))[0][:count]
        keys = range(len(images))
    else:
        keys = list(itertools.islice(iter(loader.sampler), min(count, loader.batch_size)))
        images = torch.stack([loader.dataset[key][0] for key in keys])
    if images.dtype == torch.uint8:
        images = images.float() / 255
    else:  # normalised floats: undo the normalisation for display
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (norm.mean, norm.std))
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
    then = f"rerun with --resume auto to continue from the last checkpoint written in {output_dir}."
    return faults.Interrupted(signum, f"during epoch {epoch}", then)
