"""Checkpoint I/O that does not depend on the wrapper that trained the model.

A checkpoint is a plain dict: ``epoch`` (the next epoch to run), ``arch``, ``state_dict`` (unwrapped model, no
``module.`` prefix), ``best_acc1`` (float), ``optimizer``, ``scheduler``, ``args`` (plain dict), ``classes``.
Files are written atomically (temporary file, fsync, rename) and read with ``torch.load(weights_only=True)``.

A checkpoint is input from anywhere, so ``check_fields`` validates every entry the scripts read before any of it is
used: types, finite numbers, and the size limits below, which keep a damaged or hostile file from asking for an
absurd allocation (a ``width_mult`` of 1e6 once asked for 1.7 TB).
"""
from __future__ import annotations

import argparse
import collections
import math
import os
import pickle
import shutil
import sys
from typing import Any

import torch
import torch.nn as nn

from common import files
from common.errors import UserError, first_line
from common.limits import MAX_PIXELS, MAX_WIDTH_MULT

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_NAME = "model_best.pth.tar"
_PLAIN = (str, int, float, bool, type(None))
_PREFIXES = ("module.", "_orig_mod.")
# Limits on what a checkpoint may ask for; its args obey the flags' own limits (options.MAX_PIXELS, MAX_WIDTH_MULT).
MAX_EPOCHS = 100_000
_SIZE_ARGS = ("train_crop_size", "val_resize_size", "val_crop_size")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside nn.DataParallel, DistributedDataParallel or torch.compile."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _strip(key: str) -> str:
    while key.startswith(_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def strip_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Remove leading ``module.`` / ``_orig_mod.`` that wrappers add to parameter names.

    The state_dict's ``_metadata`` (each module's state version, which MNASNet and BatchNorm read on load) is kept,
    with its keys stripped the same way; a plain dict rebuilt without it makes MNASNet refuse its own weights.
    """
    out = collections.OrderedDict((_strip(key), value) for key, value in state_dict.items())
    metadata = getattr(state_dict, "_metadata", None)
    if isinstance(metadata, dict):
        # a wrapper's own entry ("module") becomes the model's (""), which it follows and so replaces
        out._metadata = collections.OrderedDict(  # type: ignore[attr-defined]
            (_strip(key + ".")[:-1] if key else key, value) for key, value in metadata.items())
    return out


def with_metadata(state: dict[str, Any], model: nn.Module, keep: Any = None) -> dict[str, Any]:
    """``state`` (only the keys ``keep`` accepts, when given) as an OrderedDict carrying ``_metadata``: the file's
    own when it has one, else ``model``'s, so that a state_dict saved without it (rebuilt as a plain dict by some
    tool) still loads into modules that read their version (MNASNet)."""
    out = collections.OrderedDict((k, v) for k, v in state.items() if keep is None or keep(k))
    metadata = getattr(state, "_metadata", None)
    if not isinstance(metadata, dict):
        metadata = getattr(model.state_dict(keep_vars=True), "_metadata", {})
    out._metadata = collections.OrderedDict(metadata)  # type: ignore[attr-defined]
    return out


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """``args`` as a dict of plain values, loadable with ``weights_only=True``."""
    out = {}
    for key, value in vars(args).items():
        if isinstance(value, (list, tuple)):
            value = [v if isinstance(v, _PLAIN) else str(v) for v in value]
        elif not isinstance(value, _PLAIN):
            value = str(value)
        out[key] = value
    return out


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, or the one that torch.save's writer turned into a RuntimeError."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__cause__ or exc.__context__
    return exc


def _write_or_warn(path: str, write) -> bool:
    """``_atomic_write``; if the system refuses the write (disk full, quota, file size limit), say so in one line
    and return False, with ``path`` as it was and no temporary file left."""
    try:
        files.atomic_write(path, write)
    except (OSError, RuntimeError) as exc:
        reason = _os_error(exc)
        if reason is None:  # a RuntimeError of torch.save that no system error caused: a bug, not the disk
            raise
        kept = "the previous one is kept" if os.path.exists(path) else "there is no earlier one"
        print(f"=> could not write {path} ({reason.strerror or reason}); {kept}, and the next save tries again",
              file=sys.stderr, flush=True)
        return False
    return True


def save_checkpoint(state: dict[str, Any], output_dir: str, is_best: bool) -> str | None:
    """Write ``checkpoint.pth.tar`` (and ``model_best.pth.tar`` when ``is_best``) atomically; return the path.

    A write that fails mid-run (disk full, quota) is not fatal: the previous files stay intact and loadable, one
    line on stderr names the file and the system's reason, training goes on and the next save tries again. It
    returns None then; ``model_best.pth.tar`` is not touched when the checkpoint itself could not be written.
    """
    path = os.path.join(output_dir, CHECKPOINT_NAME)
    if not _write_or_warn(path, lambda f: torch.save(state, f)):
        return None
    if is_best:
        with open(path, "rb") as src:
            _write_or_warn(os.path.join(output_dir, BEST_NAME), lambda f: shutil.copyfileobj(src, f))
    return path


def load_file(path: str, unsafe: bool = False) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True``; every failure becomes a UserError naming the file. A
    ``.safetensors`` file, or a folder as timm's Hub has them (``model.safetensors`` or ``pytorch_model.bin``
    beside ``config.json``), gives its state_dict."""
    path = _hub_weights(path) if os.path.isdir(path) else path
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path!r} does not exist; check the path.")
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint {path!r} is empty (0 bytes), perhaps from an interrupted copy; pass a complete "
                        "checkpoint file.")
    if path.endswith(".safetensors"):
        return _load_safetensors(path)
    try:
        # torchvision's references and timm's train.py save their flags as an argparse.Namespace: that one type is
        # allowed besides tensors and plain values, nothing wider.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=not unsafe)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise UserError(f"{path} holds pickled Python objects, not only tensors and plain values; loading it "
                            "could run arbitrary code, so it was refused. Only if you trust where it came from, "
                            "pass --unsafe-load.") from None
        raise UserError(f"{path} is not a PyTorch checkpoint ({exc}); pass a file saved with torch.save.") from None
    except Exception as exc:  # noqa: BLE001 (torch.load fails in many ways on a damaged file: RuntimeError, EOFError...)
        raise UserError(f"{path} could not be read as a PyTorch checkpoint (truncated or another format: "
                        f"{first_line(exc)}); pass a complete checkpoint file.") from None


def _hub_weights(folder: str) -> str:
    """The weights file of a timm Hub folder: ``model.safetensors``, else ``pytorch_model.bin``."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise UserError(f"{folder!r} is a folder without model.safetensors or pytorch_model.bin; pass a checkpoint "
                    "file, or a folder as timm's Hub has them.")


def _load_safetensors(path: str) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file (timm's Hub folders, ``safetensors.torch.save_file``) as a state_dict; safetensors is an
    optional package, named in one line when missing."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file as load_safetensors
    except ImportError:
        raise UserError(f"{path} is a safetensors file; install the safetensors package to read it "
                        "(pip install -r requirements-extra.txt).") from None
    try:
        return load_safetensors(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} could not be read as a safetensors file ({first_line(exc)}); pass "
                        "a complete file.") from None


# Where files hold averaged (EMA) weights beside the raw ones: ours and timm's train.py (``state_dict_ema``), and
# torchvision's references (``model_ema``: an AveragedModel's state_dict, ``module.`` keys and ``n_averaged``).
EMA_KEYS = ("state_dict_ema", "model_ema")
_EMA_COUNT = "n_averaged"


def _ema_entry(obj: dict[str, Any]) -> str | None:
    """The key of ``obj``'s EMA weights, when it holds some (not only an update count)."""
    return next((key for key in EMA_KEYS if isinstance(obj.get(key), dict)
                 and any(k != _EMA_COUNT and isinstance(v, torch.Tensor) for k, v in obj[key].items())), None)


def choose_weights(obj: Any, ema: bool | None = None) -> tuple[Any, str]:
    """The weights entry of a loaded file that holds raw and EMA weights, and one phrase saying which was taken and
    why ("EMA weights (state_dict_ema, --ema)"); ``obj`` itself and "" when it holds one set.

    ``ema`` None takes the better ones where our checkpoint marks them (``best_weights``), and the raw ones of other
    tools' files, as timm's validate.py does without ``--use-ema``; True or False takes the EMA or the raw ones.
    """
    raw = next((k for k in ("state_dict", "model") if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
    key = _ema_entry(obj) if raw else None
    if key is None:
        if ema:
            raise UserError("--ema: the file holds no EMA weights (no state_dict_ema or model_ema entry); drop --ema.")
        return obj, ""
    use_ema = obj.get("best_weights") == "ema" if ema is None else ema
    if ema is not None:
        why = "--ema" if ema else "--no-ema"
    elif "best_weights" in obj:
        why = f"the checkpoint marks them as the better ones; --{'no-' if use_ema else ''}ema for the others"
    else:
        why = "the default for a file holding both; --ema for the EMA ones"
    if not use_ema:
        return obj[raw], f"raw weights ({raw}, {why})"
    return {k: v for k, v in obj[key].items() if k != _EMA_COUNT}, f"EMA weights ({key}, {why})"


def state_dict_from(obj: Any, ema: bool | None = None) -> dict[str, torch.Tensor]:
    """The model weights in a loaded file: our checkpoint (its EMA weights when ``best_weights`` marks them as the
    better ones, or as ``ema`` asks: ``choose_weights``), torchvision's ``{'model': ...}``, or a bare state_dict."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    obj, _ = choose_weights(obj, ema)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError("the file holds no model weights (expected a state_dict, or a checkpoint with a "
                        "'state_dict' entry); pass a checkpoint written by this project or by torch.save.")
    return strip_prefixes(obj)


def _damaged(path: str, field: str, value: Any, expected: str) -> UserError:
    shown = repr(value) if len(repr(value)) <= 60 else f"a {type(value).__name__}"
    return UserError(f"{path}: its {field!r} entry is {shown}, not {expected}; the file is damaged or was not "
                     "written by this project, so use another checkpoint.")


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_real(value: Any, low: float, high: float, low_open: bool = False) -> bool:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        value = value.item()  # the PyTorch ImageNet example saves best_acc1 as a tensor
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (low < value if low_open else low <= value) and value <= high


def check_args_fields(args: dict[str, Any], path: str) -> None:
    """Refuse a checkpoint whose ``args`` hold a width or an image size of the wrong type or beyond the limits."""
    width = args.get("width_mult", 1.0)
    if not _is_real(width, 0.0, MAX_WIDTH_MULT, low_open=True):
        raise _damaged(path, "args.width_mult", width, f"a number in (0, {MAX_WIDTH_MULT:g}]")
    for name in _SIZE_ARGS:
        value = args.get(name)
        if value is not None and not _is_int(value, 1, MAX_PIXELS):
            raise _damaged(path, f"args.{name}", value, f"a whole number of pixels from 1 to {MAX_PIXELS}")


def _check_optimizer(state: Any, path: str) -> None:
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if (not isinstance(state.get("state") if isinstance(state, dict) else None, dict) or not isinstance(groups, list)
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)):
        raise _damaged(path, "optimizer", state, "an optimizer state (a dict of 'state' and 'param_groups')")


def check_fields(ckpt: dict[str, Any], path: str) -> None:
    """Validate every entry of a training checkpoint that the scripts read (see the module docstring).

    Absent entries are fine (older files, bare state_dicts); present ones must have the right type and range.
    """
    checks = {"epoch": lambda v: _is_int(v, 0, MAX_EPOCHS), "step": lambda v: _is_int(v, 0, 2**40),
              "ema_updates": lambda v: _is_int(v, 0, 2**40), "best_acc1": lambda v: _is_real(v, 0.0, 100.0),
              "arch": lambda v: isinstance(v, str) and 0 < len(v) <= 100, "args": lambda v: isinstance(v, dict),
              "scheduler": lambda v: isinstance(v, dict), "best_weights": lambda v: v in ("raw", "ema"),
              "classes": lambda v: (isinstance(v, (list, tuple)) and len(v) > 0
                                    and all(isinstance(c, str) and c for c in v) and len(set(v)) == len(v))}
    expected = {"epoch": f"a whole number from 0 to {MAX_EPOCHS}", "step": "a whole number of steps",
                "ema_updates": "a whole number of updates", "best_acc1": "a percentage from 0 to 100",
                "arch": "an architecture name", "args": "a dict of the training flags", "scheduler": "a dict",
                "best_weights": "'raw' or 'ema'", "classes": "a non-empty list of distinct class names"}
    for field, ok in checks.items():
        if field in ckpt and not ok(ckpt[field]):
            raise _damaged(path, field, ckpt[field], expected[field])
    if "optimizer" in ckpt:
        _check_optimizer(ckpt["optimizer"], path)
    check_args_fields(ckpt.get("args") or {}, path)


def checked(obj: Any, path: str) -> Any:
    """``obj`` as loaded from ``path``, after ``check_fields`` when it is a training checkpoint (a dict holding a
    ``state_dict``); bare state_dicts and whole models pass as they are."""
    if isinstance(obj, dict) and isinstance(obj.get("args"), argparse.Namespace):
        # A peer's flags (timm's train.py, torchvision's references) are not this project's: they are not read.
        obj = {key: value for key, value in obj.items() if key != "args"}
    if isinstance(obj, dict) and "state_dict" in obj:
        check_fields(obj, path)
    return obj


def load_exact(model: nn.Module, state: dict[str, torch.Tensor], path: str, hint: str,
               optional: tuple[str, ...] = ()) -> None:
    """Load every weight of ``state`` into ``model``, or raise a UserError that names what differs and ``hint``.

    Keys starting with one of ``optional`` may be absent on either side (training-only auxiliary heads).
    """
    own = model.state_dict()
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    result = model.load_state_dict(with_metadata(state, model, keep=lambda k: k not in wrong), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(optional)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(optional)]
    if wrong or missing or unexpected:
        shapes = (f"{len(wrong)} shapes differ, e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} in the file, "
                  f"{tuple(own[wrong[0]].shape)} here; ") if wrong else ""
        raise UserError(f"{path} does not fit this model ({shapes}{len(missing)} missing keys, e.g. {missing[:2]}; "
                        f"{len(unexpected)} unexpected, e.g. {unexpected[:2]}); {hint}")
