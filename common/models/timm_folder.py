"""A model of this project as a timm Hub folder: ``config.json``, ``model.safetensors`` and a model card README.md.

timm 1.0 builds a model from such a folder with ``timm.create_model("local-dir:PATH", pretrained=True)`` (and from the
Hub with ``hf-hub:USER/NAME`` once the folder is uploaded). ``config.json`` names timm's architecture, the number of
classes and their names (``label_names``), and the ``pretrained_cfg`` that timm's ``resolve_data_config`` turns into
its eval transform: input size, mean, std, crop percentage (crop / resize) and interpolation. Only architectures that
timm has under the name this project's weights load into strictly can be written: GhostNet v1/V2/V3 at timm's widths
(``ghostnet_050``, ``ghostnetv2_130``, ...) and the torchvision models whose timm namesake has the same layout
(ResNets); any other is refused in one line. timm and safetensors are optional packages, imported here only.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
import torch.nn as nn

from common.errors import UserError, first_line
from common.models import factory, preprocess

CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"
INSTALL_HINT = "pip install -r requirements-extra.txt"
# The training flags a model card lists under "recipe", when the checkpoint records them.
RECIPE_KEYS = ("recipe", "epochs", "batch_size", "lr", "opt", "momentum", "weight_decay", "lr_schedule",
               "warmup_epochs", "label_smoothing", "mixup_alpha", "cutmix_alpha", "auto_augment", "model_ema",
               "train_crop_size", "seed")


def _import(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"export.py --format timm needs {module}, which is not installed: {INSTALL_HINT}.") from None


def timm_name(arch: str, width_mult: float) -> str:
    """timm's name for ``arch``: GhostNets carry their width (``ghostnet`` at 0.5 is ``ghostnet_050``), others keep
    their torchvision name."""
    return f"{arch}_{round(width_mult * 100):03d}" if arch in factory.GHOSTNETS else arch


def timm_model(arch: str, width_mult: float, state: dict[str, torch.Tensor], num_classes: int) -> str:
    """timm's name for ``arch``, after checking that timm builds it and takes ``state`` strictly; else one UserError
    naming the architecture."""
    timm = _import("timm")
    name = timm_name(arch, width_mult)
    what = f"{arch} at width {width_mult:g}" if arch in factory.GHOSTNETS else arch
    if not timm.is_model(name):
        raise UserError(f"timm has no model named {name!r}, so it cannot build {what} from a folder; export it with "
                        "--format onnx or torch-export instead.")
    try:
        timm.create_model(name, num_classes=num_classes).load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise UserError(f"timm's {name!r} is laid out differently from this project's {what} ({first_line(exc, 120)})"
                        "; export it with --format onnx or torch-export instead.") from None
    return name


def crop_pct(crop: int, resize: int) -> float:
    """The crop percentage from which timm's eval transform gets back ``resize`` (it resizes to
    ``floor(crop / crop_pct)``): crop / resize, rounded to as few digits as keep that, else slightly below it."""
    for digits in (3, 4, 5, 6, 8):
        pct = round(crop / resize, digits)
        if math.floor(crop / pct) == resize:
            return pct
    return crop / (resize + 0.5)


def config(name: str, classes: list[str], prep: preprocess.EvalPreprocess) -> dict[str, Any]:
    """``config.json`` as timm's ``save_for_hf`` writes it: architecture, classes, and the eval preprocessing."""
    return {"architecture": name, "num_classes": len(classes), "label_names": list(classes),
            "pretrained_cfg": {"input_size": [3, prep.crop, prep.crop], "mean": list(prep.mean), "std": list(prep.std),
                               "crop_pct": crop_pct(prep.crop, prep.resize), "crop_mode": "center",
                               "interpolation": prep.interpolation, "num_classes": len(classes)}}


def model_card(name: str, source: str, train_args: dict[str, Any], best_acc1: float | None,
               classes: list[str]) -> str:
    """A short README.md as the Hub shows it: a YAML header (library, tags), the data, the recipe and val top-1."""
    recipe = [f"- `{key}`: {train_args[key]}" for key in RECIPE_KEYS if train_args.get(key) not in (None, "")]
    shown = ", ".join(classes[:10]) + (f", ... ({len(classes)} in all)" if len(classes) > 10 else "")
    top1 = f"{best_acc1:.3f}%" if best_acc1 is not None else "not recorded in the checkpoint"
    return "\n".join([
        "---", "library_name: timm", "pipeline_tag: image-classification", "tags:", "- image-classification",
        "- timm", "---", f"# {name}", "",
        f"A `{name}` image classifier exported from `{os.path.basename(source)}` by this project's export.py.", "",
        "## Data", "", f"- trained on: `{train_args.get('data') or 'not recorded'}`",
        f"- {len(classes)} classes: {shown}", "",
        "## Recipe", "", *(recipe or ["- not recorded in the checkpoint"]), "",
        "## Results", "", f"- validation top-1 (best epoch, as the checkpoint records it): {top1}", "",
        "## Use", "", "```python", "import timm", "", 'model = timm.create_model("local-dir:PATH", pretrained=True)'
        "  # or hf-hub:USER/NAME", "cfg = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**cfg)", "```", ""])


def write_folder(folder: str, state: dict[str, torch.Tensor], cfg: dict[str, Any], card: str) -> None:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` into the existing, empty ``folder``."""
    safetensors_torch = _import("safetensors.torch")
    safetensors_torch.save_file({k: v.detach().contiguous() for k, v in state.items()},
                                os.path.join(folder, WEIGHTS_NAME))
    with open(os.path.join(folder, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(folder, CARD_NAME), "w", encoding="utf-8") as f:
        f.write(card)


def load_with_timm(folder: str) -> nn.Module:
    """The model timm builds from ``folder`` (``local-dir:``), in eval mode: the check that the folder is what timm
    reads."""
    timm = _import("timm")
    return timm.create_model(f"local-dir:{os.path.abspath(folder)}", pretrained=True).eval()
