"""Train only the classifier head of a pretrained network (a linear probe) on an ImageNet-style folder.

The backbone is frozen and stays in eval mode, so its weights and BatchNorm statistics never change; the last layer
is replaced by a new one with as many outputs as DIR/train has class folders, and only that layer is optimised.

ResNet-50 with ImageNet weights (the default; offline, the error names the file to put in the torch hub cache):

    python network.py --data /data/flowers --output-dir runs/probe
    python network.py --data /data/flowers -a efficientnet_b0 --epochs 30 --lr 0.05 -b 64 --output-dir runs/probe

A backbone from a local file: a state_dict, or any checkpoint of this project (its head is dropped):

    python network.py --data /data/flowers -a ghostnet --weights runs/ghostnet/model_best.pth.tar

With the deterministic eval transform (the default) the backbone's features are computed once and the head trains
on them; --train-augment uses RandomResizedCrop + flip instead, and then every epoch runs the backbone:

    python network.py --data /data/flowers --train-augment --train-crop-size 224

SIGTERM or Ctrl+C stops after the step in hand with a checkpoint, as the training scripts do (exit status 143 or
130); --resume auto continues from it.
"""
import argparse
import os
import signal
import time

import torch
import torch.nn as nn
from torch.utils.data import BatchSampler, DataLoader, Dataset

from common import data, distributed, engine, faults, models, options, schedule
from common.distributed import DistContext
from common.errors import UserError, exit_on_user_error
from common.launch import exit_on_stop
from common.logger import CsvLog, Progress, epoch_row
from common.train_step import TrainStep

LOG_NAME = "network.csv"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a new classifier head on a frozen pretrained backbone (ImageNet weights or a file).",
        parents=[options.data_parser(), options.model_parser("resnet50"), options.train_parser(),
                 options.dist_parser()])
    parser.add_argument("--cache-features", action=argparse.BooleanOptionalAction, default=None,
                        help="compute the frozen backbone's features once and train the head on them (default: on, "
                             "unless --train-augment)")
    parser.add_argument("--train-augment", action="store_true",
                        help="train on RandomResizedCrop + flip at --train-crop-size instead of the eval transform "
                             "(the features then differ every epoch, so none are cached)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Every check that can fail on the user's input, before any model is built."""
    options.check_training_args(args, models.available_archs())
    if distributed.torchrun_env() is not None or args.world_size > 1 or (args.nprocs or 1) > 1:
        raise UserError("network.py trains in one process (the frozen backbone's features are cheap to reuse); "
                        "run it with python and drop --world-size/--nprocs.")
    if args.weights and args.pretrained:
        raise UserError("--weights and --pretrained both name the backbone's weights; give one of them.")
    if args.dropout is not None or args.checkpoint_interval:
        raise UserError("network.py keeps the whole network in eval mode (no dropout) and checkpoints after every "
                        "short epoch; drop --dropout and --checkpoint-interval.")
    if args.cache_features and args.train_augment:
        raise UserError("--cache-features needs the deterministic eval transform; drop --train-augment or use "
                        "--no-cache-features.")
    if not args.dummy:
        data.split_dirs(args.data)
    if args.resume not in ("", "auto") and not os.path.isfile(args.resume):
        raise UserError(f"--resume {args.resume!r} does not exist; check the path.")
    engine.check_output_dir(args.output_dir)


def build_datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset, list[str]]:
    """train/ and val/ with the same class folders; train/ uses the eval transform unless --train-augment."""
    cfg = data.DataConfig(args.data, args.dummy, args.train_crop_size, args.val_resize_size, args.val_crop_size,
                          bad_log=data.BadImageLog(args.bad_images))
    train_set, val_set, classes = data.build_datasets(cfg)
    if not args.train_augment:
        train_set.transform = val_set.transform  # deterministic: an image's features are the same every epoch
    return train_set, val_set, classes


def build_model(args: argparse.Namespace, num_classes: int) -> tuple[nn.Module, str]:
    """The backbone with its weights (ImageNet unless --weights), a new head, everything but the head frozen."""
    engine.seed_process(args.seed)
    model = models.create_model(args.arch, num_classes, pretrained=not args.weights, weights_path=args.weights,
                                width_mult=args.width_mult)
    head_name = models.replace_head(model, num_classes)  # always new: a head of the file's own classes is no use
    model.requires_grad_(False)
    model.get_submodule(head_name).requires_grad_(True)
    return model, head_name


class FeatureSet(Dataset):
    """Cached head inputs; indexed with a list of positions, it returns a whole batch ``(features, targets, paths)``."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        self.features, self.targets = features, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.features[index], self.targets[index], [""] * len(indices)


def feature_loader(features: FeatureSet, sampler, batch_size: int) -> DataLoader:
    """Batches of cached features in the order ``sampler`` gives, exactly the batches an image loader would make."""
    return DataLoader(features, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None)


def extract_features(model: nn.Module, head: nn.Module, loader: DataLoader, ctx: DistContext, prefix: str,
                     print_freq: int, stop: faults.StopRequest | None = None) -> FeatureSet | None:
    """The head's input for every image, in dataset order; None when layers follow the head (SqueezeNet).

    A signal caught by ``stop`` ends it after the batch in hand (``faults.Interrupted``): nothing is trained yet.
    """
    seen: dict[str, torch.Tensor] = {}
    hook = head.register_forward_hook(lambda _m, inputs, output: seen.update(x=inputs[0], y=output))
    progress = Progress(len(loader), [], prefix, print_freq, ctx.is_main)
    features, targets, pos = None, torch.empty(len(loader.dataset), dtype=torch.long), 0
    model.eval()
    try:
        with torch.no_grad():  # not inference_mode: the cached tensors are later used in autograd
            for i, batch in enumerate(loader):
                if batch is None:  # every image of this batch was unreadable and skipped
                    progress.step(i)
                    continue
                images, target, _paths = batch
                out = engine.logits_of(model(images.to(ctx.device, non_blocking=True)))
                if out is not seen["y"] and not torch.equal(out, seen["y"]):
                    return None
                if features is None:  # (N, *head input shape), on the CPU so that ImageNet-sized caches fit
                    features = torch.empty((len(loader.dataset), *seen["x"].shape[1:]), dtype=seen["x"].dtype)
                features[pos:pos + len(target)] = seen["x"].cpu()
                targets[pos:pos + len(target)] = target
                pos += len(target)
                progress.step(i)
                if stop is not None and stop.signum:
                    raise faults.Interrupted(stop.signum, f"stopped by {signal.Signals(stop.signum).name} while "
                                                          "computing features, before training: run it again.")
    finally:
        hook.remove()
        progress.close()
    if features is None:
        return None
    return FeatureSet(features[:pos], targets[:pos])  # fewer rows than images when unreadable ones were dropped


def cache_loaders(args: argparse.Namespace, run: engine.Run, head: nn.Module, train_set: Dataset, ctx: DistContext,
                  stop: faults.StopRequest) -> tuple[DataLoader, DataLoader] | None:
    """Loaders over the cached train and val features, or None if they cannot be cached."""
    t0 = time.time()
    ordered = data.make_loader(train_set, data.ShardSampler(len(train_set)), run.train_loader.batch_size,
                               run.train_loader.num_workers, ctx.device)
    train_feats = extract_features(run.model, head, ordered, ctx, "Features train: ", args.print_freq, stop)
    if train_feats is None:
        print(f"=> {args.arch}: layers follow the classifier, so features are not cached; the backbone runs "
              "every epoch")
        return None
    val_feats = extract_features(run.model, head, run.val_loader, ctx, "Features val: ", args.print_freq, stop)
    size_mb = (train_feats.features.nbytes + val_feats.features.nbytes) / 2**20
    print(f"=> features of {len(train_feats)} train + {len(val_feats)} val images cached in {time.time() - t0:.1f} "
          f"s ({tuple(train_feats.features.shape[1:])} each, {size_mb:.1f} MiB)", flush=True)
    sampler = data.GlobalBatchSampler(len(train_feats), run.train_loader.batch_size, seed=args.seed or 0)
    return (feature_loader(train_feats, sampler, run.train_loader.batch_size),
            feature_loader(val_feats, data.ShardSampler(len(val_feats)), run.val_loader.batch_size))


def build_run(args: argparse.Namespace, ctx: DistContext, workers: int) -> tuple[engine.Run, str, Dataset]:
    """Image loaders, model with a new head, SGD over the head only, schedule; the head's name and the train set."""
    train_set, val_set, classes = build_datasets(args)
    train_loader, val_loader = data.build_loaders(train_set, val_set, args.batch_size, workers, ctx, seed=args.seed)
    model, head_name = build_model(args, len(classes))
    model.to(ctx.device)
    head = model.get_submodule(head_name)
    optimizer = torch.optim.SGD(head.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    sched_cfg = schedule.ScheduleConfig(args.lr_schedule, args.epochs, len(train_loader), args.warmup_epochs,
                                        args.lr_step_size, args.lr_gamma)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing).to(ctx.device)
    run = engine.Run(model, train_loader, val_loader, criterion, optimizer,
                     schedule.build_scheduler(optimizer, sched_cfg), classes, getattr(train_set, "bad_log", None))
    return run, head_name, train_set


def cached(run: engine.Run) -> bool:
    return isinstance(run.train_loader.dataset, FeatureSet)


def train_one_epoch(run: engine.Run, head: nn.Module, ctx: DistContext, control: engine.StepControl,
                    print_freq: int) -> engine.EpochStats:
    """One epoch of the head from step ``control.first_step``; the backbone stays in eval mode (its BatchNorm
    statistics must not move)."""
    sampler = run.train_loader.sampler
    sampler = getattr(sampler, "sampler", sampler)  # the feature loader wraps it in a BatchSampler
    sampler.set_epoch(control.epoch)
    sampler.set_start(control.first_step)
    run.model.eval()
    head.train()
    net = head if cached(run) else run.model
    step = TrainStep(net, run.criterion, run.optimizer, run.scheduler, run.precision)
    return engine.run_epoch(net, run.train_loader, run.criterion, ctx, f"Epoch: [{control.epoch}]", print_freq,
                            step, control)


def validate(run: engine.Run, head: nn.Module, ctx: DistContext, print_freq: int) -> engine.EpochStats:
    return engine.evaluate(head if cached(run) else run.model, run.val_loader, run.criterion, ctx, print_freq)


def header(args: argparse.Namespace, ctx: DistContext, run: engine.Run, head_name: str, cache: bool) -> str:
    """One short description of the run."""
    head = run.model.get_submodule(head_name)
    trained = sum(p.numel() for p in head.parameters())
    source = args.weights or "ImageNet weights"
    transform = (f"RandomResizedCrop {args.train_crop_size} + flip" if args.train_augment else
                 f"Resize {args.val_resize_size} + CenterCrop {args.val_crop_size}")
    return (f"=> {args.arch} from {source}, new head {head_name} ({head}) | "
            f"{(models.count_params(run.model) - trained) / 1e6:.2f} M params frozen, {trained / 1e3:.2f} k trained"
            f" | data: {len(run.train_loader.dataset)} train / {len(run.val_loader.dataset)} val images, "
            f"{len(run.classes)} classes | 1 process on {ctx.device.type} | batch {args.batch_size} | lr {args.lr} "
            f"{args.lr_schedule} schedule | epochs {args.epochs} | train transform: {transform} | feature cache "
            f"{'on' if cache else 'off'} | output {args.output_dir}")


def train_loop(args: argparse.Namespace, run: engine.Run, head: nn.Module, ctx: DistContext,
               start: engine.ResumePoint, stop: faults.StopRequest) -> dict:
    """Epochs of head training + validation + CSV log + checkpoints holding the whole model, from ``start``.

    A signal stops it after the step in hand, with a checkpoint of that step (or, when it came during validation,
    after that epoch's checkpoint), as the training scripts do.
    """
    record, val, seen = engine.EpochRecorder(CsvLog(os.path.join(args.output_dir, LOG_NAME)), args.output_dir,
                                             start.best_acc1), None, set()
    timer = faults.CheckpointTimer(None)  # no mid-epoch checkpoints but the one a stop writes
    for epoch in range(start.epoch, args.epochs):
        if stop.signum:
            raise engine.stopped_message(ctx, stop.signum, epoch, args.output_dir)
        engine.seed_process(args.seed, offset=1000 * (epoch + 1))
        lr, started = run.optimizer.param_groups[0]["lr"], time.time()
        first_step = start.step if epoch == start.epoch else 0
        control = engine.step_hook(run, ctx, args, epoch, first_step, record.best_acc1, stop, timer)
        train = train_one_epoch(run, head, ctx, control, args.print_freq)
        if train.stopped:
            raise engine.stopped_message(ctx, stop.signum or signal.SIGTERM, epoch, args.output_dir)
        val = validate(run, head, ctx, args.print_freq)
        bad = engine.count_bad_images(run.bad_log, ctx, seen)  # with the feature cache: met while caching
        record.end_epoch(run, ctx, args, epoch, epoch_row(epoch, started, lr, train, val, bad), val)
    return record.finish(ctx, val)


def train(args: argparse.Namespace, ctx: DistContext) -> dict:
    """Build, resume, cache the features, then evaluate (``-e``) or train; SIGTERM/SIGINT stop it cleanly."""
    torch.backends.cudnn.benchmark = args.seed is None
    workers = data.default_workers() if args.workers is None else args.workers
    run, head_name, train_set = build_run(args, ctx, workers)
    head = run.model.get_submodule(head_name)
    resume = engine.resume_path(args.resume, args.output_dir)
    start = engine.restore(resume, run, args.arch) if resume else engine.ResumePoint()
    if args.start_epoch is not None:
        start = engine.ResumePoint(args.start_epoch, 0, start.best_acc1)
    cache = args.cache_features is not False and not args.train_augment
    print(header(args, ctx, run, head_name, cache), flush=True)
    stop = faults.StopRequest().install()
    try:
        if cache:  # after resume, so that the features are those of the resumed backbone
            loaders = cache_loaders(args, run, head, train_set, ctx, stop)
            if loaders:
                run.train_loader, run.val_loader = loaders
        if args.evaluate:
            stop.uninstall()  # nothing to save: a signal may stop the evaluation at once
            val = validate(run, head, ctx, args.print_freq)
            return {"best_acc1": val.top1, "best_epoch": None, "val": val}
        return train_loop(args, run, head, ctx, start, stop)
    finally:
        stop.uninstall()


def main(args: argparse.Namespace) -> dict:
    with exit_on_user_error():
        check_args(args)
        ctx = distributed.single_process(args.gpu, args.no_accel)
        with exit_on_stop(ctx):
            return train(args, ctx)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
