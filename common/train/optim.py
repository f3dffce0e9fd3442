"""Optimiser, weight-decay groups, model EMA and batch mixing (MixUp/CutMix) of the training engine."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@dataclass(frozen=True)
class OptimConfig:
    """SGD settings; ``norm_weight_decay`` None means the same decay for every parameter."""

    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    norm_weight_decay: float | None = None


def split_norm_bias(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(other parameters, parameters of normalisation layers and every bias), each parameter once."""
    special: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, _NORM_TYPES) or name == "bias":
                special[id(param)] = param
    rest = [p for p in model.parameters() if id(p) not in special]
    return rest, list(special.values())


def param_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float | None) -> list[dict]:
    """One group, or two when normalisation weights and biases get their own decay (e.g. 0, as in GhostNet)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if norm_weight_decay is None or norm_weight_decay == weight_decay:
        return [{"params": params, "weight_decay": weight_decay}]
    rest, special = split_norm_bias(model)
    return [{"params": [p for p in rest if p.requires_grad], "weight_decay": weight_decay},
            {"params": [p for p in special if p.requires_grad], "weight_decay": norm_weight_decay}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    groups = param_groups(model, cfg.weight_decay, cfg.norm_weight_decay)
    return torch.optim.SGD(groups, cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


class ModelEma(AveragedModel):
    """Exponential moving average of a bare model's parameters and buffers, updated after each optimizer step.

    ``module`` holds the averaged weights; it is evaluated and saved like the model itself.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay = decay

    def load(self, state_dict: dict[str, torch.Tensor], updates: int) -> None:
        self.module.load_state_dict(state_dict)
        self.n_averaged.fill_(updates)


def build_mix(mixup_alpha: float, cutmix_alpha: float, num_classes: int):
    """A batch transform ``(images, labels) -> (mixed images, soft labels)``, or None when both are off.

    With both on, each batch gets MixUp or CutMix with equal chance (torchvision.transforms.v2.RandomChoice).
    """
    mixes = []
    if mixup_alpha > 0:
        mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
