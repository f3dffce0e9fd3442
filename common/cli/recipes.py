"""Training recipes: named sets of defaults for the optimisation flags, each still overridable on the command line.

``resnet`` is the PyTorch ImageNet example's setting and the default when no ``--recipe`` is given. ``ghostnet`` is
the GhostNet paper's ImageNet setting (SGD with Nesterov momentum, batch 1024 with lr 0.4, weight decay 4e-5 not
applied to normalisation weights and biases, label smoothing 0.1, cosine schedule with 5 warm-up epochs; dropout 0.2
is GhostNet's own default) run for 240 epochs, the length of the public reproduction that reached 73.64% top-1.
``ghostnet-finetune`` is the original notes' second stage: the same optimiser, lr decayed linearly from 0.05 to 0
over 30 epochs, started from a first-stage checkpoint with ``--finetune-from``.

``ghostnetv2`` is GhostNetV2's published command (RMSpropTF, step decay x0.973 every 2.4 epochs over 450 epochs, EMA
0.9999, RandAugment and random erasing); ``ghostnetv3`` is GhostNetV3's released train.py defaults with the
distillation weights and EMA its paper reports; docs/recipes.md gives the source of every value.

A recipe's ``lr`` belongs to its ``batch_size``; where ``lr_ref_batch`` is set and only ``-b`` is changed, the lr is
scaled linearly with the global batch (Goyal et al., 2017).
"""
from __future__ import annotations

import argparse

_BASE = {"epochs": 90, "batch_size": 256, "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
         "norm_weight_decay": None, "lr_schedule": "step", "lr_step_size": 30, "lr_gamma": 0.1, "warmup_epochs": 0.0,
         "label_smoothing": 0.0, "opt": "sgd", "opt_eps": None,
         "kd_temperature": 1.0, "kd_loss_weight": 1.0, "task_loss_weight": 1.0}
_GHOSTNET = {**_BASE, "epochs": 240, "batch_size": 1024, "lr": 0.4, "lr_ref_batch": 1024, "nesterov": True,
             "weight_decay": 4e-5, "norm_weight_decay": 0.0, "lr_schedule": "cosine", "warmup_epochs": 5.0,
             "label_smoothing": 0.1}
# Flags whose declared default is not None (a switch, an augmentation strength): a recipe sets them only where the
# command line left them at that default. docs/recipes.md gives the source of each value below.
_GHOSTNETV2 = {**_BASE, "epochs": 450, "batch_size": 1024, "lr": 0.064, "lr_ref_batch": 1024, "opt": "rmsproptf",
               "opt_eps": 1e-3, "weight_decay": 1e-5, "norm_weight_decay": 0.0, "lr_schedule": "step",
               "lr_step_size": 2.4, "lr_gamma": 0.973, "warmup_epochs": 3.0, "label_smoothing": 0.1, "dropout": 0.2,
               "model_ema": True, "model_ema_decay": 0.9999, "auto_augment": "randaugment", "random_erase": 0.2}
_GHOSTNETV3 = {**_BASE, "epochs": 300, "batch_size": 1024, "lr": 0.05, "lr_ref_batch": 1024, "weight_decay": 2e-5,
               "norm_weight_decay": 0.0, "lr_schedule": "cosine", "warmup_epochs": 3.0, "label_smoothing": 0.1,
               "model_ema": True, "model_ema_decay": 0.9998, "color_jitter": 0.4,
               "kd_temperature": 1.0, "kd_loss_weight": 1.0, "task_loss_weight": 1.0}
RECIPES: dict[str, dict] = {
    "resnet": _BASE,
    "ghostnet": _GHOSTNET,
    "ghostnet-finetune": {**_GHOSTNET, "epochs": 30, "lr": 0.05, "lr_schedule": "linear", "warmup_epochs": 0.0},
    "ghostnetv2": _GHOSTNETV2,
    "ghostnetv3": _GHOSTNETV3,
}
DEFAULT_RECIPE = "resnet"


def apply_recipe(args: argparse.Namespace, declared: dict[str, object] | None = None) -> None:
    """Fill every optimisation flag left unset (None) from ``args.recipe``, scaling its lr to ``-b`` if it says so.

    Flags the script does not have are left alone, so that scripts without ``--recipe`` get the ``resnet`` values.
    ``declared`` (the parser's defaults by dest) also lets the recipe set flags whose default is not None (such as
    ``--model-ema`` or ``--random-erase``) where they are still at that default.
    """
    recipe = RECIPES[getattr(args, "recipe", None) or DEFAULT_RECIPE]
    lr_given = getattr(args, "lr", None) is not None
    declared = declared or {}
    for key, value in recipe.items():
        if key == "lr_ref_batch" or not hasattr(args, key):
            continue
        current = getattr(args, key)
        if current is None or (key in declared and current == declared[key]):
            setattr(args, key, value)
    if not lr_given and "lr_ref_batch" in recipe:
        args.lr = recipe["lr"] * args.batch_size / recipe["lr_ref_batch"]


def _shown(value: object, none: str) -> str:
    if value is None:
        return none
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def default_help(key: str, all_recipes: bool = True, none: str = "none") -> str:
    """The ``(default: ...)`` part of a flag's ``--help``, read from RECIPES so that it cannot go stale.

    One value where the recipes agree (or ``all_recipes`` is false: a script without ``--recipe`` gets the default
    recipe's), else each recipe's, as ``default: resnet 90, ghostnet 240, ghostnet-finetune 30``. A recipe's ``lr``
    that scales with the batch names its reference batch. ``none`` is the text for an unset (None) value.
    """
    names = list(RECIPES) if all_recipes else [DEFAULT_RECIPE]
    shown = {}
    for name in names:
        recipe = RECIPES[name]
        shown[name] = _shown(recipe.get(key), none)
        if key == "lr" and "lr_ref_batch" in recipe:
            shown[name] += f" per {recipe['lr_ref_batch']} images"
    if len(set(shown.values())) == 1:
        return f"default: {shown[names[0]]}"
    return "default: " + ", ".join(f"{name} {text}" for name, text in shown.items())


def describe(args: argparse.Namespace) -> str:
    """The recipe's name, and how its lr relates to the batch when it scales linearly."""
    name = getattr(args, "recipe", None) or DEFAULT_RECIPE
    recipe = RECIPES[name]
    if "lr_ref_batch" not in recipe:
        return f"recipe {name}"
    return f"recipe {name} (lr {recipe['lr']:g} per {recipe['lr_ref_batch']} images, scaled linearly)"
