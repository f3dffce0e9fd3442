"""Command-line options, declared once and combined per script with ``argparse`` ``parents=``.

Each ``*_parser()`` returns an ``ArgumentParser(add_help=False)`` holding one argument group; its parameters leave
out the flags a script would not honour, so that every script's ``--help`` lists exactly what it uses. A script
builds its parser as ``argparse.ArgumentParser(description=..., parents=[options.data_parser(), ...])`` and adds
only the flags that are its own. Flag names follow the PyTorch ImageNet example so that its users feel at home.

Every numeric flag is read through a ``Number`` ``type=``, so that a bad value (negative, zero, NaN, infinite or
absurdly large) ends in argparse's ``error:`` line and exit status 2 before any work; checks that involve two flags
are in the ``check_*`` functions and raise UserError.
"""
from __future__ import annotations

import argparse
import os

from common.cli.recipes import DEFAULT_RECIPE, RECIPES, default_help
from common.data.transforms import AUTO_AUGMENT, INTERPOLATIONS
from common.errors import UserError
from common.limits import (
    MAX_DIST_TIMEOUT,
    MAX_PIXELS,
    MAX_WIDTH_MULT,
    TRAIN_CROP_SIZE,
    VAL_CROP_SIZE,
    VAL_RESIZE_SIZE,
    Number,
)
from common.models.factory import check_arch

LR_SCHEDULES = ("step", "linear", "cosine", "constant")
OPTIMIZERS = ("sgd", "adamw", "rmsproptf")
POSITIVE_INT = Number(int, 1)
NON_NEGATIVE_INT = Number(int, 0)
POSITIVE = Number(float, 0, low_open=True)
NON_NEGATIVE = Number(float, 0)
PROBABILITY = Number(float, 0, 1)
FRACTION = Number(float, 0, 1, high_open=True)  # [0, 1): label smoothing, dropout, momentum
PIXELS = Number(int, 1, MAX_PIXELS)
WORKERS = Number(int, 0, 1024)
SEED = Number(int, 0, 2**32 - 1)  # NumPy's seed range
# --output-dir defaults: one folder per kind of run, under runs/ (git-ignored), as test.py's runs/test
TRAIN_OUTPUT_DIR = os.path.join("runs", "train")
PROBE_OUTPUT_DIR = os.path.join("runs", "probe")


def checkpoint_interval(text: str) -> str:
    """argparse ``type=`` of ``--checkpoint-interval``: a positive number of steps (``500``) or of minutes
    (``30m``); returned as given, for ``faults.CheckpointTimer``."""
    minutes = text.strip().lower().endswith("m")
    try:
        (Number(float, 0, low_open=True) if minutes else POSITIVE_INT)(text.strip()[:-1] if minutes else text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive number of steps (500) or of minutes (30m), "
                                         f"got {text!r}") from None
    return text


def _group(title: str) -> tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    parser = argparse.ArgumentParser(add_help=False)
    return parser, parser.add_argument_group(title)


def data_parser(training: bool = True, demo: bool = False, multi_size: bool = False) -> argparse.ArgumentParser:
    """Dataset location and input sizes: ``DIR`` or ``--data DIR``, ``-j``, resize and crop sizes, interpolation.

    ``training`` adds ``--dummy`` and ``--train-crop-size``, which only training reads; ``demo`` adds ``--demo``;
    ``multi_size`` lets the eval sizes list several resolutions and adds ``--crop-pct`` (test.py).
    """
    parser, g = _group("data")
    g.add_argument("data_dir", nargs="?", metavar="DIR", default=None,
                   help="dataset root holding train/<class>/* and val/<class>/*, or a Hugging Face parquet or "
                        "save_to_disk folder, or WebDataset shards (prefix hf:, wds: or folder: to choose; same as "
                        "--data)")
    g.add_argument("--data", default=None, metavar="DIR", help="dataset root (same as the positional DIR)")
    if training:
        g.add_argument("--dummy", action="store_true",
                       help="use synthetic images (torchvision FakeData) instead of DIR")
    if demo:
        g.add_argument("--demo", action="store_true",
                       help="generate the built-in demo dataset once (to runs/data/demo) and train on it, "
                            "with defaults sized for it (each flag still overrides them)")
    g.add_argument("-j", "--workers", type=WORKERS, default=None, metavar="N",
                   help="data loading workers per process, 0 to 1024 (default: CPU cores / processes on this node, "
                        "at most 8)")
    own = "the weights' own with --pretrained"
    if training:
        g.add_argument("--train-crop-size", type=PIXELS, default=None, metavar="PX",
                       help=f"RandomResizedCrop size for training, at most {MAX_PIXELS} (default: {own}, else "
                            f"{TRAIN_CROP_SIZE})")
    saved = f"{own}, else {'the starting checkpoint' if training else 'the checkpoint'}'s, else "
    several = {"nargs": "+"} if multi_size else {}
    g.add_argument("--val-resize-size", type=PIXELS, default=None, metavar="PX", **several,
                   help=f"shorter side is resized to this before the centre crop, at most {MAX_PIXELS}"
                        + ("; one per --val-crop-size when it lists several" if multi_size else "")
                        + f" (default: {saved}{VAL_RESIZE_SIZE})")
    g.add_argument("--val-crop-size", type=PIXELS, default=None, metavar="PX", **several,
                   help=f"centre crop size for evaluation, at most {MAX_PIXELS}"
                        + ("; several (224 256 288) evaluate each in one pass over the files" if multi_size else "")
                        + f" (default: {saved}{VAL_CROP_SIZE})")
    if multi_size:
        g.add_argument("--crop-pct", type=Number(float, 0, 1, low_open=True), default=None, metavar="F",
                       help="resize to crop / F (rounded down) for each crop size, in (0, 1], e.g. 0.875 (default: "
                            "the model's own crop-to-resize ratio when --val-crop-size lists several sizes)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, default=None,
                   help=f"resize interpolation of evaluation{' (and of RandomResizedCrop)' if training else ''} "
                        f"(default: {saved}bilinear)")
    return parser


def model_parser(default_arch: str | None = "resnet18", dropout: bool = True) -> argparse.ArgumentParser:
    """Model choice: ``-a/--arch``, ``--pretrained``, ``--weights``, ``--width-mult``; ``--dropout`` if asked."""
    parser, g = _group("model")
    g.add_argument("-a", "--arch", default=default_arch, metavar="ARCH",
                   help="any torchvision classification model, or ghostnet, ghostnetv2, ghostnetv3 "
                        f"(default: {default_arch or 'the checkpoint' + chr(39) + 's'})")
    g.add_argument("--pretrained", action="store_true",
                   help="start from ImageNet weights (torchvision weights API; official release for ghostnet)")
    g.add_argument("--weights", default=None, metavar="PATH",
                   help="start from a local state_dict or checkpoint file instead of downloading")
    g.add_argument("--width-mult", type=Number(float, 0, MAX_WIDTH_MULT, low_open=True), default=1.0,
                   help=f"GhostNet (v1, V2, V3) width multiplier, in (0, {MAX_WIDTH_MULT:g}] (default: 1.0)")
    if dropout:
        g.add_argument("--dropout", type=FRACTION, default=None,
                       help="dropout before the classifier, in [0, 1), for models that have one "
                            "(default: the model's own)")
    return parser


def train_parser(recipes: bool = True, mid_epoch_checkpoints: bool = True, torchrun: bool = True,
                 output_dir: str = TRAIN_OUTPUT_DIR) -> argparse.ArgumentParser:
    """Optimisation, schedule, resume/evaluate and output flags of the training scripts.

    The defaults that ``--help`` shows come from the RECIPES table: each recipe's where ``recipes`` is true (the
    script has ``--recipe``), else the default recipe's. ``mid_epoch_checkpoints`` adds ``--checkpoint-interval``;
    ``torchrun`` says that ``--resume`` defaults to auto under torchrun; ``output_dir`` is ``--output-dir``'s
    default, a folder under runs/ (never the current folder, often the checkout).
    """
    def default(key: str, none: str = "none") -> str:
        return default_help(key, all_recipes=recipes, none=none)

    parser, g = _group("training")
    g.add_argument("--epochs", type=POSITIVE_INT, default=None, help=f"total epochs to run ({default('epochs')})")
    g.add_argument("--start-epoch", type=NON_NEGATIVE_INT, default=None,
                   help="epoch number to start at (default: 0, or resumed)")
    g.add_argument("-b", "--batch-size", type=POSITIVE_INT, default=None, metavar="N",
                   help=f"global batch size: the sum over all processes and GPUs ({default('batch_size')})")
    scaled = "; a recipe's lr given per N images is scaled linearly to -b" if recipes else ""
    g.add_argument("--lr", "--learning-rate", type=NON_NEGATIVE, default=None, dest="lr",
                   help=f"initial learning rate{scaled} ({default('lr')})")
    g.add_argument("--momentum", type=FRACTION, default=None, help=f"SGD momentum, in [0, 1) ({default('momentum')})")
    g.add_argument("--wd", "--weight-decay", type=NON_NEGATIVE, default=None, dest="weight_decay",
                   help=f"weight decay ({default('weight_decay')})")
    g.add_argument("--lr-schedule", "--sched", choices=LR_SCHEDULES, default=None, dest="lr_schedule",
                   help="step: x gamma every --lr-step-size epochs; linear: per-iteration decay to 0; "
                        f"cosine: per-iteration cosine to 0; constant ({default('lr_schedule')})")
    g.add_argument("--lr-step-size", "--decay-epochs", type=POSITIVE, default=None, dest="lr_step_size",
                   help=f"epochs between step decays, may be fractional (2.4) ({default('lr_step_size')})")
    g.add_argument("--lr-gamma", "--decay-rate", type=Number(float, 0, 1, low_open=True), default=None,
                   dest="lr_gamma", help=f"step decay factor, in (0, 1] ({default('lr_gamma')})")
    g.add_argument("--warmup-epochs", type=NON_NEGATIVE, default=None,
                   help=f"linear warm-up epochs, per iteration ({default('warmup_epochs')})")
    g.add_argument("--label-smoothing", type=FRACTION, default=None,
                   help=f"label smoothing, in [0, 1) ({default('label_smoothing')})")
    g.add_argument("-p", "--print-freq", type=POSITIVE_INT, default=10, metavar="N",
                   help="print every N steps (default: 10)")
    g.add_argument("--resume", default="", metavar="PATH",
                   help="checkpoint to resume from, or 'auto' for --output-dir/checkpoint.pth.tar if it exists "
                        "(default: none" + ("; 'auto' under torchrun)" if torchrun else ")"))
    g.add_argument("--bad-images", choices=("skip", "fail"), default="skip",
                   help="unreadable image files: skip them (named once, counted per epoch in the CSV; training "
                        "batches stay full) or stop at the first (default: skip)")
    if mid_epoch_checkpoints:
        g.add_argument("--checkpoint-interval", type=checkpoint_interval, default=None, metavar="N|Nm",
                       help="also checkpoint mid-epoch every N steps, or every N minutes with a trailing m "
                            "(default: off)")
    g.add_argument("-e", "--evaluate", action="store_true", help="evaluate on the validation set and exit")
    g.add_argument("--seed", type=SEED, default=None, help=f"seed for reproducible runs, 0 to {SEED.high}")
    g.add_argument("--output-dir", default=output_dir, metavar="DIR",
                   help=f"where checkpoints and the CSV log go (default: {output_dir.replace(os.sep, '/')})")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --output-dir that holds another run's log or checkpoints, removing "
                        "them (without it such a folder is refused unless --resume continues that run)")
    return parser


def recipe_parser() -> argparse.ArgumentParser:
    """Recipe, optimiser extras, regularisation and run-watching flags of the four training scripts."""
    parser, g = _group("recipe and regularisation")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="defaults for every optimisation flag (each still overridable): resnet = the PyTorch "
                        "ImageNet example; ghostnet = the GhostNet paper; ghostnet-finetune = its second stage "
                        f"(default: {DEFAULT_RECIPE})")
    g.add_argument("--opt", choices=OPTIMIZERS, default=None,
                   help="optimiser: sgd, adamw (decoupled weight decay) or rmsproptf (RMSprop in TensorFlow's form, "
                        f"as timm's RMSpropTF; --momentum applies) ({default_help('opt')})")
    g.add_argument("--opt-eps", type=POSITIVE, default=None, metavar="EPS",
                   help="epsilon of adamw and rmsproptf (default: ghostnetv2 0.001, else the optimiser's own: "
                        "adamw 1e-8, rmsproptf 1e-10)")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help=f"Nesterov momentum ({default_help('nesterov')})")
    g.add_argument("--norm-weight-decay", type=NON_NEGATIVE, default=None, metavar="WD",
                   help="weight decay of normalisation-layer weights and of all biases "
                        f"({default_help('norm_weight_decay', none='same as --wd')})")
    g.add_argument("--mixup-alpha", type=NON_NEGATIVE, default=0.0,
                   help="MixUp with this Beta alpha (default: 0 = off)")
    g.add_argument("--cutmix-alpha", type=NON_NEGATIVE, default=0.0,
                   help="CutMix with this Beta alpha; with MixUp too, each batch gets one of them (default: 0 = off)")
    g.add_argument("--model-ema", action=argparse.BooleanOptionalAction, default=None,
                   help="keep an exponential moving average of the weights; it is evaluated and saved alongside "
                        "the raw weights, and the better of the two is marked in the checkpoint (default: on with "
                        "--recipe ghostnetv2/ghostnetv3, else off)")
    g.add_argument("--model-ema-decay", type=Number(float, 0, 1, low_open=True, high_open=True), default=0.9998,
                   help="EMA decay per optimizer step, in (0, 1) (default: 0.9998)")
    g.add_argument("--clip-grad-norm", type=POSITIVE, default=None, metavar="NORM",
                   help="clip the gradients' global norm to NORM (default: off)")
    g.add_argument("--accum-steps", type=POSITIVE_INT, default=1, metavar="N",
                   help="split each process's batch into N micro-batches whose gradients are accumulated: the "
                        "same optimizer step with 1/N of the activation memory (default: 1)")
    g.add_argument("--finetune-from", default=None, metavar="CKPT",
                   help="start from the weights of CKPT (a checkpoint of this project or a state_dict) with a fresh "
                        "optimizer, schedule and epoch count, e.g. with --recipe ghostnet-finetune")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard scalars to --output-dir/tensorboard (needs the tensorboard package)")
    g.add_argument("--save-samples", action="store_true",
                   help="save the first training batch, after augmentation, as --output-dir/train_samples.png")
    return parser


def kd_parser() -> argparse.ArgumentParser:
    """Knowledge distillation from a teacher (timm's flag names): which model, and how its soft targets are weighed."""
    parser, g = _group("knowledge distillation")
    g.add_argument("--kd-model", default=None, metavar="ARCH",
                   help="distil from a teacher of this architecture (with --kd-checkpoint or --kd-pretrained); "
                        "with --kd-checkpoint alone the checkpoint's own architecture is used (default: no teacher)")
    g.add_argument("--kd-checkpoint", default=None, metavar="PATH",
                   help="the teacher's weights: a checkpoint of this project or a state_dict (then give --kd-model)")
    g.add_argument("--kd-pretrained", action="store_true", help="the teacher is --kd-model with ImageNet weights")
    g.add_argument("--kd-width-mult", type=Number(float, 0, MAX_WIDTH_MULT, low_open=True), default=1.0,
                   metavar="W", help="the teacher's GhostNet width multiplier, for a state_dict (default: 1.0)")
    g.add_argument("--kd-temperature", type=POSITIVE, default=None, metavar="T",
                   help=f"softmax temperature of the soft targets ({default_help('kd_temperature')})")
    g.add_argument("--kd-loss-weight", type=NON_NEGATIVE, default=None, metavar="W",
                   help="weight of T^2 * KL(teacher || student) at temperature T "
                        f"({default_help('kd_loss_weight')})")
    g.add_argument("--task-loss-weight", type=NON_NEGATIVE, default=None, metavar="W",
                   help="weight of the task loss (cross-entropy with label smoothing, MixUp/CutMix targets) "
                        f"({default_help('task_loss_weight')})")
    return parser


def check_kd_args(args: argparse.Namespace, archs: list[str]) -> None:
    """The teacher flags against each other: a teacher needs weights, and one source of them."""
    if not (getattr(args, "kd_model", None) or getattr(args, "kd_checkpoint", None) or
            getattr(args, "kd_pretrained", False)):
        return
    if args.kd_checkpoint and args.kd_pretrained:
        raise UserError("--kd-checkpoint and --kd-pretrained both name the teacher's weights; give one of them.")
    if not (args.kd_checkpoint or args.kd_pretrained):
        raise UserError(f"--kd-model {args.kd_model} needs weights: add --kd-pretrained (ImageNet weights) or "
                        "--kd-checkpoint PATH (a randomly initialised teacher teaches nothing).")
    if args.kd_pretrained and not args.kd_model:
        raise UserError("--kd-pretrained needs --kd-model to say which ImageNet model teaches.")
    if args.kd_checkpoint and not os.path.isfile(args.kd_checkpoint):
        raise UserError(f"--kd-checkpoint {args.kd_checkpoint!r} does not exist; check the path.")
    if args.kd_model:
        check_arch(args.kd_model, archs)


def augment_parser() -> argparse.ArgumentParser:
    """Training augmentation flags (ImageNet defaults; tune them for other data such as digits or text)."""
    parser, g = _group("training augmentation")
    g.add_argument("--rrc-scale", type=Number(float, 0, 1, low_open=True), nargs=2, default=(0.08, 1.0),
                   metavar=("MIN", "MAX"),
                   help="RandomResizedCrop area range, as fractions of the image in (0, 1] (default: 0.08 1.0)")
    g.add_argument("--rrc-ratio", type=Number(float, 0, 100, low_open=True), nargs=2, default=(3 / 4, 4 / 3),
                   metavar=("MIN", "MAX"), help="RandomResizedCrop aspect-ratio range, in (0, 100] "
                                                "(default: 0.75 1.333)")
    g.add_argument("--hflip", type=PROBABILITY, default=0.5, metavar="P",
                   help="horizontal flip probability; 0 for digits or text (default: 0.5)")
    g.add_argument("--auto-augment", choices=AUTO_AUGMENT, default=None,
                   help="a torchvision augmentation policy (default: none)")
    g.add_argument("--random-erase", type=PROBABILITY, default=0.0, metavar="P",
                   help="RandomErasing probability (default: 0)")
    g.add_argument("--color-jitter", type=NON_NEGATIVE, default=0.0, metavar="S",
                   help="brightness, contrast and saturation jitter strength (default: 0 = off)")
    return parser


AMP_DTYPES = ("auto", "bf16", "fp16")


def speed_parser(pipeline: bool = True) -> argparse.ArgumentParser:
    """Speed features; each is on by default where it leaves results unchanged, and each can be switched off.

    ``pipeline`` adds ``--uint8-pipeline``, which only scripts that load images read."""
    parser, g = _group("speed")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="automatic mixed precision (default: on for CUDA; on the CPU, on with native bf16 for models "
                        "without depthwise convolutions, whose bf16 kernels are slower there)")
    g.add_argument("--amp-dtype", choices=AMP_DTYPES, default="auto",
                   help="autocast dtype: bf16, or fp16 with a gradient scaler (CUDA only) (default: auto = bf16 "
                        "where supported, else fp16)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format for the model and its inputs (default: on)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (default: off)")
    if pipeline:
        g.add_argument("--uint8-pipeline", action=argparse.BooleanOptionalAction, default=True,
                       help="decode JPEGs with libjpeg-turbo and augment uint8 tensors in the workers, normalise "
                            "each batch on the device; --no-uint8-pipeline: the classic PIL transforms (default: on)")
    return parser


def check_data_parser() -> argparse.ArgumentParser:
    """``--check-data``: scan the dataset for unreadable files instead of training."""
    parser, g = _group("data check")
    g.add_argument("--check-data", action="store_true",
                   help="decode every image the script would read (training: train/ and val/; test.py: the "
                        "labelled folder or the images given), list the unreadable ones, and exit (1 if any)")
    return parser


def unlabelled_parser() -> argparse.ArgumentParser:
    """``--unlabelled`` (test.py, the sorter): read the images of a folder without labels."""
    parser, g = _group("images without labels")
    g.add_argument("--unlabelled", action="store_true",
                   help="read every image under --data and its subfolders without labels, whatever the folders are "
                        "named (a folder of images without class folders is read so without this flag)")
    return parser


DIST_GROUP = "devices and distributed"  # the groups below share this title, so argparse shows them as one


def device_parser(gpu: bool = True) -> argparse.ArgumentParser:
    """``--no-accel``, and ``--gpu`` for the scripts that can run in one process on a chosen GPU."""
    parser, g = _group(DIST_GROUP)
    if gpu:
        g.add_argument("--gpu", type=NON_NEGATIVE_INT, default=None, help="GPU id to use in single-process mode")
    g.add_argument("--no-accel", action="store_true", help="run on the CPU even when an accelerator is present")
    return parser


def process_group_parser() -> argparse.ArgumentParser:
    """``--dist-backend`` and ``--dist-timeout``: how the processes of a DDP or torchrun job talk to each other."""
    parser, g = _group(DIST_GROUP)
    g.add_argument("--dist-backend", default=None, help="nccl on GPUs, gloo on CPU (default: chosen by device)")
    g.add_argument("--dist-timeout", type=Number(float, 0, MAX_DIST_TIMEOUT, low_open=True), default=1800.0,
                   metavar="S", help="seconds to wait for another process before giving up, at most "
                                     f"{MAX_DIST_TIMEOUT:.0f} (a week) (default: 1800)")
    return parser


def launch_parser(spawn: bool = True) -> argparse.ArgumentParser:
    """``--dist-url`` and ``--sync-bn`` of DDP training; ``spawn`` adds the mp.spawn flags (nodes, rank, nprocs)."""
    parser, g = _group(DIST_GROUP)
    if spawn:
        g.add_argument("--world-size", type=Number(int, -1), default=-1,
                       help="number of nodes, each spawning --nprocs processes (default: -1 = this node only)")
        g.add_argument("--rank", type=Number(int, -1), default=-1,
                       help="node rank for multi-node training (default: -1 = auto)")
    g.add_argument("--dist-url", default=None,
                   help="rendezvous URL (default: env:// under torchrun, else tcp://127.0.0.1:<free port>)")
    if spawn:
        g.add_argument("--nprocs", type=Number(int, 1, 1024), default=None,
                       help="processes per node for spawn-based launchers, at most 1024 (default: number of GPUs, "
                            "or 1 on CPU)")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP (GPUs only)")
    return parser


def profile_parser() -> argparse.ArgumentParser:
    """``--profile-input``: input-only against model-only throughput on the run's own settings, then exit."""
    parser, g = _group("input profile")
    g.add_argument("--profile-input", type=POSITIVE_INT, nargs="?", const=20, default=None, metavar="STEPS",
                   help="instead of training, time STEPS batches of the loader alone and STEPS training steps on a "
                        "synthetic batch alone, and say which bounds the run (default STEPS: 20)")
    return parser


def training_parser(description: str, gpu: bool = True, ddp: bool = True,
                    spawn: bool = True) -> argparse.ArgumentParser:
    """The parser of a training script: every flag group the four share, in the order ``--help`` shows them, then
    the device and distributed flags its launcher honours: ``--gpu`` (``gpu``), the process group and DDP flags
    (``ddp``), and among those the mp.spawn flags (``spawn``)."""
    devices = [device_parser(gpu)] + ([process_group_parser(), launch_parser(spawn)] if ddp else [])
    groups = [data_parser(demo=True), model_parser(), train_parser(), recipe_parser(), augment_parser(),
              kd_parser(), speed_parser(), check_data_parser(), profile_parser()]
    return argparse.ArgumentParser(description=description, parents=groups + devices)


def check_training_args(args: argparse.Namespace, archs: list[str]) -> None:
    """Check the flags every training script shares against each other, before any work starts (their values are
    checked by their ``type=``); ``defaults.fill_training_defaults`` has filled what depends on other flags."""
    check_arch(args.arch, archs)
    check_kd_args(args, archs)
    if hasattr(args, "recipe"):
        check_recipe_args(args)
    if getattr(args, "sync_bn", False) and args.no_accel:
        raise UserError("--sync-bn needs GPUs (SyncBatchNorm does not run on the CPU); drop --sync-bn or --no-accel.")
    if not args.data and not args.dummy and not getattr(args, "demo", False):
        raise UserError("no dataset given: pass DIR (or --data DIR) holding train/<class>/* and val/<class>/*, "
                        "--dummy for synthetic images, or --demo for the built-in demo dataset.")


def check_recipe_args(args: argparse.Namespace) -> None:
    """Validate the recipe, regularisation and augmentation flags of the training scripts against each other."""
    for name in ("rrc_scale", "rrc_ratio"):
        low, high = getattr(args, name)
        if low > high:
            raise UserError(f"--{name.replace('_', '-')} {low} {high}: give MIN <= MAX.")
    if args.nesterov and args.opt != "sgd":
        raise UserError(f"--nesterov is SGD's; drop it, or use --opt sgd instead of --opt {args.opt}.")
    if args.nesterov and not args.momentum:
        raise UserError("--nesterov needs momentum: give --momentum above 0, or --no-nesterov.")
    if args.finetune_from and args.resume:
        raise UserError("--finetune-from starts a new run from a checkpoint's weights and --resume continues one; "
                        "give one of them.")
    if args.finetune_from and not os.path.isfile(args.finetune_from):
        raise UserError(f"--finetune-from {args.finetune_from!r} does not exist; check the path.")
    if args.finetune_from and (args.weights or args.pretrained):
        raise UserError("--finetune-from already gives the starting weights; drop --weights/--pretrained.")
    if args.batch_size % args.accum_steps:
        raise UserError(f"-b/--batch-size {args.batch_size} does not split into --accum-steps {args.accum_steps} "
                        "micro-batches; use a multiple.")


# Evaluation batch per process: large batches keep a GPU busy, but on the CPU they run slower per image than batches
# of about 16 (activations stop fitting in cache).
INFER_BATCH_SIZE_GPU = 64
INFER_BATCH_SIZE_CPU = 16


def inference_parser(onnx: bool = True, batch_help: str | None = None) -> argparse.ArgumentParser:
    """The model file and batch size of the evaluation scripts (test.py, classify_test_data.py, export.py);
    ``onnx`` adds ``--model`` (an exported ONNX file), which export.py does not read; ``batch_help`` says what
    ``-b`` means where it is not the evaluation batch (export.py: the images its check runs on)."""
    parser, g = _group("inference")
    g.add_argument("--ckpt", default=None, metavar="PATH",
                   help="checkpoint written by this project (train_*.py, network.py), or a state_dict saved with "
                        "torch.save (then give -a); 'module.' prefixes of DataParallel/DDP are stripped")
    if onnx:
        g.add_argument("--model", default=None, metavar="MODEL.onnx",
                       help="an ONNX model (export.py, or any (N, 3, H, W) image classifier) to run with onnxruntime "
                            "instead of --ckpt; class names and eval sizes come from its metadata")
    g.add_argument("--classes", default=None, metavar="FILE",
                   help="text file naming the model's classes, one per line in output order: for files that record "
                        "none (a state_dict, a foreign ONNX model); a file that records them must agree")
    g.add_argument("--unsafe-load", action="store_true",
                   help="also accept files holding pickled Python objects, such as whole models saved with "
                        "torch.save(model); loading them can run arbitrary code, so use it only for trusted files")
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="for a checkpoint holding raw and EMA weights (ours and timm's state_dict_ema, torchvision's "
                        "model_ema): --ema takes the EMA ones, --no-ema the raw ones (default: those ours marks as "
                        "the better ones; the raw ones of other tools' files, as timm's validate.py); the header "
                        "says which were used")
    g.add_argument("-b", "--batch-size", type=POSITIVE_INT, default=None, metavar="N",
                   help=batch_help or f"images per batch and process (default: {INFER_BATCH_SIZE_GPU} on a GPU, "
                                      f"{INFER_BATCH_SIZE_CPU} on the CPU)")
    g.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="fold each BatchNorm that follows a convolution into it (torch.fx), which changes the "
                        "outputs only by float rounding (default: on)")
    return parser


def check_inference_args(args: argparse.Namespace) -> None:
    """Check the flags test.py, classify_test_data.py and export.py share (data, model and inference groups)."""
    if args.weights and args.ckpt:
        raise UserError("--weights and --ckpt both name the model file; give one of them.")
    if getattr(args, "model", None):
        check_onnx_args(args)


def check_onnx_args(args: argparse.Namespace) -> None:
    """``--model``: refuse another model source and the speed flags that onnxruntime cannot honour."""
    other = [f for f, on in (("--ckpt", args.ckpt), ("--weights", args.weights), ("--pretrained", args.pretrained))
             if on]
    if other:
        raise UserError(f"--model and {other[0]} both name the model; give one of them.")
    torch_only = [f for f, on in (("--compile", args.compile), ("--amp", args.amp)) if on]
    if torch_only:
        raise UserError(f"{torch_only[0]} is a PyTorch feature that does not apply to an ONNX model (onnxruntime "
                        f"runs it in fp32); drop {torch_only[0]}.")


# export.py --int8: the choices of ONNX Runtime's static quantization; defaults measured (docs/deploy.md).
INT8_FORMATS = ("qdq", "operator")
INT8_TYPES = ("u8s8", "s8s8")  # activations, weights: uint8/int8 or int8/int8
CALIB_METHODS = ("minmax", "entropy", "percentile")
CALIB_IMAGES = 256
MAX_DROP = 1.0


def int8_parser() -> argparse.ArgumentParser:
    """export.py's int8 group: ``--int8``, the calibration set and method, the quantisation format and types, the
    accepted accuracy drop and the layers kept in fp32."""
    parser, g = _group("int8 (ONNX Runtime static quantization)")
    g.add_argument("--int8", action="store_true",
                   help="quantise the ONNX model to int8 (per-channel weights), calibrated on --calib-data")
    g.add_argument("--calib-data", default=None, metavar="DIR",
                   help="labelled images to calibrate on, any format test.py reads (default: the training split "
                        "of --data)")
    g.add_argument("--calib-images", type=POSITIVE_INT, default=CALIB_IMAGES, metavar="N",
                   help=f"calibration images, drawn across classes (default: {CALIB_IMAGES})")
    g.add_argument("--calib-seed", type=SEED, default=0, metavar="N", help="seed of the calibration draw (default: 0)")
    g.add_argument("--calib-method", choices=CALIB_METHODS, default=CALIB_METHODS[0],
                   help=f"activation range estimate (default: {CALIB_METHODS[0]})")
    g.add_argument("--int8-format", choices=INT8_FORMATS, default=INT8_FORMATS[0],
                   help=f"QuantizeLinear/DequantizeLinear pairs or QLinear* operators (default: {INT8_FORMATS[0]})")
    g.add_argument("--int8-types", choices=INT8_TYPES, default=INT8_TYPES[0],
                   help=f"activation and weight types: uint8/int8 or int8/int8 (default: {INT8_TYPES[0]}, the "
                        "faster one on x86 here)")
    g.add_argument("--max-drop", type=NON_NEGATIVE, default=MAX_DROP, metavar="POINTS",
                   help=f"largest top-1 drop on --data accepted before the file is refused (default: {MAX_DROP:g})")
    g.add_argument("--force-int8", action="store_true", help="write the int8 file even above --max-drop")
    g.add_argument("--keep-fp32", nargs="+", default=[], metavar="PATTERN",
                   help="layers left in fp32: module names or ONNX node names, with * wildcards (conv_stem, "
                        "classifier, 'blocks.0.*'), or 'depthwise' for every depthwise convolution")
    return parser


def check_int8_args(args: argparse.Namespace, onnx: bool) -> None:
    """Refuse int8 flags without ``--int8``, and ``--int8`` for another format or without calibration images."""
    given = [f for f, on in (("--calib-data", args.calib_data), ("--force-int8", args.force_int8),
                             ("--keep-fp32", args.keep_fp32)) if on]
    if given and not args.int8:
        raise UserError(f"{given[0]} applies only to an int8 export; add --int8 or drop {given[0]}.")
    if args.int8 and not onnx:
        raise UserError("--int8 writes an ONNX model; name --output *.onnx (or give --format onnx).")
    if args.int8 and not (args.calib_data or getattr(args, "data", None)):
        raise UserError("--int8 calibrates on images: give --calib-data DIR (or --data DIR, whose training split "
                        "is then used).")
