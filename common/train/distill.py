"""Knowledge distillation (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network"): a frozen teacher's
soft targets join the task loss of every training step.

    loss = task_weight * task_loss(student, target)
           + kd_weight * T**2 * KL(softmax(teacher / T) || softmax(student / T))

The task loss is the run's own criterion (cross-entropy with label smoothing, on MixUp/CutMix soft targets when set);
the KL term is averaged over the batch, and T**2 keeps its gradients on the scale of the task loss's as T grows. The
teacher sees the very batch the student sees (after augmentation and mixing), in eval mode and without gradients;
when it was trained with another mean/std than the student's, the batch is re-normalised to its own first. The
teacher is held beside the run, never inside the student: it is not wrapped by DDP, not averaged into the EMA and
not saved in the student's checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.data.transforms import Normalization
from common.errors import UserError
from common.models import loading, preprocess
from common.models.factory import logits_of


@dataclass(frozen=True)
class KDConfig:
    """Temperature and weights of the distillation loss (``--kd-temperature``, ``--kd-loss-weight``,
    ``--task-loss-weight``)."""

    temperature: float = 1.0
    kd_weight: float = 1.0
    task_weight: float = 1.0


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, summed over classes and averaged over the batch."""
    log_p_student = F.log_softmax(student.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature ** 2


class DistillLoss(nn.Module):
    """The task criterion plus the weighted soft-target loss; called as ``loss(output, target, teacher_logits)``."""

    def __init__(self, task: nn.Module, cfg: KDConfig) -> None:
        super().__init__()
        self.task, self.cfg = task, cfg

    def forward(self, output: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        task = self.task(output, target)
        if self.cfg.kd_weight == 0:
            return self.cfg.task_weight * task
        return (self.cfg.task_weight * task
                + self.cfg.kd_weight * soft_target_loss(output, teacher_logits, self.cfg.temperature))


class Renormalize(nn.Module):
    """Turn a batch normalised with ``source`` (the student's mean/std) into one normalised with ``target``.

    ``(x * std_s + mean_s - mean_t) / std_t`` is ``x * scale + shift`` per channel.
    """

    def __init__(self, source: Normalization, target: Normalization) -> None:
        super().__init__()
        std_s, mean_s = torch.tensor(source.std), torch.tensor(source.mean)
        std_t, mean_t = torch.tensor(target.std), torch.tensor(target.mean)
        self.register_buffer("scale", (std_s / std_t).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean_s - mean_t) / std_t).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)


class Teacher:
    """A frozen model that gives soft targets: ``teacher(images)`` returns its logits, computed in eval mode without
    gradients, on ``images`` re-normalised to the teacher's own mean/std when ``renorm`` is set.

    Deliberately not an ``nn.Module``, so that it can never be registered inside the student (and so be wrapped,
    averaged or saved with it)."""

    def __init__(self, model: nn.Module, renorm: Renormalize | None = None, description: str = "") -> None:
        self.model, self.renorm = model.eval().requires_grad_(False), renorm
        self.description = description or type(model).__name__  # for the run header

    def to(self, device: torch.device) -> Teacher:
        self.model.to(device)
        if self.renorm is not None:
            self.renorm.to(device)
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()  # a caller's .train() on a module tree never reaches it, but stay safe
        with torch.no_grad():
            x = self.renorm(images) if self.renorm is not None else images
            return logits_of(self.model(x))


@dataclass(frozen=True)
class TeacherSpec:
    """Where the teacher comes from: ``--kd-model``, ``--kd-checkpoint``, ``--kd-pretrained``, ``--kd-width-mult``."""

    arch: str | None = None
    checkpoint: str | None = None
    pretrained: bool = False
    width_mult: float = 1.0

    @property
    def wanted(self) -> bool:
        return bool(self.arch or self.checkpoint or self.pretrained)


def check_classes(loaded: loading.LoadedModel, classes: list[str], what: str) -> None:
    """Refuse a teacher whose outputs are not the student's classes, in one sentence."""
    if loaded.num_classes != len(classes):
        raise UserError(f"the teacher {what} has {loaded.num_classes} outputs but the training data has "
                        f"{len(classes)} classes; give a teacher trained on the same classes.")
    if loaded.classes is not None and list(loaded.classes) != list(classes):
        i = next(i for i, (a, b) in enumerate(zip(loaded.classes, classes)) if a != b)
        raise UserError(f"the teacher {what} was trained on other classes than the training data (class {i} is "
                        f"{loaded.classes[i]!r} there, {classes[i]!r} here); give a teacher trained on these classes "
                        "in the same order.")


def load_teacher(spec: TeacherSpec, classes: list[str], student_norm: Normalization) -> Teacher:
    """The teacher ``spec`` names, checked against the student's ``classes``, on the CPU, described for the run
    header. Its mean/std are its checkpoint's (or its ImageNet weights'), else ImageNet's."""
    source = loading.ModelSource(path=spec.checkpoint, arch=spec.arch, pretrained=spec.pretrained,
                                 width_mult=spec.width_mult)
    loaded = loading.load_model(source)
    what = f"{loaded.arch} ({spec.checkpoint or 'ImageNet weights'})"
    check_classes(loaded, classes, what)
    prep = loading.eval_preprocess(loaded, preprocess.EvalFlags(), spec.checkpoint)
    norm = Normalization(prep.mean, prep.std)
    renorm = None if norm == student_norm else Renormalize(student_norm, norm)
    seen = ("the student's mean/std" if renorm is None else
            f"re-normalised to its mean {list(norm.mean)} std {list(norm.std)}")
    return Teacher(loaded.model, renorm, f"{what}, {seen}")


def describe(cfg: KDConfig) -> str:
    """The loss in a few words for the run header."""
    return (f"loss {cfg.task_weight:g} x task + {cfg.kd_weight:g} x T^2 KL at T {cfg.temperature:g}")
