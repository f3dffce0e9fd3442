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
    g.add_argument("--epochs", type=int, default=90, help="total epochs to run (default: 90)")
    g.add_argument("--start-epoch", type=int, default=None, help="epoch number to start at (default: 0, or resumed)")
    g.add_argument("-b", "--batch-size", type=int, default=256, metavar="N",
                   help="global batch size: the sum over all processes and GPUs (default: 256)")
    g.add_argument("--lr", "--learning-rate", type=float, default=0.1, dest="lr", help="initial learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    g.add_argument("--wd", "--weight-decay", type=float, default=1e-4, dest="weight_decay",
                   help="weight decay (default: 1e-4)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="step",
                   help="step: x gamma every --lr-step-size epochs; linear: per-iteration decay to 0; "
                        "cosine: per-iteration cosine to 0; constant (default: step)")
    g.add_argument("--lr-step-size", type=int, default=30, help="epochs between step decays (default: 30)")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="step decay factor (default: 0.1)")
    g.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up epochs (default: 0)")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing (default: 0)")
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


def check_data_parser() -> argparse.ArgumentParser:
    """``--check-data``: scan the dataset for unreadable files instead of training."""
    parser, g = _group("data check")
    g.add_argument("--check-data", action="store_true",
                   help="decode every image of train/ and val/, list the unreadable ones, and exit (1 if any)")
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
    check_arch(args.arch, archs)
    check_positive(args, ["batch_size", "epochs", "print_freq", "train_crop_size", "val_resize_size",
                          "val_crop_size", "width_mult", "lr_step_size"])
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
