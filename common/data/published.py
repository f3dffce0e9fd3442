"""Shard folders as others publish them: timm's Hub layout and the webdataset project's ImageNet converter.

timm's ``imagenet-1k-wds`` names its shards ``imagenet1k-train-NNNN.tar`` and ``imagenet1k-validation-NN.tar`` and
describes each split in ``_info.json`` (``splits.<name>.filenames`` and ``shard_lengths``), without ``classes.txt``;
the webdataset converter writes ``imagenet-train-NNNNNN.tar`` and ``imagenet-val-NNNNNN.tar``. This module reads
what those folders say: the sample count of each shard, and the class names where the folder gives none.
"""
from __future__ import annotations

import json
import os

import torchvision

from common.errors import UserError

INFO_NAME = "_info.json"
IMAGENET_CLASSES = 1000
# Split patterns after our own train-*.tar / val-*.tar: a dataset-name prefix before the split name.
TRAIN_PATTERNS = ("*-train-*.tar",)
VAL_PATTERNS = ("*-validation-*.tar", "*-val-*.tar")


def read_info(root: str) -> dict:
    """The folder's ``_info.json`` as a dict, ``{}`` when there is none; a UserError when it is not JSON."""
    path = os.path.join(root, INFO_NAME)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read as JSON ({exc}); fix it or remove it.") from None
    if not isinstance(info, dict):
        raise UserError(f"{path} is not a JSON object; fix it or remove it.")
    return info


def info_lengths(info: dict) -> dict[str, int]:
    """Samples per shard file name, from every split of ``_info.json`` that lists ``filenames`` and
    ``shard_lengths`` of equal length; other entries are ignored (the shards' headers are scanned instead)."""
    lengths = {}
    splits = info.get("splits")
    for entry in (splits.values() if isinstance(splits, dict) else []):
        if not isinstance(entry, dict):
            continue
        names, counts = entry.get("filenames"), entry.get("shard_lengths")
        if isinstance(names, list) and isinstance(counts, list) and len(names) == len(counts):
            lengths.update({os.path.basename(str(n)): c for n, c in zip(names, counts)
                            if isinstance(c, int) and c > 0})
    return lengths


def imagenet_class_names() -> list[str]:
    """ImageNet-1k's 1000 class names in label order, as torchvision ships them (no download)."""
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def info_classes(info: dict) -> list[str] | None:
    """Class names from ``_info.json``: its ``classes`` or ``label_names`` list, else ImageNet's own list when it says
    it holds 1000 classes (``num_classes``) or names an ImageNet-1k dataset; None when it says neither."""
    for key in ("classes", "label_names"):
        names = info.get(key)
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return list(names)
    name = str(info.get("name", "")).lower().replace("-", "").replace("_", "")
    if info.get("num_classes") == IMAGENET_CLASSES or name.startswith(("imagenet1k", "imagenet")):
        return imagenet_class_names()
    return None
