"""Checkpoint I/O that does not depend on the wrapper that trained the model.

A checkpoint is a plain dict: ``epoch`` (the next epoch to run), ``arch``, ``state_dict`` (unwrapped model, no
``module.`` prefix), ``best_acc1`` (float), ``optimizer``, ``scheduler``, ``args`` (plain dict), ``classes``.
Files are written atomically (temporary file, fsync, rename) and read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
import tempfile
from typing import Any

import torch
import torch.nn as nn

from common.errors import UserError

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_NAME = "model_best.pth.tar"
_PLAIN = (str, int, float, bool, type(None))
_PREFIXES = ("module.", "_orig_mod.")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside nn.DataParallel, DistributedDataParallel or torch.compile."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def strip_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Remove leading ``module.`` / ``_orig_mod.`` that wrappers add to parameter names."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
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


def _atomic_write(path: str, write) -> None:
    """Call ``write(file)`` on a temporary file in the target folder, fsync it, then rename it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the permissions a plain open() would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, or the one that torch.save's writer turned into a RuntimeError."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__cause__ or exc.__context__
    return exc


def _write_or_warn(path: str, write) -> bool:
    """``_atomic_write``; if the system refuses the write (disk full, quota, file size limit), say so in one line
    and return False, with ``path`` as it was and no temporary file left."""
    try:
        _atomic_write(path, write)
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
    """``torch.load`` on the CPU with ``weights_only=True``; every failure becomes a UserError naming the file."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path!r} does not exist; check the path.")
    try:
        return torch.load(path, map_location="cpu", weights_only=not unsafe)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise UserError(f"{path} holds pickled Python objects, not only tensors and plain values; loading it "
                            "could run arbitrary code, so it was refused. Only if you trust where it came from, "
                            "pass --unsafe-load.") from None
        raise UserError(f"{path} is not a PyTorch checkpoint ({exc}); pass a file saved with torch.save.") from None
    except Exception as exc:  # torch.load fails in many ways on a damaged file (RuntimeError, KeyError, EOFError...)
        raise UserError(f"{path} could not be read as a PyTorch checkpoint (truncated or another format: "
                        f"{str(exc).splitlines()[0][:120]}); pass a complete checkpoint file.") from None


def state_dict_from(obj: Any) -> dict[str, torch.Tensor]:
    """The model weights in a loaded file: our checkpoint (its EMA weights when ``best_weights`` marks them as the
    better ones), torchvision's ``{'model': ...}``, or a bare state_dict."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and obj.get("best_weights") == "ema" and isinstance(obj.get("state_dict_ema"), dict):
        obj = obj["state_dict_ema"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError("the file holds no model weights (expected a state_dict, or a checkpoint with a "
                        "'state_dict' entry); pass a checkpoint written by this project or by torch.save.")
    return strip_prefixes(obj)
