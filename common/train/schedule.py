"""Learning-rate schedules, stepped once per iteration (a step schedule changes only at epoch boundaries).

``lr(it) = base_lr * lr_factor(it)`` with optional linear warm-up over the first ``warmup_epochs``:
step: ``gamma ** (epoch // step_size)``, with ``step_size`` a whole or fractional number of epochs (timm's
``--sched step --decay-epochs 2.4 --decay-rate 0.973``: the epoch counts from 0, warm-up epochs included);
linear: ``1 - it / max_it`` (after warm-up, to 0 at the end);
cosine: ``0.5 * (1 + cos(pi * progress))``; constant: 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str
    epochs: int
    iters_per_epoch: int
    warmup_epochs: float = 0.0
    step_size: float = 30
    gamma: float = 0.1


def lr_factor(it: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base learning rate at iteration ``it`` (0-based, counted over the whole run)."""
    total = max(1, cfg.epochs * cfg.iters_per_epoch)
    warm = round(cfg.warmup_epochs * cfg.iters_per_epoch)
    if it < warm:
        return (it + 1) / warm
    if cfg.kind == "step":
        return cfg.gamma ** ((it // cfg.iters_per_epoch) // cfg.step_size)
    progress = min(1.0, (it - warm) / max(1, total - warm))
    if cfg.kind == "linear":
        return 1.0 - progress
    if cfg.kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.kind == "constant":
        return 1.0
    raise ValueError(f"unknown lr schedule {cfg.kind!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR to be stepped after every optimizer step.

    The factor is a plain function (not a callable object), so the scheduler's state_dict holds only plain values
    and loads with ``weights_only=True``; the schedule itself is rebuilt from the flags on resume.
    """

    def factor(it: int) -> float:
        return lr_factor(it, cfg)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
