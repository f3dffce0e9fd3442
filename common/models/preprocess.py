"""Which resize, crop, interpolation and normalisation a model is evaluated with, and where each comes from.

Published weights are only as good as the preprocessing they were measured with: torchvision's ResNet-50 DEFAULT
weights (IMAGENET1K_V2) expect a resize to 232, the EfficientNets their own sizes and bicubic, EfficientNet-V2-L a
mean and std of 0.5. ``weights_preprocess(arch)`` reads them from torchvision's ``weights.transforms()`` (GhostNet:
its official release, 256/224 bilinear with ImageNet's mean and std; GhostNetV2/V3: timm's configuration of their
weights, 256/224 bicubic). ``resolve`` then decides each field: an
explicit flag wins, else what a checkpoint records (its training args: ``val_resize_size``, ``val_crop_size``,
``interpolation``, ``mean``, ``std``, and ``start_weights``, the weights its training started from), else the
weights', else the ImageNet defaults (256/224 bilinear). The result names its source for the header.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torchvision

from common.data.transforms import (
    IMAGENET,
    INTERPOLATIONS,
    Normalization,
    describe_eval,
    eval_transform,
)
from common.errors import UserError
from common.limits import MAX_PIXELS, VAL_CROP_SIZE, VAL_RESIZE_SIZE

DEFAULT_INTERPOLATION = "bilinear"
GHOSTNET_WEIGHTS = "GhostNet's official release (state_dict_73.98.pth)"
# timm's pretrained_cfg of ghostnetv2_*.in1k and ghostnetv3_*.in1k: 224 px crop at crop_pct 0.875 (so 256), bicubic,
# ImageNet mean and std; the same for every width.
TIMM_GHOSTNET_EVAL = {"ghostnetv2": (256, 224, "bicubic"), "ghostnetv3": (256, 224, "bicubic")}


@dataclass(frozen=True)
class EvalPreprocess:
    """Resize the shorter side to ``resize`` (``interpolation``, antialiased), centre-crop ``crop``, normalise with
    ``mean`` / ``std``; ``source`` says where these come from (``ResNet50_Weights.IMAGENET1K_V2``, ``the
    checkpoint``, ``--val-crop-size``, ...)."""

    resize: int = VAL_RESIZE_SIZE
    crop: int = VAL_CROP_SIZE
    interpolation: str = DEFAULT_INTERPOLATION
    mean: tuple[float, float, float] = IMAGENET.mean
    std: tuple[float, float, float] = IMAGENET.std
    source: str = "the ImageNet defaults"

    @property
    def norm(self) -> Normalization:
        return Normalization(self.mean, self.std)

    def transform(self, fast: bool, five_crop: bool = False) -> Callable[..., torch.Tensor]:
        """The eval transform (``fast``: uint8 out, normalised later with ``norm``; else normalised floats);
        ``five_crop``: the four corner crops and the centre one, stacked."""
        return eval_transform(self.resize, self.crop, fast, self.interpolation, self.norm, five_crop)

    def describe(self, fast: bool) -> str:
        """The pipeline in one line, with the source of its settings."""
        return f"{describe_eval(self.resize, self.crop, fast, self.interpolation, self.norm)} (from {self.source})"


@dataclass(frozen=True)
class EvalFlags:
    """What the command line asks for; None: not given."""

    resize: int | None = None
    crop: int | None = None
    interpolation: str | None = None
    resize_source: str | None = None  # where a resize that no flag gives directly comes from (e.g. --crop-pct)


def weights_preprocess(arch: str) -> EvalPreprocess:
    """The preprocessing that ``--pretrained -a arch`` was published with: the fields of torchvision's
    ``weights.transforms()`` for its DEFAULT weights; for GhostNet's release 256/224 bilinear, ImageNet mean/std."""
    if arch == "ghostnet":
        return EvalPreprocess(source=GHOSTNET_WEIGHTS)
    if arch in TIMM_GHOSTNET_EVAL:
        resize, crop, interpolation = TIMM_GHOSTNET_EVAL[arch]
        return EvalPreprocess(resize, crop, interpolation, source=f"timm's {arch}_*.in1k pretrained_cfg")
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    t = weights.transforms()
    return EvalPreprocess(int(t.resize_size[0]), int(t.crop_size[0]), t.interpolation.value, tuple(t.mean),
                          tuple(t.std), str(weights))


def _checked(train_args: dict[str, Any], what: str) -> dict[str, Any]:
    """The preprocessing fields that ``train_args`` records, each checked; a damaged one is a UserError."""
    def damaged(key: str, wanted: str) -> UserError:
        return UserError(f"{what} records {key}={train_args[key]!r}, which is not {wanted}; the file is damaged, "
                         "or give the eval flags (--val-resize-size, --val-crop-size, --interpolation) explicitly.")

    out: dict[str, Any] = {}
    for key, field in (("val_resize_size", "resize"), ("val_crop_size", "crop")):
        value = train_args.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PIXELS:
                raise damaged(key, f"a whole number of pixels from 1 to {MAX_PIXELS}")
            out[field] = value
    for key in ("interpolation", "val_interpolation"):
        if train_args.get(key) is not None:
            if train_args[key] not in INTERPOLATIONS:
                raise damaged(key, f"one of {', '.join(INTERPOLATIONS)}")
            out["interpolation"] = train_args[key]
    for key in ("mean", "std"):
        value = train_args.get(key)
        if value is not None:
            if (not isinstance(value, (list, tuple)) or len(value) != 3
                    or not all(isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1 for v in value)
                    or (key == "std" and min(value) <= 0)):
                raise damaged(key, "three numbers in [0, 1] (per RGB channel)")
            out[key] = tuple(float(v) for v in value)
    return out


def resolve(flags: EvalFlags, train_args: dict[str, Any] | None = None, weights: EvalPreprocess | None = None,
            what: str = "the checkpoint") -> EvalPreprocess:
    """Each field from the flags, else from ``train_args`` (what a checkpoint records, ``what`` names it), else from
    ``weights`` (the published preprocessing of the weights loaded), else the ImageNet defaults; the source names
    where the sizes came from. A crop larger than the resize is a UserError."""
    recorded = _checked(train_args or {}, what)
    started = (train_args or {}).get("start_weights")
    recorded_source = what
    if isinstance(started, str) and recorded:
        recorded_source = f"{what}, trained from {started}"
    base = weights or EvalPreprocess()
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    given = {"resize": flags.resize, "crop": flags.crop, "interpolation": flags.interpolation}
    flag_names = {"resize": flags.resize_source or "--val-resize-size", "crop": "--val-crop-size",
                  "interpolation": "--interpolation"}
    for field in ("resize", "crop", "interpolation", "mean", "std"):
        if given.get(field) is not None:
            values[field], origins[field] = given[field], flag_names[field]
        elif field in recorded:
            values[field], origins[field] = recorded[field], recorded_source
        else:
            values[field], origins[field] = getattr(base, field), base.source
    prep = EvalPreprocess(**values, source=_source(origins))
    if prep.resize > MAX_PIXELS:
        raise UserError(f"the eval resize comes to {prep.resize} px (from {origins['resize']}, for a {prep.crop} px "
                        f"crop), beyond the limit of {MAX_PIXELS} px; raise --crop-pct or lower "
                        "--val-crop-size.")
    if prep.crop > prep.resize:
        raise UserError(f"the centre crop ({prep.crop} px, from {origins['crop']}) is larger than --val-resize-size "
                        f"({prep.resize} px, from {origins['resize']}); make the crop at most the resize size.")
    return prep


def _source(origins: dict[str, str]) -> str:
    """Where the sizes come from (the first field not set by a flag names it), then the fields that come from
    elsewhere, grouped: ``x.pth; interpolation, mean, std from the ImageNet defaults``."""
    main = next((o for o in origins.values() if not o.startswith("--")), origins["resize"])
    groups: dict[str, list[str]] = {}
    for field, origin in origins.items():
        if origin != main:
            groups.setdefault(origin, []).append(field)
    return "; ".join([main, *(f"{', '.join(fields)} from {origin}" for origin, fields in groups.items())])
