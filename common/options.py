"""Command-line options, declared once and combined per script with ``argparse`` ``parents=``.

Each ``*_parser()`` returns an ``ArgumentParser(add_help=False)`` holding one argument group. A script builds its
parser as ``argparse.ArgumentParser(description=..., parents=[options.data_parser(), ...])`` and adds only the
flags that are its own. Flag names follow the PyTorch ImageNet example so that its users feel at home.
"""
from __future__ import annotations

import argparse
import difflib
import os

from common.errors import UserError
from common.recipes import RECIPES, apply_recipe
from common.transforms import AUTO_AUGMENT

TRAIN_CROP_SIZE = 224
VAL_RESIZE_SIZE = 256
VAL_CROP_SIZE = 224
LR_SCHEDULES = ("step", "linear", "cosine", "constant")


def _group(title: str) -> tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    parser = argparse.ArgumentParser(add_help=False)
    return parser, parser.add_argument_group(title)


def data_parser() -> argparse.ArgumentParser:
    """Dataset location and input sizes: ``DIR`` or ``--data DIR``, ``--dummy``, ``-j``, crop and resize sizes."""
    parser, g = _group("data")
    g.add_argument("data_dir", nargs="?", metavar="DIR", default=None,
                   help="dataset root holding train/<class>/* and val/<class>/* (same as --data)")
    g.add_argument("--data", default=None, metavar="DIR", help="dataset root (same as the positional DIR)")
    g.add_argument("--dummy", action="store_true", help="use synthetic images (torchvision FakeData) instead of DIR")
    g.add_argument("-j", "--workers", type=int, default=None, metavar="N",
                   help="data loading workers per process (default: CPU cores / processes on this node, at most 8)")
    g.add_argument("--train-crop-size", type=int, default=None, metavar="PX",
                   help=f"RandomResizedCrop size for training (default: {TRAIN_CROP_SIZE})")
    g.add_argument("--val-resize-size", type=int, default=None, metavar="PX",
                   help=f"shorter side is resized to this before the centre crop (default: {VAL_RESIZE_SIZE}, "
                        "or the checkpoint's)")
    g.add_argument("--val-crop-size", type=int, default=None, metavar="PX",
                   help=f"centre crop size for evaluation (default: {VAL_CROP_SIZE}, or the checkpoint's)")
    return parser


def model_parser(default_arch: str = "resnet18") -> argparse.ArgumentParser:
    """Model choice: ``-a/--arch``, ``--pretrained``, ``--weights``, ``--width-mult``."""
    parser, g = _group("model")
    g.add_argument("-a", "--arch", default=default_arch, metavar="ARCH",
                   help=f"any torchvision classification model, or ghostnet (default: {default_arch})")
    g.add_argument("--pretrained", action="store_true",
                   help="start from ImageNet weights (torchvision weights API; official release for ghostnet)")
    g.add_argument("--weights", default=None, metavar="PATH",
                   help="start from a local state_dict or checkpoint file instead of downloading")
    g.add_argument("--width-mult", type=float, default=1.0, help="GhostNet width multiplier (default: 1.0)")
    g.add_argument("--dropout", type=float, default=None,
                   help="dropout before the classifier, for models that have one (default: the model's own)")
    return parser


def train_parser() -> argparse.ArgumentParser:
    """Optimisation, schedule, resume/evaluate and output flags of the training scripts."""
    parser, g = _group("training")
    g.add_argument("--epochs", type=int, default=None, help="total epochs to run (default: the recipe's; resnet: 90)")
    g.add_argument("--start-epoch", type=int, default=None, help="epoch number to start at (default: 0, or resumed)")
    g.add_argument("-b", "--batch-size", type=int, default=None, metavar="N",
                   help="global batch size: the sum over all processes and GPUs (default: the recipe's; resnet: 256)")
    g.add_argument("--lr", "--learning-rate", type=float, default=None, dest="lr",
                   help="initial learning rate (default: the recipe's, scaled to -b where the recipe says; "
                        "resnet: 0.1)")
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum (default: 0.9)")
    g.add_argument("--wd", "--weight-decay", type=float, default=None, dest="weight_decay",
                   help="weight decay (default: the recipe's; resnet: 1e-4)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="step: x gamma every --lr-step-size epochs; linear: per-iteration decay to 0; "
                        "cosine: per-iteration cosine to 0; constant (default: the recipe's; resnet: step)")
    g.add_argument("--lr-step-size", type=int, default=None, help="epochs between step decays (default: 30)")
    g.add_argument("--lr-gamma", type=float, default=None, help="step decay factor (default: 0.1)")
    g.add_argument("--warmup-epochs", type=float, default=None,
                   help="linear warm-up epochs, per iteration (default: the recipe's; resnet: 0)")
    g.add_argument("--label-smoothing", type=float, default=None,
                   help="label smoothing (default: the recipe's; resnet: 0)")
    g.add_argument("-p", "--print-freq", type=int, default=10, metavar="N", help="print every N steps (default: 10)")
    g.add_argument("--resume", default="", metavar="PATH",
                   help="checkpoint to resume from, or 'auto' for --output-dir/checkpoint.pth.tar if it exists "
                        "(default: none; 'auto' under torchrun)")
    g.add_argument("--bad-images", choices=("skip", "fail"), default="skip",
                   help="unreadable image files: skip them (named once, counted per epoch in the CSV; training "
                        "batches stay full) or stop at the first (default: skip)")
    g.add_argument("--checkpoint-interval", default=None, metavar="N|Nm",
                   help="also checkpoint mid-epoch every N steps, or every N minutes with a trailing m (default: off)")
    g.add_argument("-e", "--evaluate", action="store_true", help="evaluate on the validation set and exit")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible runs")
    g.add_argument("--output-dir", default=".", metavar="DIR",
                   help="where checkpoints and the CSV log go (default: current directory)")
    return parser


def recipe_parser() -> argparse.ArgumentParser:
    """Recipe, optimiser extras, regularisation and run-watching flags of the four training scripts."""
    parser, g = _group("recipe and regularisation")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="defaults for every optimisation flag (each still overridable): resnet = the PyTorch "
                        "ImageNet example; ghostnet = the GhostNet paper; ghostnet-finetune = its second stage "
                        "(default: resnet)")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (default: the recipe's; ghostnet: on)")
    g.add_argument("--norm-weight-decay", type=float, default=None, metavar="WD",
                   help="weight decay of normalisation-layer weights and of all biases (default: the recipe's; "
                        "ghostnet: 0; resnet: same as --wd)")
    g.add_argument("--mixup-alpha", type=float, default=0.0, help="MixUp with this Beta alpha (default: 0 = off)")
    g.add_argument("--cutmix-alpha", type=float, default=0.0,
                   help="CutMix with this Beta alpha; with MixUp too, each batch gets one of them (default: 0 = off)")
    g.add_argument("--model-ema", action="store_true",
                   help="keep an exponential moving average of the weights; it is evaluated and saved alongside "
                        "the raw weights, and the better of the two is marked in the checkpoint")
    g.add_argument("--model-ema-decay", type=float, default=0.9998,
                   help="EMA decay per optimizer step (default: 0.9998)")
    g.add_argument("--clip-grad-norm", type=float, default=None, metavar="NORM",
                   help="clip the gradients' global norm to NORM (default: off)")
    g.add_argument("--accum-steps", type=int, default=1, metavar="N",
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


def augment_parser() -> argparse.ArgumentParser:
    """Training augmentation flags (ImageNet defaults; tune them for other data such as digits or text)."""
    parser, g = _group("training augmentation")
    g.add_argument("--rrc-scale", type=float, nargs=2, default=(0.08, 1.0), metavar=("MIN", "MAX"),
                   help="RandomResizedCrop area range, as fractions of the image (default: 0.08 1.0)")
    g.add_argument("--rrc-ratio", type=float, nargs=2, default=(3 / 4, 4 / 3), metavar=("MIN", "MAX"),
                   help="RandomResizedCrop aspect-ratio range (default: 0.75 1.333)")
    g.add_argument("--hflip", type=float, default=0.5, metavar="P",
                   help="horizontal flip probability; 0 for digits or text (default: 0.5)")
    g.add_argument("--auto-augment", choices=AUTO_AUGMENT, default=None,
                   help="a torchvision augmentation policy (default: none)")
    g.add_argument("--random-erase", type=float, default=0.0, metavar="P",
                   help="RandomErasing probability (default: 0)")
    g.add_argument("--color-jitter", type=float, default=0.0, metavar="S",
                   help="brightness, contrast and saturation jitter strength (default: 0 = off)")
    return parser


AMP_DTYPES = ("auto", "bf16", "fp16")


def speed_parser() -> argparse.ArgumentParser:
    """Speed features; each is on by default where it leaves results unchanged, and each can be switched off."""
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
    g.add_argument("--uint8-pipeline", action=argparse.BooleanOptionalAction, default=True,
                   help="decode JPEGs with libjpeg-turbo and augment uint8 tensors in the workers, normalise each "
                        "batch on the device; --no-uint8-pipeline: the classic PIL transforms (default: on)")
    return parser


def check_data_parser() -> argparse.ArgumentParser:
    """``--check-data``: scan the dataset for unreadable files instead of training."""
    parser, g = _group("data check")
    g.add_argument("--check-data", action="store_true",
                   help="decode every image the script would read (training: train/ and val/; test.py: the "
                        "labelled folder or the images given), list the unreadable ones, and exit (1 if any)")
    return parser


def dist_parser() -> argparse.ArgumentParser:
    """Device and distributed flags, shared by all four launchers."""
    parser, g = _group("devices and distributed")
    g.add_argument("--world-size", type=int, default=-1,
                   help="number of nodes (with --multiprocessing-distributed) or of processes (default: -1 = auto)")
    g.add_argument("--rank", type=int, default=-1, help="node rank for multi-node training (default: -1 = auto)")
    g.add_argument("--dist-url", default=None,
                   help="rendezvous URL (default: env:// under torchrun, else tcp://127.0.0.1:<free port>)")
    g.add_argument("--dist-backend", default=None, help="nccl on GPUs, gloo on CPU (default: chosen by device)")
    g.add_argument("--nprocs", type=int, default=None,
                   help="processes per node for spawn-based launchers (default: number of GPUs, or 1 on CPU)")
    g.add_argument("--gpu", type=int, default=None, help="GPU id to use in single-process mode")
    g.add_argument("--no-accel", action="store_true", help="run on the CPU even when an accelerator is present")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP (GPUs only)")
    g.add_argument("--dist-timeout", type=float, default=1800.0, metavar="S",
                   help="seconds to wait for another process before giving up (default: 1800)")
    return parser


def training_parents() -> list[argparse.ArgumentParser]:
    """Every flag group of the four training scripts, in the order ``--help`` shows them."""
    return [data_parser(), model_parser(), train_parser(), recipe_parser(), augment_parser(), speed_parser(),
            check_data_parser(), dist_parser()]


def resolve_data_dir(args: argparse.Namespace) -> None:
    """Merge the positional DIR and ``--data`` into ``args.data``; refuse two different paths."""
    if args.data and args.data_dir and os.path.abspath(args.data) != os.path.abspath(args.data_dir):
        raise UserError(f"two dataset paths were given ({args.data_dir!r} and --data {args.data!r}); give one.")
    args.data = args.data or args.data_dir


def fill_size_defaults(args: argparse.Namespace) -> None:
    """Give crop/resize sizes that were not set on the command line their training defaults."""
    if getattr(args, "train_crop_size", None) is None:
        args.train_crop_size = TRAIN_CROP_SIZE
    if args.val_resize_size is None:
        args.val_resize_size = VAL_RESIZE_SIZE
    if args.val_crop_size is None:
        args.val_crop_size = VAL_CROP_SIZE


def check_arch(arch: str, choices: list[str]) -> None:
    """Refuse an unknown architecture with the closest names as a suggestion."""
    if arch in choices:
        return
    close = difflib.get_close_matches(arch, choices, n=3)
    hint = (f" Did you mean {', '.join(close)}?" if close
            else " `python -c 'import common.models as m; print(m.available_archs())'` lists them.")
    raise UserError(f"unknown architecture {arch!r}: use a torchvision classification model or ghostnet.{hint}")


def check_positive(args: argparse.Namespace, names: list[str]) -> None:
    """Refuse non-positive values for the given integer/float flags."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}.")


def check_training_args(args: argparse.Namespace, archs: list[str]) -> None:
    """Validate the flags every training script shares, before any work starts."""
    resolve_data_dir(args)
    fill_size_defaults(args)
    apply_recipe(args)
    check_arch(args.arch, archs)
    check_positive(args, ["batch_size", "epochs", "print_freq", "train_crop_size", "val_resize_size",
                          "val_crop_size", "width_mult", "lr_step_size", "accum_steps", "clip_grad_norm"])
    if hasattr(args, "recipe"):
        check_recipe_args(args)
    if args.workers is not None and args.workers < 0:
        raise UserError(f"-j/--workers must be 0 or more, got {args.workers}.")
    if args.val_crop_size > args.val_resize_size:
        raise UserError(f"--val-crop-size {args.val_crop_size} is larger than --val-resize-size "
                        f"{args.val_resize_size}; make the crop at most the resize size.")
    if not (0.0 <= args.label_smoothing < 1.0):
        raise UserError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}.")
    if args.warmup_epochs < 0 or args.lr < 0:
        raise UserError("--lr and --warmup-epochs must not be negative.")
    if args.dropout is not None and not 0.0 <= args.dropout < 1.0:
        raise UserError(f"--dropout must be in [0, 1), got {args.dropout}.")
    if args.sync_bn and args.no_accel:
        raise UserError("--sync-bn needs GPUs (SyncBatchNorm does not run on the CPU); drop --sync-bn or --no-accel.")
    check_positive(args, ["dist_timeout"])
    if not args.data and not args.dummy:
        raise UserError("no dataset given: pass DIR (or --data DIR) holding train/<class>/* and val/<class>/*, "
                        "or --dummy for synthetic images.")


def check_recipe_args(args: argparse.Namespace) -> None:
    """Validate the recipe, regularisation and augmentation flags of the training scripts."""
    for name in ("mixup_alpha", "cutmix_alpha", "color_jitter"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}.")
    for name in ("hflip", "random_erase"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise UserError(f"--{name.replace('_', '-')} is a probability in [0, 1], got {getattr(args, name)}.")
    if not 0.0 < args.model_ema_decay < 1.0:
        raise UserError(f"--model-ema-decay must be in (0, 1), got {args.model_ema_decay}.")
    low, high = args.rrc_scale
    if not 0.0 < low <= high <= 1.0:
        raise UserError(f"--rrc-scale {low} {high}: give 0 < MIN <= MAX <= 1 (fractions of the image area).")
    if not 0.0 < args.rrc_ratio[0] <= args.rrc_ratio[1]:
        raise UserError(f"--rrc-ratio {args.rrc_ratio[0]} {args.rrc_ratio[1]}: give 0 < MIN <= MAX.")
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


def inference_parser() -> argparse.ArgumentParser:
    """The model file and batch size of the evaluation scripts (test.py, classify_test_data.py)."""
    parser, g = _group("inference")
    g.add_argument("--ckpt", default=None, metavar="PATH",
                   help="checkpoint written by this project (train_*.py, network.py), or a state_dict saved with "
                        "torch.save (then give -a); 'module.' prefixes of DataParallel/DDP are stripped")
    g.add_argument("--unsafe-load", action="store_true",
                   help="also accept files holding pickled Python objects, such as whole models saved with "
                        "torch.save(model); loading them can run arbitrary code, so use it only for trusted files")
    g.add_argument("-b", "--batch-size", type=int, default=None, metavar="N",
                   help=f"images per batch and process (default: {INFER_BATCH_SIZE_GPU} on a GPU, "
                        f"{INFER_BATCH_SIZE_CPU} on the CPU)")
    g.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="fold each BatchNorm that follows a convolution into it (torch.fx), which changes the "
                        "outputs only by float rounding (default: on)")
    return parser


def check_inference_args(args: argparse.Namespace) -> None:
    """Validate the flags test.py and classify_test_data.py share (data, model and inference groups)."""
    resolve_data_dir(args)
    if args.dummy:
        raise UserError("--dummy has no files to evaluate or sort; pass real images (or --data DIR).")
    if args.weights and args.ckpt:
        raise UserError("--weights and --ckpt both name the model file; give one of them.")
    if args.dropout is not None:
        raise UserError("--dropout has no effect on a model in eval mode; drop it.")
    check_positive(args, ["batch_size", "val_resize_size", "val_crop_size", "width_mult"])
    if args.workers is not None and args.workers < 0:
        raise UserError(f"-j/--workers must be 0 or more, got {args.workers}.")
