"""Where the published GhostNetV2 and GhostNetV3 ImageNet weights are, and their state_dicts in this project's names.

Two releases hold the same weights: timm's copies on the Hugging Face hub (``timm/ghostnetv2_100.in1k``, ...,
``model.safetensors``, kept in the Hugging Face cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``), and the authors' files on GitHub (``ck_ghostnetv2_10.pth.tar``, ...,
``ghostnetv3-1.0.pth.tar``), which ``torch.hub`` keeps in ``<torch hub dir>/checkpoints``. A cached copy of either
is used; with neither, the authors' file is downloaded into the torch hub cache. Offline, the error names both
places. The authors' files name a few BatchNorms ``bn`` where timm and ghost_net_v23.py say ``bn1``, and carry
thop's ``total_ops``/``total_params`` counters; ``state_dict_of`` renames and drops them as timm does.
"""
from __future__ import annotations

import argparse
import os
import pickle

import torch

from common.errors import UserError
from common.models import checkpoint

RELEASES = "https://github.com/huawei-noah/Efficient-AI-Backbones/releases/download"
# (arch, width) -> (timm's Hugging Face repository, the authors' release URL); no other width has weights.
PUBLISHED = {
    ("ghostnetv2", 1.0): ("timm/ghostnetv2_100.in1k", f"{RELEASES}/GhostNetV2/ck_ghostnetv2_10.pth.tar"),
    ("ghostnetv2", 1.3): ("timm/ghostnetv2_130.in1k", f"{RELEASES}/GhostNetV2/ck_ghostnetv2_13.pth.tar"),
    ("ghostnetv2", 1.6): ("timm/ghostnetv2_160.in1k", f"{RELEASES}/GhostNetV2/ck_ghostnetv2_16.pth.tar"),
    ("ghostnetv3", 1.0): ("timm/ghostnetv3_100.in1k", f"{RELEASES}/GhostNetV3/ghostnetv3-1.0.pth.tar"),
}
HF_FILES = ("model.safetensors", "pytorch_model.bin")


def hf_hub_cache() -> str:
    """The Hugging Face hub cache folder, as huggingface_hub finds it (read now, so a changed environment counts)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return os.path.join(home, "hub")


def hf_cached_file(repo: str) -> str | None:
    """The cached weights file of the Hugging Face ``repo`` (its ``main`` snapshot, else any), or None."""
    folder = os.path.join(hf_hub_cache(), "models--" + repo.replace("/", "--"))
    snapshots = os.path.join(folder, "snapshots")
    try:
        with open(os.path.join(folder, "refs", "main"), encoding="utf-8") as f:
            revisions = [f.read().strip()]
    except OSError:
        revisions = sorted(os.listdir(snapshots)) if os.path.isdir(snapshots) else []
    for revision in revisions:
        for name in HF_FILES:
            path = os.path.join(snapshots, revision, name)
            if os.path.isfile(path):
                return path
    return None


def torch_hub_file(url: str) -> str:
    """Where torch.hub keeps (or expects) the file of ``url``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def cached_file(arch: str, width: float) -> str | None:
    """The cached copy of the published ``arch`` weights at ``width`` (timm's first, then the authors'), or None."""
    if (arch, width) not in PUBLISHED:
        return None
    repo, url = PUBLISHED[arch, width]
    path = hf_cached_file(repo) or torch_hub_file(url)
    return path if os.path.isfile(path) else None


def published_widths(arch: str) -> list[float]:
    return sorted(w for a, w in PUBLISHED if a == arch)


def _read(path: str) -> dict:
    """The tensors of a safetensors file, or a torch file read with weights_only (the authors' training files also
    hold their argparse.Namespace of flags, which is allowed and ignored)."""
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(f"{path} is a safetensors file, which needs the safetensors package; "
                            "pip install safetensors.") from None
        return load_file(path)
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def state_dict_of(obj: dict) -> dict[str, torch.Tensor]:
    """The model weights of a release file in ghost_net_v23.py's names (timm's checkpoint filter, written again)."""
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    out = {}
    for key, value in checkpoint.strip_prefixes(state).items():
        if "total_ops" in key or "total_params" in key:
            continue
        if "bn." in key and (".ghost" in key or ".dw_rpr_" in key):
            key = key.replace("bn.", "bn1.")
        out[key] = value
    return out


def load_published(arch: str, width: float) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict, path) of the published ``arch`` weights at ``width``; a UserError when none exist or none can
    be found or downloaded."""
    if (arch, width) not in PUBLISHED:
        widths = ", ".join(f"{w:g}" for w in published_widths(arch))
        raise UserError(f"published {arch} weights exist for --width-mult {widths} only; drop --pretrained or "
                        "choose one of these widths.")
    repo, url = PUBLISHED[arch, width]
    path = cached_file(arch, width) or torch_hub_file(url)
    if not os.path.isfile(path):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            torch.hub.download_url_to_file(url, path, progress=False)
        except OSError as exc:  # URLError, socket and HTTP errors: no download possible
            raise UserError(f"could not download the pretrained {arch} weights ({exc}); copy {url} to {path}, or "
                            f"timm's {repo} into the Hugging Face cache {hf_hub_cache()}, or pass a local file "
                            "with --weights PATH.") from None
    try:
        return state_dict_of(_read(path)), path
    except (RuntimeError, ValueError, KeyError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise UserError(f"the cached file {path} is not readable {arch} weights ({str(exc).splitlines()[0][:120]}); "
                        f"delete it so that it is downloaded again, or replace it with {url}.") from None
