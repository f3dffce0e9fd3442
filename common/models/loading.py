"""Load a model to run (test.py, classify_test_data.py, the benchmarks) from any file, with what the file says about it.

``load_model`` accepts a checkpoint written by this project (the architecture, class names and eval sizes come with
it), a plain or DataParallel/DDP state_dict (``-a`` names the architecture), ImageNet weights (``--pretrained``), an
ONNX file (``--model``, run by onnxruntime: ``onnx_model``) or, only when asked, a whole pickled model. A
``--classes`` file names the classes of a file that has none, and must agree with those of a file that has them.
Every mistake of the user's becomes a one-sentence UserError. Training restores its own checkpoints with
``checkpoint``; this module is for models that only predict.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torchvision

from common import limits
from common.data import transforms
from common.errors import UserError
from common.models import checkpoint, factory, onnx_model, preprocess

WNID = re.compile(r"n\d{8}")
# Parts of torchvision models that only exist in training (GoogLeNet aux1/aux2, Inception AuxLogits); checkpoints
# of models built from pretrained weights have none, so their absence is not a mismatch.
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: a file (``--ckpt``), or ImageNet weights (``--pretrained`` with ``-a``)."""

    path: str | None = None
    arch: str | None = None
    pretrained: bool = False
    width_mult: float = 1.0
    unsafe: bool = False
    classes_file: str | None = None  # --classes: one class name per line
    onnx: bool = False  # --model: ``path`` is an ONNX file
    ema: bool | None = None  # --ema / --no-ema: which weights of a file holding raw and EMA ones (None: the default)


@dataclass
class LoadedModel:
    """A bare model in eval mode on the CPU, with what its file says about it."""

    model: nn.Module
    arch: str
    num_classes: int
    classes: list[str] | None  # class names stored with the weights; None when the file has none
    train_args: dict[str, Any]  # the checkpoint's args ({} for a bare state_dict)
    note: str = ""  # e.g. "epoch 3, best Acc@1 87.500", for the header
    weights: preprocess.EvalPreprocess | None = None  # the published preprocessing of ImageNet weights loaded
    best_acc1: float | None = None  # the checkpoint's best validation top-1, when it records one


def imagenet_categories() -> list[str]:
    """The 1000 human-readable ImageNet names in class-index order (that is, sorted wnid order); no download."""
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def display_names(classes: list[str]) -> list[str]:
    """Human-readable names: the 1000 sorted ImageNet wnids become 'tench', 'goldfish', ...; others stay as they are."""
    imagenet = len(classes) == factory.IMAGENET_CLASSES and classes == sorted(classes)
    if imagenet and all(WNID.fullmatch(c) for c in classes):
        return imagenet_categories()
    return list(classes)


def class_names(loaded: LoadedModel) -> list[str]:
    """The model's classes: the names stored with it, else ImageNet's for 1000 outputs, else '0', '1', ..."""
    if loaded.classes:
        return list(loaded.classes)
    if loaded.num_classes == factory.IMAGENET_CLASSES:
        return imagenet_categories()
    return [str(i) for i in range(loaded.num_classes)]


def _build(arch: str, num_classes: int, width_mult: float) -> nn.Module:
    factory.check_arch(arch, factory.available_archs())
    return factory.create_model(arch, num_classes, width_mult=width_mult)


def _from_state_dict(state: dict[str, torch.Tensor], path: str, arch: str, width_mult: float) -> nn.Module:
    """Build ``arch`` with as many outputs as the file's classifier has, and load the file into it.

    The model is built with that many classes, as training built it (GoogLeNet's and Inception's auxiliary heads
    and MaxViT's bias-free classifier then match); a file whose head was replaced after loading ImageNet weights
    (a plain biased ``nn.Linear``) gets the same replacement here.
    """
    model = _build(arch, factory.IMAGENET_CLASSES, width_mult)
    name = factory.classifier_name(model)
    head = state.get(name + ".weight")
    if head is not None and head.shape[0] != factory.IMAGENET_CLASSES:
        model = _build(arch, head.shape[0], width_mult)
    if head is not None and (name + ".bias" in state) != (name + ".bias" in model.state_dict()):
        factory.replace_head(model, head.shape[0])
    checkpoint.load_exact(model, state, path, f"pass the -a/--arch (and --width-mult) it was trained with, not "
                          f"-a {arch}.", optional=AUX_PREFIXES)
    return model


def _num_outputs(model: nn.Module) -> int:
    head = model.get_submodule(factory.classifier_name(model))
    return head.out_features if isinstance(head, nn.Linear) else head.out_channels


def _from_pickled_model(obj: nn.Module, path: str) -> LoadedModel:
    model = checkpoint.unwrap(obj).cpu()
    return LoadedModel(model, type(model).__name__.lower(), _num_outputs(model), None, {},
                       "whole pickled model, loaded with --unsafe-load")


def _from_file(source: ModelSource) -> LoadedModel:
    """A checkpoint of this project, a bare or wrapped state_dict, or (with --unsafe-load) a pickled model."""
    path = source.path
    try:
        obj = checkpoint.checked(checkpoint.load_file(path, unsafe=source.unsafe), path)
    except (AttributeError, ImportError) as exc:  # a pickled model whose class cannot be imported here
        raise UserError(f"{path} is a pickled model whose code is not importable here ({exc}); save its "
                        "state_dict instead and pass it with -a.") from None
    if isinstance(obj, nn.Module):
        return _from_pickled_model(obj, path)
    state = checkpoint.state_dict_from(obj, source.ema)
    _, which = checkpoint.choose_weights(obj, source.ema)
    meta = obj if isinstance(obj, dict) and "state_dict" in obj else {}
    train_args = meta.get("args") if isinstance(meta.get("args"), dict) else {}
    arch = meta.get("arch") if isinstance(meta.get("arch"), str) else None
    if arch and source.arch and "args" not in meta and arch not in factory.available_archs():
        arch = None  # timm's train.py records the model's class name ('resnet' for resnet50): -a names it here
    if arch and source.arch and arch != source.arch:
        raise UserError(f"{path} holds a {arch}, but -a {source.arch} was given; drop -a or pass -a {arch}.")
    arch = arch or source.arch
    if not arch:
        raise UserError(f"{path} is a state_dict that does not record its architecture; pass -a/--arch "
                        "(and --width-mult for a GhostNet of another width).")
    model = _from_state_dict(state, path, arch, float(train_args.get("width_mult", source.width_mult)))
    classes = meta.get("classes")
    classes = [str(c) for c in classes] if isinstance(classes, (list, tuple)) else None
    best = float(meta.get("best_acc1", 0.0))
    note = f"after {meta['epoch']} epochs, best Acc@1 {best:.3f}" if "epoch" in meta else ""
    if which:  # the file holds raw and EMA weights: say which were taken
        note = f"{note}, {which}" if note else which
    return LoadedModel(model, arch, _num_outputs(model), classes, train_args, note,
                       best_acc1=best if "best_acc1" in meta else None)


def _from_onnx(source: ModelSource) -> LoadedModel:
    """An exported ONNX model; its metadata gives the classes and eval preprocessing that train_args would."""

    model, meta, num_classes = onnx_model.load_onnx(source.path, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
    size = model.input_size
    train_args = {k: meta[k] for k in ("val_resize_size", "val_crop_size", "interpolation", "mean", "std")
                  if k in meta}
    if size and "val_crop_size" not in train_args:  # a foreign file: its fixed input size is the crop
        train_args["val_crop_size"] = size[0]
        train_args.setdefault("val_resize_size", max(size[0], round(size[0] * limits.VAL_RESIZE_SIZE
                                                                   / limits.VAL_CROP_SIZE)))
    classes = meta.get("classes")
    classes = [str(c) for c in classes] if isinstance(classes, list) else None
    note = f"ONNX, opset {meta['opset']}" if "opset" in meta else "ONNX without export.py metadata"
    note += f", exported from {meta['source']}" if meta.get("source") else ""
    return LoadedModel(model, str(meta.get("arch", "onnx")), num_classes, classes, train_args, note)


def read_classes_file(path: str) -> list[str]:
    """The class names of a ``--classes`` file: one per line, in output order (blank lines ignored)."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--classes {path!r} cannot be read ({getattr(exc, 'strerror', None) or exc}); pass a text "
                        "file with one class name per line.") from None
    if not names or len(set(names)) != len(names):
        raise UserError(f"--classes {path!r} {'is empty' if not names else 'repeats a class name'}; list each class "
                        "once, one per line, in the order of the model's outputs.")
    return names


def _apply_classes_file(loaded: LoadedModel, source: ModelSource) -> None:
    """Name the classes from ``--classes``; refuse a file of another count, or of other names than the model's."""
    names = read_classes_file(source.classes_file)
    what = source.path or f"the {loaded.arch} ImageNet weights"
    if len(names) != loaded.num_classes:
        raise UserError(f"--classes {source.classes_file!r} lists {len(names)} classes but {what} has "
                        f"{loaded.num_classes} outputs; pass the class list the model was trained on.")
    if loaded.classes is not None and loaded.classes != names:
        diff = next(i for i, (a, b) in enumerate(zip(loaded.classes, names)) if a != b)
        raise UserError(f"{what} was trained on another class list than --classes {source.classes_file!r} (class "
                        f"{diff} is {loaded.classes[diff]!r} there, {names[diff]!r} in the file); drop --classes, "
                        "or pass the model trained on these classes.")
    loaded.classes = names


def load_model(source: ModelSource) -> LoadedModel:
    """The model ``source`` names, in eval mode on the CPU; every user mistake becomes a one-sentence UserError."""
    if source.path and source.pretrained:
        raise UserError("--ckpt and --pretrained both name the weights; give one of them.")
    if source.path and (source.onnx or source.path.lower().endswith(".onnx")):
        loaded = _from_onnx(source)
    elif source.path:
        loaded = _from_file(source)
    elif source.pretrained:
        if not source.arch:
            raise UserError("--pretrained needs -a/--arch to say which ImageNet model to load.")
        factory.check_arch(source.arch, factory.available_archs())
        model = factory.create_model(source.arch, factory.IMAGENET_CLASSES, pretrained=True,
                                    width_mult=source.width_mult)
        loaded = LoadedModel(model, source.arch, factory.IMAGENET_CLASSES, None, {}, "ImageNet weights",
                             preprocess.weights_preprocess(source.arch))
    else:
        raise UserError("no model given: pass --ckpt PATH (a checkpoint or state_dict) or --pretrained -a ARCH.")
    loaded.model.eval()
    if loaded.classes is not None and len(loaded.classes) != loaded.num_classes:
        raise UserError(f"{source.path} names {len(loaded.classes)} classes but its classifier has "
                        f"{loaded.num_classes} outputs; the file is inconsistent, re-save it.")
    if source.classes_file:
        _apply_classes_file(loaded, source)
    return loaded


def eval_preprocess(loaded: LoadedModel, flags: preprocess.EvalFlags, path: str | None = None
                    ) -> preprocess.EvalPreprocess:
    """Eval sizes, interpolation and normalisation: the flags if given, else the checkpoint's (its training args),
    else those of the ImageNet weights loaded, else the ImageNet defaults (``preprocess.resolve``)."""
    return preprocess.resolve(flags, loaded.train_args, loaded.weights, path or "the checkpoint")
