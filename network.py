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

Distilled from a teacher of the same classes (any checkpoint of this project): with the feature cache, the teacher's
logits are computed once per image beside the features, so distillation costs nothing per epoch:

    python network.py --data /data/flowers --kd-checkpoint runs/teacher/model_best.pth.tar --kd-temperature 4

SIGTERM or Ctrl+C stops after the step in hand with a checkpoint, as the training scripts do (exit status 143 or
130); --resume auto continues from it.
"""
from common.errors import UserError, exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse
import time

import torch
import torch.nn as nn
from torch.utils.data import BatchSampler, DataLoader, Dataset
from torchvision.models.feature_extraction import (
    create_feature_extractor,
    get_graph_node_names,
)

from common.cli import options
from common.cli.process import exit_on_stop
from common.data import loaders, sampling, transforms, unreadable
from common.models import checkpoint, factory
from common.parallel import distributed, faults
from common.parallel.distributed import DistContext
from common.report.progress import Progress
from common.train import distill, engine, launch, loop, resume, schedule
from common.train.step import TrainStep

LOG_NAME = "network.csv"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a new classifier head on a frozen pretrained backbone (ImageNet weights or a file).",
        parents=[options.data_parser(), options.model_parser("resnet50", dropout=False),
                 options.train_parser(recipes=False, mid_epoch_checkpoints=False, torchrun=False,
                                      output_dir=options.PROBE_OUTPUT_DIR),
                 options.kd_parser(), options.device_parser()])
    parser.add_argument("--cache-features", action=argparse.BooleanOptionalAction, default=None,
                        help="compute the frozen backbone's features once and train the head on them (default: on, "
                             "unless --train-augment)")
    parser.add_argument("--train-augment", action="store_true",
                        help="train on RandomResizedCrop + flip at --train-crop-size instead of the eval transform "
                             "(the features then differ every epoch, so none are cached)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """network.py's own checks, after the training scripts' (``launch.prepare``); changes nothing."""
    if distributed.torchrun_env() is not None:
        raise UserError("network.py trains in one process (the frozen backbone's features are cheap to reuse); "
                        "run it with python, not torchrun.")
    if args.weights and args.pretrained:
        raise UserError("--weights and --pretrained both name the backbone's weights; give one of them.")
    if args.cache_features and args.train_augment:
        raise UserError("--cache-features needs the deterministic eval transform; drop --train-augment or use "
                        "--no-cache-features.")


def build_datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset, list[str]]:
    """train/ and val/ with the same class folders; train/ uses the eval transform unless --train-augment."""
    cfg = loaders.DataConfig(args.data_source, args.train_crop_size, args.val_resize_size, args.val_crop_size,
                          bad_log=unreadable.BadImageLog(args.bad_images), interpolation=args.interpolation,
                          norm=engine.normalization(args))
    train_set, val_set, classes = loaders.build_datasets(cfg)
    if not args.train_augment:
        train_set.transform = val_set.transform  # deterministic: an image's features are the same every epoch
    return train_set, val_set, classes


def build_model(args: argparse.Namespace, num_classes: int) -> tuple[nn.Module, str]:
    """The backbone with its weights (ImageNet unless --weights), a new head, everything but the head frozen."""
    engine.seed_process(args.seed)
    model = factory.create_model(args.arch, num_classes, pretrained=args.pretrained, weights_path=args.weights,
                                width_mult=args.width_mult)
    head_name = factory.replace_head(model, num_classes)  # always new: a head of the file's own classes is no use
    model.requires_grad_(False)
    model.get_submodule(head_name).requires_grad_(True)
    return model, head_name


class FeatureSet(Dataset):
    """Cached head inputs; indexed with a list of positions, it returns a whole batch ``(features, targets, paths)``.

    With the teacher's cached logits, each row of the batch is ``[features | teacher logits]``, (N, D + C): the head
    reads the first D columns (``PackedHead``) and the distillation loss the rest (``CachedSoftTargets``)."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor | None = None
                 ) -> None:
        self.features, self.targets, self.teacher_logits = features, targets, teacher_logits

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        index = torch.as_tensor(indices, dtype=torch.long)
        rows = self.features[index]
        if self.teacher_logits is not None:
            rows = torch.cat([rows, self.teacher_logits[index].to(rows.dtype)], dim=1)
        return rows, self.targets[index], [""] * len(indices)


class PackedHead(nn.Module):
    """The head applied to the first ``width`` columns of a batch: the features, without the cached logits that
    follow them in training batches (validation batches hold the features alone)."""

    def __init__(self, head: nn.Module, width: int) -> None:
        super().__init__()
        self.head, self.width = head, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x[:, :self.width])


class CachedSoftTargets:
    """The teacher of a run on cached features: its logits are the columns after the first ``width``."""

    def __init__(self, width: int) -> None:
        self.width = width

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.width:]


def feature_loader(features: FeatureSet, sampler, batch_size: int) -> DataLoader:
    """Batches of cached features in the order ``sampler`` gives, exactly the batches an image loader would make."""
    return DataLoader(features, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None)


def tap_nodes(names: list[str], head_name: str) -> dict[str, str]:
    """create_feature_extractor's return nodes in a graph of ``names``: the node before the head (the head's input,
    checked on the first batch), the head, and the graph's last node when layers follow the head."""
    where = names.index(head_name)  # ValueError when the head is not called as a module in this graph
    if where == 0:
        raise ValueError(f"{head_name} is the first node")
    nodes = {names[where - 1]: "x", head_name: "y"}
    if names[-1] != head_name:
        nodes[names[-1]] = "out"
    return nodes


def head_taps(model: nn.Module, head_name: str) -> nn.Module | None:
    """``model`` traced by torch.fx to return {"x": the head's input, "y": its output, and "out": the model's output
    when layers follow the head}; None, with a notice, when fx cannot trace it."""
    try:
        train_nodes, eval_nodes = (tap_nodes(names, head_name)
                                   for names in get_graph_node_names(model, suppress_diff_warning=True))
        return create_feature_extractor(model, train_return_nodes=train_nodes, eval_return_nodes=eval_nodes,
                                        suppress_diff_warning=True)
    except Exception as exc:  # noqa: BLE001 (fx fails in many ways, TraceError, TypeError..., on Python it cannot follow)
        print(f"=> torch.fx cannot trace {type(model).__name__} up to its head {head_name} ({type(exc).__name__}), so "
              "features are not cached; the backbone runs every epoch", flush=True)
        return None


def head_gives_output(head: nn.Module, taps: dict[str, torch.Tensor], first: bool) -> bool:
    """True when the head's output is the model's output (no layers follow it, unlike SqueezeNet's); on the first
    batch also that the tapped input is the head's input."""
    out = taps.get("out", taps["y"])
    if out is not taps["y"] and not torch.equal(out, taps["y"]):
        return False
    return not first or torch.allclose(head(taps["x"]), taps["y"], rtol=1e-4, atol=1e-5)


def extract_features(model: nn.Module, head_name: str, loader: DataLoader, ctx: DistContext, show: loop.PassConfig,
                     stop: faults.StopRequest | None = None, teacher: distill.Teacher | None = None
                     ) -> FeatureSet | None:
    """The head's input for every image, in dataset order (torchvision's create_feature_extractor), and the
    ``teacher``'s logits for it when given; None, with a notice, when it cannot be cached: layers follow the head
    (SqueezeNet), torch.fx cannot trace the model, or a teacher is given and the head's input is not one vector.

    A signal caught by ``stop`` ends it after the batch in hand (``faults.Interrupted``): nothing is trained yet.
    """
    taps = head_taps(model, head_name)
    if taps is None:
        return None
    head = model.get_submodule(head_name)
    progress = Progress(len(loader), [], show.prefix, show.print_freq, ctx.is_main)
    features, targets, pos = None, torch.empty(len(loader.dataset), dtype=torch.long), 0
    soft = None
    taps.eval()
    try:
        with torch.no_grad():  # not inference_mode: the cached tensors are later used in autograd
            for i, batch in enumerate(loader):
                if batch is None:  # every image of this batch was unreadable and skipped
                    progress.step(i)
                    continue
                images, target, _paths = batch
                seen = taps(images.to(ctx.device, non_blocking=True))
                if not head_gives_output(head, seen, first=features is None):
                    print(f"=> layers follow the classifier {head_name}, so features are not cached; the backbone "
                          "runs every epoch", flush=True)
                    return None
                if teacher is not None and seen["x"].dim() != 2:
                    print(f"=> the input of {head_name} is not one vector per image, so the teacher's logits are "
                          "not cached with it; the backbone and teacher run every epoch", flush=True)
                    return None
                if features is None:  # (N, *head input shape), on the CPU so that ImageNet-sized caches fit
                    features = torch.empty((len(loader.dataset), *seen["x"].shape[1:]), dtype=seen["x"].dtype)
                features[pos:pos + len(target)] = seen["x"].cpu()
                if teacher is not None:
                    logits = teacher(transforms.to_model_input(images, ctx.device, norm=show.norm)).float().cpu()
                    soft = torch.empty((len(loader.dataset), logits.shape[1])) if soft is None else soft
                    soft[pos:pos + len(target)] = logits
                targets[pos:pos + len(target)] = target
                pos += len(target)
                progress.step(i)
                if stop is not None and stop.signum:
                    raise faults.Interrupted(stop.signum, "while computing features, before training", "run it again.")
    finally:
        progress.close()
    if features is None:
        return None
    # fewer rows than images when unreadable ones were dropped
    return FeatureSet(features[:pos], targets[:pos], None if soft is None else soft[:pos])


def cache_loaders(args: argparse.Namespace, run: loop.Run, head_name: str, train_set: Dataset, ctx: DistContext,
                  stop: faults.StopRequest) -> tuple[DataLoader, DataLoader] | None:
    """Loaders over the cached train and val features (train with the teacher's logits when distilling), or None
    if they cannot be cached."""
    t0 = time.time()
    ordered = loaders.ordered_loader(args.data_source, train_set, run.train_loader.batch_size,
                                     run.train_loader.num_workers, ctx.device)
    train_feats = extract_features(run.model, head_name, ordered, ctx,
                                   loop.PassConfig("Features train: ", args.print_freq, norm=run.norm), stop,
                                   run.step.teacher if run.step is not None else None)
    if train_feats is None:
        return None
    val_feats = extract_features(run.model, head_name, run.val_loader, ctx,
                                 loop.PassConfig("Features val: ", args.print_freq, norm=run.norm), stop)
    size_mb = (train_feats.features.nbytes + val_feats.features.nbytes) / 2**20
    print(f"=> features of {len(train_feats)} train + {len(val_feats)} val images cached in {time.time() - t0:.1f} "
          f"s ({tuple(train_feats.features.shape[1:])} each, {size_mb:.1f} MiB)", flush=True)
    sampler = sampling.GlobalBatchSampler(len(train_feats), run.train_loader.batch_size, seed=args.seed or 0)
    return (feature_loader(train_feats, sampler, run.train_loader.batch_size),
            feature_loader(val_feats, sampling.ShardSampler(len(val_feats)), run.val_loader.batch_size))


def build_run(args: argparse.Namespace, ctx: DistContext, workers: int) -> tuple[loop.Run, str, Dataset]:
    """Image loaders, model with a new head, SGD over the head only, schedule; the head's name and the train set."""
    train_set, val_set, classes = build_datasets(args)
    train_loader, val_loader = loaders.build_loaders(args.data_source, train_set, val_set, args.batch_size, workers,
                                                     ctx, seed=args.seed)
    model, head_name = build_model(args, len(classes))
    model.to(ctx.device)
    head = model.get_submodule(head_name)
    optimizer = torch.optim.SGD(head.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    sched_cfg = schedule.ScheduleConfig(args.lr_schedule, args.epochs, len(train_loader), args.warmup_epochs,
                                        args.lr_step_size, args.lr_gamma)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing).to(ctx.device)
    run = loop.Run(model, train_loader, val_loader, criterion, optimizer,
                     schedule.build_scheduler(optimizer, sched_cfg), classes, getattr(train_set, "bad_log", None),
                     norm=engine.normalization(args))
    teacher = engine.build_teacher(args, classes, ctx)
    if teacher is not None:  # the step is rebuilt for what is trained once the features are cached (``step_for``)
        run.step = TrainStep(model, distill.DistillLoss(criterion, engine.kd_config(args)), optimizer,
                             run.scheduler, run.precision, teacher=teacher)
    return run, head_name, train_set


def trainee(run: loop.Run, head_name: str) -> loop.Trainee:
    """The head alone on cached features (reading the features of rows that carry the teacher's logits too); else
    the whole model, with only the head in training mode."""
    head = run.model.get_submodule(head_name)
    features = run.train_loader.dataset
    if not isinstance(features, FeatureSet):
        return loop.Trainee(run.model, head)
    if features.teacher_logits is not None:
        return loop.Trainee(PackedHead(head, features.features.shape[1]))
    return loop.Trainee(head)


def step_for(run: loop.Run, trained: loop.Trainee) -> TrainStep:
    """The training step of what is trained: plain cross-entropy, or distillation from the live teacher (images) or
    from the cached logits (features)."""
    teacher = run.step.teacher if run.step is not None else None
    if teacher is not None and isinstance(trained.module, PackedHead):
        teacher = CachedSoftTargets(trained.module.width)
    criterion = run.step.criterion if teacher is not None else run.criterion
    return TrainStep(trained.module, criterion, run.optimizer, run.scheduler, run.precision, teacher=teacher)


def header(args: argparse.Namespace, ctx: DistContext, run: loop.Run, head_name: str, cache: bool) -> str:
    """One short description of the run."""
    head = run.model.get_submodule(head_name)
    trained = factory.count_params(head)
    source = args.weights or "ImageNet weights"
    transform = (f"RandomResizedCrop {args.train_crop_size} + flip" if args.train_augment else
                 f"Resize {args.val_resize_size} ({args.interpolation}) + CenterCrop {args.val_crop_size}, from "
                 f"{args.preprocess_source}")
    return (f"=> {args.arch} from {source}, new head {head_name} ({head}) | "
            f"{(factory.count_params(run.model) - trained) / 1e6:.2f} M params frozen, {trained / 1e3:.2f} k trained"
            f" | data: {len(run.train_loader.dataset)} train / {len(run.val_loader.dataset)} val images "
            f"({args.data_source.describe()}), {len(run.classes)} classes | 1 process on {ctx.device.type} | "
            f"batch {args.batch_size} | lr {args.lr} "
            f"{args.lr_schedule} schedule | epochs {args.epochs} | train transform: {transform} | feature cache "
            f"{'on' if cache else 'off'} | output {args.output_dir}" + distillation_note(args, run))


def distillation_note(args: argparse.Namespace, run: loop.Run) -> str:
    """`` | distillation from ...`` when a teacher is set (its logits are cached with the features when they are)."""
    if run.step is None or run.step.teacher is None:
        return ""
    return f" | distillation from {run.step.teacher.description}; {distill.describe(engine.kd_config(args))}"


def loop_config(args: argparse.Namespace, cache: bool) -> loop.LoopConfig:
    """The engine loop's settings: a CSV row per epoch and a checkpoint of the whole model after every (short) epoch,
    with no per-step log and no mid-epoch checkpoints but the one a stop writes. On cached features the loader reads
    tensors from memory, so no input-bound line is printed."""
    return loop.LoopConfig(args.epochs, args.output_dir, LOG_NAME, args.arch, checkpoint.plain_args(args),
                           args.print_freq, args.seed, step_log=False,
                           input_hint=None if cache else engine.input_hint(args))


def train(args: argparse.Namespace, ctx: DistContext) -> dict:
    """Build, resume, cache the features, then evaluate (``-e``) or train the head through the engine's loop;
    SIGTERM/SIGINT stop it cleanly, with a checkpoint once training has started."""
    torch.backends.cudnn.benchmark = args.seed is None
    workers = sampling.default_workers() if args.workers is None else args.workers
    run, head_name, train_set = build_run(args, ctx, workers)
    path = resume.resume_path(args.resume, args.output_dir)
    start = resume.restore(path, run, args.arch) if path else loop.ResumePoint()
    if args.start_epoch is not None:
        start = loop.ResumePoint(args.start_epoch, 0, start.best_acc1, start.resumed)
    cache = args.cache_features is not False and not args.train_augment
    print(header(args, ctx, run, head_name, cache), flush=True)
    stop = faults.StopRequest().install()
    try:
        if cache:  # after resume, so that the features are those of the resumed backbone
            loaders = cache_loaders(args, run, head_name, train_set, ctx, stop)
            if loaders:
                run.train_loader, run.val_loader = loaders
        trained = trainee(run, head_name)
        if args.evaluate:
            stop.uninstall()  # nothing to save: a signal may stop the evaluation at once
            val = loop.evaluate(trained.module, run.val_loader, run.criterion, ctx, args.print_freq, norm=run.norm)
            return {"best_acc1": val.top1, "best_epoch": None, "val": val}
        run.step = step_for(run, trained)
        return loop.train_loop(run, ctx, loop_config(args, cache), start, trained, stop)
    finally:
        stop.uninstall()


def main(args: argparse.Namespace) -> dict:
    with exit_on_user_error():
        check_args(args)
        if not args.weights:
            args.pretrained = True  # the backbone is ImageNet's unless --weights
        launch.prepare(args)
        ctx = distributed.single_process(args.gpu, args.no_accel)
        with exit_on_stop(ctx, args.output_dir):
            return train(args, ctx)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
