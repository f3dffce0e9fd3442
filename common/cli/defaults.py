"""Defaults that depend on other flags, filled in once at a script's boundary, before the flags are checked: the
dataset path, ``--demo``, the starting weights' sizes and normalisation, the recipe; and, once they have passed,
the data source resolved into one frozen value (writing the demo dataset first when ``--demo`` asks for it).

These functions change ``args``; the ``check_*`` functions of ``options`` only read it."""
from __future__ import annotations

import argparse
import os

from common.cli.options import training_parser
from common.cli.recipes import apply_recipe
from common.data import demo, formats
from common.errors import UserError
from common.limits import TRAIN_CROP_SIZE
from common.models import checkpoint, preprocess


def resolve_data_dir(args: argparse.Namespace) -> None:
    """Merge the positional DIR and ``--data`` into ``args.data``; refuse two different paths."""
    if args.data and args.data_dir and os.path.abspath(args.data) != os.path.abspath(args.data_dir):
        raise UserError(f"two dataset paths were given ({args.data_dir!r} and --data {args.data!r}); give one.")
    args.data = args.data or args.data_dir


def _starting_point(args: argparse.Namespace):
    """(recorded args, published preprocessing, name) of the weights a training run starts from: ImageNet weights
    (``--pretrained``), or a checkpoint of this project (``--finetune-from`` / ``--weights``) and what it records."""
    if getattr(args, "pretrained", False):
        try:
            return {}, preprocess.weights_preprocess(args.arch), ""
        except (ValueError, KeyError, AttributeError):  # an unknown -a, refused by check_arch with suggestions
            return {}, None, ""
    path = getattr(args, "finetune_from", None) or getattr(args, "weights", None)
    if not path or not os.path.isfile(path):
        return {}, None, ""
    ckpt = checkpoint.checked(checkpoint.load_file(path), path)
    recorded = ckpt.get("args") if isinstance(ckpt, dict) and isinstance(ckpt.get("args"), dict) else {}
    return recorded, None, path


def fill_size_defaults(args: argparse.Namespace) -> None:
    """Give the crop and resize sizes, interpolation and normalisation that the command line leaves open those of
    the starting weights (ImageNet weights' own, or what a starting checkpoint records), else the ImageNet defaults;
    ``args`` then records them (and ``start_weights``), so that a checkpoint keeps its preprocessing."""
    recorded, weights, path = _starting_point(args)
    flags = preprocess.EvalFlags(args.val_resize_size, args.val_crop_size, getattr(args, "interpolation", None))
    prep = preprocess.resolve(flags, recorded, weights, path or "the starting checkpoint")
    args.val_resize_size, args.val_crop_size, args.interpolation = prep.resize, prep.crop, prep.interpolation
    args.mean, args.std, args.preprocess_source = list(prep.mean), list(prep.std), prep.source
    args.start_weights = weights.source if weights else recorded.get("start_weights")
    if getattr(args, "train_crop_size", None) is None:
        args.train_crop_size = weights.crop if weights else int(recorded.get("train_crop_size") or TRAIN_CROP_SIZE)


def _declared_defaults() -> dict[str, object]:
    """The argparse default of every training flag, by dest."""
    return {action.dest: action.default for action in training_parser("")._actions}


def apply_demo_defaults(args: argparse.Namespace) -> None:
    """``--demo``: every flag of ``demo.DEFAULTS`` still at its declared default takes the demo's value.

    Runs before the recipe fills the optimisation flags, so that the demo's values win over the recipe's and the
    user's over both. A dataset given (DIR/``--data``) wins too: the run trains on it with the demo's settings. The
    demo dataset itself is written by ``data_source``, once every flag has passed, only where no dataset was given.
    """
    if args.dummy:
        raise UserError("--demo trains on a real (the built-in demo or your --data) dataset and --dummy on "
                        "synthetic images; drop one of them.")
    declared = _declared_defaults()
    for key, value in demo.DEFAULTS.items():
        if hasattr(args, key) and getattr(args, key) == declared.get(key):
            setattr(args, key, value)


def fill_training_defaults(args: argparse.Namespace) -> None:
    """Every default of a training script (and network.py) that depends on other flags, in the order in which they
    override each other: the dataset path, then ``--demo``'s values, the starting weights' sizes, the recipe."""
    resolve_data_dir(args)
    if getattr(args, "demo", False):  # network.py has no --demo
        apply_demo_defaults(args)
    fill_size_defaults(args)
    apply_recipe(args, _declared_defaults() if getattr(args, "recipe", None) else None)


def data_source(args: argparse.Namespace) -> formats.DataSource:
    """The one resolved data source of a run, once its flags have passed their checks: synthetic (``--dummy``), the
    demo dataset (written here the first time), or what ``--data`` holds; refused here when no reader can use it."""
    if getattr(args, "dummy", False):
        return formats.DataSource(formats.SYNTHETIC)
    root = args.data
    if not root and getattr(args, "demo", False):  # --demo with no dataset given: the built-in one
        root = demo.ensure_dataset(demo.DEFAULT_DIR)
    source = formats.resolve_source(root)
    formats.check_source(source)
    return source
