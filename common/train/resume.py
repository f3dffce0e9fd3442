"""Continuing a run: where ``--resume`` points, and a checkpoint's weights, optimizer and schedule put back."""
from __future__ import annotations

import os
from typing import Any

from common.errors import UserError, first_line
from common.models import checkpoint
from common.train.loop import ResumePoint, Run


def restore_state(target: Any, state: dict | None, path: str, what: str) -> None:
    """``target.load_state_dict(state)`` unless ``state`` is None; a state of another optimizer or of other
    parameter groups becomes one UserError naming the file."""
    if state is None:
        return
    try:
        target.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise UserError(f"{path}: its {what} state does not fit this run ({first_line(exc)}); "
                        "resume with the flags it was trained with.") from None


def restore(path: str, run: Run, arch: str) -> ResumePoint:
    """Load model, optimizer and schedule from a checkpoint; return where the run continues."""
    ckpt = checkpoint.load_file(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"{path} is a bare state_dict, not a training checkpoint; start from it with --weights.")
    checkpoint.check_fields(ckpt, path)
    if ckpt.get("arch", arch) != arch:
        raise UserError(f"{path} was trained with -a {ckpt['arch']}, not {arch}; pass -a {ckpt['arch']}.")
    if ckpt.get("classes", run.classes) != run.classes:
        raise UserError(f"{path} was trained on other classes than this dataset's; resume on the same data.")
    checkpoint.load_exact(checkpoint.unwrap(run.model), checkpoint.strip_prefixes(ckpt["state_dict"]), path,
                          "resume with the -a, --width-mult and dataset it was trained with.")
    restore_state(run.optimizer, ckpt.get("optimizer"), path, "optimizer")
    restore_state(run.scheduler, ckpt.get("scheduler"), path, "scheduler")
    if run.ema is not None and "state_dict_ema" in ckpt:
        run.ema.load(ckpt["state_dict_ema"], int(ckpt.get("ema_updates", 0)))
    point = ResumePoint(int(ckpt.get("epoch", 0)), int(ckpt.get("step", 0)), ckpt.get("best_acc1"), resumed=True)
    where = f"epoch {point.epoch}" + (f", step {point.step}" if point.step else "")
    print(f"=> resumed from {path} ({where}, best Acc@1 {point.best_acc1 or 0.0:.3f})", flush=True)
    return point


def resume_path(resume_flag: str, output_dir: str) -> str | None:
    """The checkpoint ``--resume`` points at; ``auto`` means ``output_dir/checkpoint.pth.tar`` when it exists."""
    if resume_flag != "auto":
        return resume_flag or None
    path = os.path.join(output_dir, checkpoint.CHECKPOINT_NAME)
    return path if os.path.isfile(path) else None


def earlier_run_files(output_dir: str) -> list[str]:
    """The files of an earlier training run in ``output_dir``: its checkpoints, and each CSV log (a ``.csv`` whose
    header starts with ``epoch``) with its curves ``<stem>.png``."""
    found = [name for name in (checkpoint.CHECKPOINT_NAME, checkpoint.BEST_NAME)
             if os.path.isfile(os.path.join(output_dir, name))]
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if name.endswith(".csv") and os.path.isfile(path) and _starts_with_epoch(path):
            found.append(name)
            curves = name[:-len(".csv")] + ".png"
            if os.path.isfile(os.path.join(output_dir, curves)):
                found.append(curves)
    return found


def _starts_with_epoch(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.readline().startswith(b"epoch,")
    except OSError:
        return False


def check_fresh_output_dir(output_dir: str, resuming: bool, overwrite: bool) -> None:
    """Refuse a fresh run into a folder holding another run's log or checkpoints (one run, one record), unless it
    resumes that run or ``--overwrite`` was given; with ``--overwrite`` the earlier run's files are removed first."""
    if resuming or not os.path.isdir(output_dir):
        return
    found = earlier_run_files(output_dir)
    if not found:
        return
    if not overwrite:
        raise UserError(f"--output-dir {output_dir!r} holds another run ({', '.join(found)}); continue it with "
                        "--resume auto, replace it with --overwrite, or choose another --output-dir.")
    for name in found:
        os.remove(os.path.join(output_dir, name))
