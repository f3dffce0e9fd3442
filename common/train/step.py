"""One optimizer step: optional MixUp/CutMix, micro-batch gradient accumulation, autocast with a gradient scaler,
gradient clipping, the lr schedule and the EMA update; with a teacher, its soft targets on the same (mixed) batch."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from common.models import checkpoint
from common.models.factory import logits_of
from common.parallel.precision import Precision
from common.train.optim import ModelEma


@dataclass
class TrainStep:
    """Everything an optimizer step touches. ``accum_steps`` micro-batches share one step: the loss of each is
    weighted by its share of the batch, so the summed gradients equal the whole batch's (up to float rounding).
    Under DDP, gradients are all-reduced once, with the last micro-batch."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision
    accum_steps: int = 1
    clip_grad_norm: float | None = None
    mix: Callable | None = None
    ema: ModelEma | None = None
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None  # distill.Teacher; criterion is then a DistillLoss

    def __post_init__(self) -> None:
        self.scaler = self.precision.grad_scaler()
        self.last_lr = self.optimizer.param_groups[0]["lr"]

    def _sync(self, last: bool) -> contextlib.AbstractContextManager:
        ddp = getattr(self.model, "_orig_mod", self.model)  # under torch.compile, the DDP module it wraps
        if last or not isinstance(ddp, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return ddp.no_sync()

    def _backward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward over the micro-batches: (logits, mean loss), both detached."""
        outputs, total = [], torch.zeros((), device=images.device)
        chunks = list(zip(images.chunk(self.accum_steps), labels.chunk(self.accum_steps)))
        for k, (x, y) in enumerate(chunks):
            with self._sync(k == len(chunks) - 1):
                with self.precision.autocast():
                    out = logits_of(self.model(x))
                    soft = None if self.teacher is None else self.teacher(x)
                loss = self._loss(out, y, soft) * (len(y) / len(labels))
                self.scaler.scale(loss).backward()
            outputs.append(out.detach())
            total += loss.detach()
        return torch.cat(outputs), total

    def _loss(self, out: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
        if soft is None:
            return self.criterion(out.float(), y)
        return self.criterion(out.float(), y, soft.float())

    def __call__(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on a batch already on the device; returns (logits, loss) for the meters."""
        labels = target
        if self.mix is not None:
            images, labels = self.mix(images, target)
        self.optimizer.zero_grad(set_to_none=True)
        output, loss = self._backward(images, labels)
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(checkpoint.unwrap(self.model))
        return output, loss
