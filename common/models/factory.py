"""One ``create_model`` for every torchvision classifier and GhostNet (v1, V2, V3), plus head replacement.

Pretrained weights come through torchvision's weights API (GhostNet: the official release; GhostNetV2/V3:
``ghostnet_weights``, timm's copy in the Hugging Face cache or the authors' release), which downloads into the torch
hub cache; offline, the error names the file expected there and how to pass a local one.
"""
from __future__ import annotations

import copy
import difflib
import os
import pickle
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torchvision

from common.errors import UserError
from common.models import checkpoint, ghostnet_weights

# GhostNet's file counts parameters and multiply-adds (FlopCounterMode) for any model; one count of each here too.
from ghost_net import count_macs as count_macs
from ghost_net import count_params as count_params
from ghost_net import ghost_net
from ghost_net_v23 import ghost_net_v23

GHOSTNET_URL = "https://github.com/huawei-noah/ghostnet/raw/master/ghostnet_pytorch/models/state_dict_73.98.pth"
IMAGENET_CLASSES = 1000
GHOSTNETS = ("ghostnet", "ghostnetv2", "ghostnetv3")  # the archs that take --width-mult


def available_archs() -> list[str]:
    """Every torchvision classification model name, plus ``ghostnet``, ``ghostnetv2`` and ``ghostnetv3``."""
    return sorted(torchvision.models.list_models(module=torchvision.models) + list(GHOSTNETS))


def weights_url(arch: str) -> str:
    """Download URL of the default ImageNet weights of ``arch``."""
    if arch == "ghostnet":
        return GHOSTNET_URL
    return torchvision.models.get_model_weights(arch).DEFAULT.url


def pretrained_file(arch: str, width_mult: float = 1.0) -> str | None:
    """The cached file that ``--pretrained -a arch`` loads, or None while it is not there."""
    if arch in GHOSTNETS[1:]:
        return ghostnet_weights.cached_file(arch, width_mult)
    path = cache_path(weights_url(arch))
    return path if os.path.isfile(path) else None


def cache_path(url: str) -> str:
    """Where torch.hub keeps (or expects) the downloaded file for ``url``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def _dropout_kwargs(dropout: float | None) -> dict:
    """``dropout=`` for builders only when set, so each model keeps its own default otherwise."""
    return {} if dropout is None else {"dropout": dropout}


def _build(arch: str, num_classes: int, width_mult: float, dropout: float | None = None) -> nn.Module:
    extra = _dropout_kwargs(dropout)
    if arch == "ghostnet":
        return ghost_net(width_mult=width_mult, num_classes=num_classes, **extra)
    if arch in GHOSTNETS:
        return ghost_net_v23(arch.removeprefix("ghostnet"), width_mult=width_mult, num_classes=num_classes, **extra)
    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra)
    except TypeError as exc:
        if "dropout" in str(exc):
            raise UserError(f"{arch} has no dropout setting; drop --dropout for this architecture.") from None
        raise


def _build_pretrained(arch: str, width_mult: float, dropout: float | None = None) -> nn.Module:
    """The ImageNet model with its published weights, downloaded into the hub cache on first use."""
    if arch in GHOSTNETS[1:]:
        state, path = ghostnet_weights.load_published(arch, width_mult)
        model = _build(arch, IMAGENET_CLASSES, width_mult, dropout)
        checkpoint.load_exact(model, state, path, f"replace it with the published {arch} weights.")
        return model
    if arch == "ghostnet" and width_mult != 1.0:
        raise UserError("published GhostNet weights exist for --width-mult 1.0 only; drop --pretrained or the width.")
    url = weights_url(arch)
    try:
        if arch == "ghostnet":
            model = _build(arch, IMAGENET_CLASSES, 1.0, dropout)
            model.load_state_dict(torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True))
            return model
        return torchvision.models.get_model(arch, weights="DEFAULT", **_dropout_kwargs(dropout))
    except OSError as exc:  # URLError, socket and HTTP errors: no download possible
        raise UserError(f"could not download the pretrained {arch} weights ({exc}); copy {url} to "
                        f"{cache_path(url)}, or pass a local file with --weights PATH.") from None
    except (RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:  # a wrong file is cached
        reason = (f"its tensors do not fit {arch}" if "loading state_dict" in str(exc)
                  else "not a readable PyTorch weights file")
        raise UserError(f"the cached file {cache_path(url)} is not the {arch} ImageNet weights ({reason}); delete "
                        f"it so that it is downloaded again, or replace it with {url}.") from None


def classifier_name(model: nn.Module) -> str:
    """Dotted name of the final classification layer: the last nn.Linear, or SqueezeNet's final 1x1 conv."""
    if isinstance(model, torchvision.models.SqueezeNet):
        return "classifier.1"
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise UserError(f"{type(model).__name__} has no nn.Linear classifier to replace; choose another --arch.")
    return names[-1]


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Swap the final layer for a freshly initialised one with ``num_classes`` outputs; return its name."""
    name = classifier_name(model)
    old = model.get_submodule(name)
    if isinstance(old, nn.Conv2d):
        new: nn.Module = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
    else:
        new = nn.Linear(old.in_features, num_classes)
    model.set_submodule(name, new)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return name


def load_weights_file(model: nn.Module, path: str) -> None:
    """Load a state_dict or project checkpoint into ``model``; a head of another shape is dropped with a notice."""
    state = checkpoint.state_dict_from(checkpoint.checked(checkpoint.load_file(path), path))
    own = model.state_dict()
    head = classifier_name(model) + "."
    other_head = [k for k in state if k.startswith(head) and k in own and state[k].shape != own[k].shape]
    for key in other_head:
        del state[key]
    if other_head:
        print(f"=> {path}: its classifier has another number of classes; a new head is trained ({head[:-1]})")
    checkpoint.load_exact(model, state, path, "pass the -a/--arch (and --width-mult) it was trained with.",
                          optional=(head,) if other_head else ())


def create_model(arch: str, num_classes: int, pretrained: bool = False, weights_path: str | None = None,
                 width_mult: float = 1.0, dropout: float | None = None) -> nn.Module:
    """Build ``arch`` with ``num_classes`` outputs: random init, ImageNet weights, or a local weights file.

    With ImageNet weights and ``num_classes != 1000`` the classifier is replaced by a new, untrained one.
    ``dropout`` (None: the model's default) is passed to models that take one.
    """
    if weights_path:
        model = _build(arch, num_classes, width_mult, dropout)
        load_weights_file(model, weights_path)
        return model
    if pretrained:
        model = _build_pretrained(arch, width_mult, dropout)
        if num_classes != IMAGENET_CLASSES:
            replace_head(model, num_classes)
        return model
    return _build(arch, num_classes, width_mult, dropout)


def reparameterized(model: nn.Module) -> nn.Module | None:
    """An eval-mode copy of ``model`` with its re-parameterisable branches folded (GhostNetV3's ``reparameterize()``,
    as its paper deploys it), or None for a model that has none. Inference only; ``model`` is left as it is, so
    that checkpoints keep the training form."""
    if not callable(getattr(model, "reparameterize", None)):
        return None
    folded = copy.deepcopy(model).eval()
    folded.reparameterize()
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module | None:
    """A copy of the eval-mode ``model`` with every BatchNorm that directly follows a convolution folded into it
    (and, first, GhostNetV3's parallel branches folded: ``reparameterized``).

    Inference only: the convolution takes the BatchNorm's running statistics and affine terms into its weight and
    bias, which saves one pass over each activation (measured 9% faster for ResNet-50 in bf16 on a 2-core CPU). The
    outputs equal the original's up to float rounding (relative 1e-6). None when torch.fx cannot trace ``model``
    (for GhostNetV3, then, the re-parameterised copy).
    """
    from torch.fx.experimental.optimization import fuse

    folded = reparameterized(model)
    try:
        return fuse(folded or model.eval())
    except Exception:  # noqa: BLE001 - fx raises many kinds of errors on code it cannot trace; the model still runs
        return folded


def logits_of(output) -> torch.Tensor:
    """Main logits of a model output (GoogLeNet/Inception return a namedtuple with aux logits in training)."""
    return getattr(output, "logits", output)


def check_arch(arch: str, choices: list[str]) -> None:
    """Refuse an unknown architecture with the closest names as a suggestion."""
    if arch in choices:
        return
    close = difflib.get_close_matches(arch, choices, n=3)
    hint = (f" Did you mean {', '.join(close)}?" if close
            else " `python -c 'import common.models.factory as f; print(f.available_archs())'` lists them.")
    raise UserError(f"unknown architecture {arch!r}: use a torchvision classification model, ghostnet, ghostnetv2 "
                    f"or ghostnetv3.{hint}")
