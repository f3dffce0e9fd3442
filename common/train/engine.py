"""Flags to a run: the builder that all four training scripts call through ``fit(args, ctx, wrap, log_name)``.

A script only decides how processes start (``ctx``) and how the model is wrapped (``wrap``); ``fit`` builds the
datasets, model, optimiser and schedule from the flags, restores a checkpoint (``resume``), prints the header and
hands over to the epoch loop (``loop.train_loop``), the input profiler or a lone evaluation. Only the functions here
read ``args``; the loop takes small configs instead (``LoopConfig``, ``PassConfig``) and a ``Trainee`` saying what is
trained, which is how network.py trains only a new head in the same loop as the training scripts.
"""
from __future__ import annotations

import argparse
import os
import random
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

from common import files
from common.cli import recipes
from common.data import loaders, sampling, transforms, unreadable
from common.errors import UserError
from common.models import checkpoint, factory
from common.parallel.distributed import DistContext
from common.parallel.precision import choose_precision
from common.train import distill, optim, schedule
from common.train.inputs import SAMPLES_NAME, profile_input, save_samples
from common.train.loop import (
    InputHint,
    LoopConfig,
    ResumePoint,
    Run,
    eval_pass,
    evaluate,
    train_loop,
)
from common.train.resume import restore, resume_path
from common.train.step import TrainStep

Wrap = Callable[[nn.Module, DistContext], nn.Module]


def seed_process(seed: int | None, offset: int = 0) -> None:
    """Seed Python, NumPy and torch with ``seed + offset`` (no-op without a seed)."""
    if seed is None:
        return
    random.seed(seed + offset)
    np.random.seed((seed + offset) % 2**32)
    torch.manual_seed(seed + offset)


def build_run(args: argparse.Namespace, ctx: DistContext, wrap: Wrap) -> Run:
    """Datasets, loaders, model (created with the same seed on every rank, then wrapped), loss, SGD, schedule."""
    bad_log = unreadable.BadImageLog(args.bad_images)
    train_set, val_set, classes = loaders.build_datasets(data_config(args, bad_log))
    batch = sampling.per_process_batch(args.batch_size, ctx.world_size)
    workers = sampling.default_workers(ctx.local_world_size) if args.workers is None else args.workers
    train_loader, val_loader = loaders.build_loaders(args.data_source, train_set, val_set, batch, workers, ctx,
                                                     seed=args.seed)
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
    optimizer = optim.build_optimizer(model, optim_config(args))
    sched_cfg = schedule.ScheduleConfig(args.lr_schedule, args.epochs, len(train_loader), args.warmup_epochs,
                                        args.lr_step_size, args.lr_gamma)
    scheduler = schedule.build_scheduler(optimizer, sched_cfg)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing).to(ctx.device)
    teacher = build_teacher(args, classes, ctx)
    step = TrainStep(model, distill.DistillLoss(criterion, kd_config(args)) if teacher else criterion, optimizer,
                     scheduler, precision, args.accum_steps, args.clip_grad_norm,
                     optim.build_mix(args.mixup_alpha, args.cutmix_alpha, len(classes)), ema, teacher)
    return Run(model, train_loader, val_loader, criterion, optimizer, scheduler, classes, bad_log, step, ema, precision,
               normalization(args))


def optim_config(args: argparse.Namespace) -> optim.OptimConfig:
    """The optimiser the flags ask for (``--opt`` and its settings)."""
    return optim.OptimConfig(args.lr, args.momentum, args.weight_decay, args.nesterov, args.norm_weight_decay,
                             args.opt, args.opt_eps)


def kd_config(args: argparse.Namespace) -> distill.KDConfig:
    return distill.KDConfig(args.kd_temperature, args.kd_loss_weight, args.task_loss_weight)


def teacher_spec(args: argparse.Namespace) -> distill.TeacherSpec:
    return distill.TeacherSpec(args.kd_model, args.kd_checkpoint, args.kd_pretrained, args.kd_width_mult)


def build_teacher(args: argparse.Namespace, classes: list[str], ctx: DistContext) -> distill.Teacher | None:
    """The frozen teacher on this process's device (each rank holds its own); None without a ``--kd-*`` teacher."""
    spec = teacher_spec(args)
    if not spec.wanted:
        return None
    return distill.load_teacher(spec, classes, normalization(args)).to(ctx.device)


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
    smallest = sampling.smallest_forward_batch(num_samples, global_batch, world_size, accum_steps, replicas)
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
    """The mean and std that ``defaults.fill_size_defaults`` chose (the starting weights' own, or ImageNet's)."""
    return transforms.Normalization(args.mean, args.std)


def data_config(args: argparse.Namespace, bad_log: unreadable.BadImageLog) -> loaders.DataConfig:
    """The datasets the flags ask for: folder or synthetic, sizes, augmentation, uint8 or classic pipeline."""
    return loaders.DataConfig(args.data_source, args.train_crop_size, args.val_resize_size, args.val_crop_size,
                           bad_log=bad_log, augment=augment_config(args), fast=args.uint8_pipeline,
                           interpolation=args.interpolation, norm=normalization(args))


def build_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The bare model: random init, ImageNet weights, ``--weights``, or ``--finetune-from``'s weights."""
    if args.finetune_from:
        print(f"=> fine-tuning from the weights of {args.finetune_from}: new optimizer, schedule and epoch count",
              flush=True)
    return factory.create_model(args.arch, num_classes, args.pretrained, args.finetune_from or args.weights,
                               args.width_mult, args.dropout)


def header(args: argparse.Namespace, ctx: DistContext, run: Run) -> str:
    """What the run is about to do, printed by rank 0 before it starts: model, data, devices, optimisation, speed."""
    bare = checkpoint.unwrap(run.model)
    macs = factory.count_macs(bare, args.train_crop_size)
    model = (f"=> {args.arch}: {factory.count_params(bare) / 1e6:.2f} M params, {macs / 1e6:.1f} M MACs at "
             f"{args.train_crop_size} px, {len(run.classes)} classes")
    where = (f"=> data: {len(run.train_loader.dataset)} train / {len(run.val_loader.dataset)} val images"
             f" ({args.data_source.describe()}); {ctx.world_size} process(es) on {ctx.device.type}"
             f" ({type(getattr(run.model, '_orig_mod', run.model)).__name__}); {run.precision.describe()}"
             f"{', torch.compile' if args.compile else ''}; output {args.output_dir}")
    evaluation = transforms.describe_eval(args.val_resize_size, args.val_crop_size, args.uint8_pipeline,
                                          args.interpolation, normalization(args))
    pipeline = (f"=> input: {transforms.describe(augment_config(args), args.uint8_pipeline)}; "
                f"{evaluation} (from {args.preprocess_source})")
    lines = [model, where, pipeline, optimisation_line(args, run)]
    if run.step is not None and run.step.teacher is not None:
        lines.append(f"=> distillation from {run.step.teacher.description}; {distill.describe(kd_config(args))}")
    return "\n".join(lines)


def optimisation_line(args: argparse.Namespace, run: Run) -> str:
    """Recipe, effective global batch, lr, schedule, optimiser and regularisation of the run, in one line."""
    norm = "" if args.norm_weight_decay is None else f" (norm/bias {args.norm_weight_decay:g})"
    step = f" x{args.lr_gamma:g} every {args.lr_step_size:g} epochs" if args.lr_schedule == "step" else ""
    extras = [name for name, on in (("EMA", run.ema is not None), ("MixUp/CutMix", run.step.mix is not None),
                                    (f"grad clip {args.clip_grad_norm}", args.clip_grad_norm),
                                    (f"{args.accum_steps} micro-batches", args.accum_steps > 1)) if on]
    return (f"=> {recipes.describe(args)}: global batch {args.batch_size}, lr {args.lr:g} {args.lr_schedule} "
            f"schedule{step} (warm-up {args.warmup_epochs:g} epochs), {optim.describe_optimizer(optim_config(args))}"
            f", wd {args.weight_decay:g}{norm}, label smoothing "
            f"{args.label_smoothing:g}, {args.epochs} epochs" + (f"; {', '.join(extras)}" if extras else ""))


def input_hint(args: argparse.Namespace) -> InputHint | None:
    """What the input-bound line may advise this run: only flags the script's parser has (``args`` holds each of
    its flags) and that change the current settings; None on synthetic data (``--dummy``), whose input is free."""
    if getattr(args, "dummy", False):
        return None
    flags = []
    if hasattr(args, "uint8_pipeline") and not args.uint8_pipeline:
        flags.append(("--uint8-pipeline", "the uint8 pipeline"))
    if hasattr(args, "profile_input"):
        flags.append(("--profile-input", "measuring the input alone against the model alone"))
    return InputHint(tuple(flags))


def loop_config(args: argparse.Namespace, log_name: str) -> LoopConfig:
    """The loop settings the training scripts' flags ask for."""
    return LoopConfig(args.epochs, args.output_dir, log_name, args.arch, checkpoint.plain_args(args),
                      args.print_freq, args.seed, args.checkpoint_interval, args.tensorboard,
                      input_hint=input_hint(args))


def fit(args: argparse.Namespace, ctx: DistContext, wrap: Wrap, log_name: str) -> dict:
    """Train (or with ``-e`` only evaluate) as the flags say; rank 0 writes the CSV log and checkpoints.

    Returns a summary: best top-1, the epoch it was reached, and the last validation stats.
    """
    if ctx.is_main:
        files.make_output_dir(args.output_dir)
    torch.backends.cudnn.benchmark = args.seed is None
    run = build_run(args, ctx, wrap)
    path = resume_path(args.resume, args.output_dir)
    start = restore(path, run, args.arch) if path else ResumePoint()
    if args.start_epoch is not None:
        start = ResumePoint(args.start_epoch, 0, start.best_acc1, start.resumed)
    if ctx.is_main:
        print(header(args, ctx, run), flush=True)
    if args.profile_input:
        return profile_input(run, ctx, args.profile_input)
    if args.evaluate:
        val = evaluate(run.model, run.val_loader, run.criterion, ctx, eval_pass(run, args.print_freq), run.precision)
        return {"best_acc1": val.top1, "best_epoch": None, "val": val}
    if args.save_samples and ctx.is_main:
        save_samples(run.train_loader, start.epoch, os.path.join(args.output_dir, SAMPLES_NAME), norm=run.norm,
                     classes=run.classes)
    return train_loop(run, ctx, loop_config(args, log_name), start)
