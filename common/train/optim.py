"""Optimiser (SGD, AdamW, RMSprop in TensorFlow's form), weight-decay groups, model EMA and batch mixing (MixUp/CutMix)
of the training engine."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


DEFAULT_EPS = {"sgd": None, "adamw": 1e-8, "rmsproptf": 1e-10}  # as torch's AdamW and timm's RMSpropTF


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser settings; ``norm_weight_decay`` None means the same decay for every parameter. ``eps`` None is the
    optimiser's own (DEFAULT_EPS); ``momentum`` and ``nesterov`` are SGD's and RMSpropTF's (AdamW has betas)."""

    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    norm_weight_decay: float | None = None
    opt: str = "sgd"
    eps: float | None = None
    alpha: float = 0.9  # RMSpropTF's decay of the squared-gradient average (timm's and TensorFlow's 0.9)


class RMSpropTF(torch.optim.Optimizer):
    """RMSprop as TensorFlow runs it (and timm's RMSpropTF with its defaults), which differs from torch's RMSprop in
    three ways: the mean square starts at 1, not 0; ``eps`` is added inside the square root; and the learning rate
    scales the update before it enters the momentum buffer, so a changed lr does not rescale past momentum.

    Per parameter, with ``g`` the gradient plus ``weight_decay * p`` (L2 decay, not decoupled)::

        ms  = alpha * ms + (1 - alpha) * g**2          # ms starts at 1
        buf = momentum * buf + lr * g / sqrt(ms + eps)  # buf starts at 0
        p   = p - buf                                  # without momentum: p - lr * g / sqrt(ms + eps)
    """

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.9, eps: float = 1e-10, weight_decay: float = 0.0,
                 momentum: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay,
                                  "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict) -> None:
        grad = p.grad
        if group["weight_decay"]:
            grad = grad.add(p, alpha=group["weight_decay"])
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["square_avg"] = torch.ones_like(p)
            if group["momentum"] > 0:
                state["momentum_buffer"] = torch.zeros_like(p)
        state["step"] += 1
        ms = state["square_avg"]
        ms.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
        denom = ms.add(group["eps"]).sqrt_()
        if group["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).addcdiv_(grad, denom, value=group["lr"])
            p.sub_(buf)
        else:
            p.addcdiv_(grad, denom, value=-group["lr"])


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


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """``cfg.opt`` over the model's trainable parameters, with their weight-decay groups (``param_groups``)."""
    groups = param_groups(model, cfg.weight_decay, cfg.norm_weight_decay)
    eps = DEFAULT_EPS.get(cfg.opt) if cfg.eps is None else cfg.eps
    if cfg.opt == "sgd":
        return torch.optim.SGD(groups, cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.opt == "adamw":
        return torch.optim.AdamW(groups, cfg.lr, eps=eps)
    if cfg.opt == "rmsproptf":
        return RMSpropTF(groups, cfg.lr, alpha=cfg.alpha, eps=eps, momentum=cfg.momentum)
    raise ValueError(f"unknown optimiser {cfg.opt!r}")


def describe_optimizer(cfg: OptimConfig) -> str:
    """The optimiser in a few words for the run header, e.g. ``RMSpropTF momentum 0.9 eps 0.001``."""
    if cfg.opt == "adamw":
        return f"AdamW eps {DEFAULT_EPS['adamw'] if cfg.eps is None else cfg.eps:g}"
    if cfg.opt == "rmsproptf":
        eps = DEFAULT_EPS["rmsproptf"] if cfg.eps is None else cfg.eps
        return f"RMSpropTF momentum {cfg.momentum:g} alpha {cfg.alpha:g} eps {eps:g}"
    return f"SGD momentum {cfg.momentum:g}{' Nesterov' if cfg.nesterov else ''}"


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
