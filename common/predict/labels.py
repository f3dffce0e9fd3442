"""Other label sets for an evaluation: ImageNet-ReaL's multi-labels, and class maps for folders named otherwise.

ImageNet-ReaL (Beyer et al., "Are we done with ImageNet?", 2020) relabelled the 50,000 val images: ``real.json`` is
a JSON list, one list of class indices per image in ``ILSVRC2012_val_00000001...`` order, empty where the raters
kept no label; those images are left out of ReaL accuracy, as the paper does. A prediction is right when it is any
of the image's labels. A class map renames class folders to the model's classes: ``index`` for folders named by
class index (ImageNet-V2's ``0``..``999``), or a JSON object ``{folder: class name or index}``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from common.data.valprep import VAL_NUMBER
from common.errors import UserError

VAL_NAME = re.compile(VAL_NUMBER.pattern + r"\.[A-Za-z]+")


@dataclass(frozen=True)
class ClassMap:
    """Folder name -> the model's class: by index (``by_index``) or by the ``table`` of a JSON file."""

    by_index: bool
    table: dict[str, str | int]

    def class_of(self, folder: str, classes: list[str]) -> str | None:
        """The model class that ``folder`` holds; None when the map does not name it; an index out of range or an
        unknown name comes back as it is (``#1234``, ``tulip``) so that the caller names it as unknown."""
        if self.by_index:
            value: str | int | None = int(folder) if folder.isdigit() else None
        else:
            value = self.table.get(folder)
        if isinstance(value, int):
            return classes[value] if 0 <= value < len(classes) else f"#{value}"
        return value


def read_class_map(spec: str) -> ClassMap:
    """``index``, or a JSON file mapping folder names to class names or indices; a bad file is one UserError."""
    if spec == "index":
        return ClassMap(True, {})
    table = _read_json(f"--class-map {spec!r}", spec, "give 'index' or a JSON file",
                       "give a JSON object {folder: class name or index}")
    if not isinstance(table, dict) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                              for v in table.values()):
        raise UserError(f"--class-map {spec!r} is not a JSON object of folder names to class names or indices.")
    return ClassMap(False, {str(k): v for k, v in table.items()})


def _read_json(what: str, path: str, if_unreadable: str, if_not_json: str) -> Any:
    """The JSON in ``path``; a file that cannot be read or parsed is one UserError naming ``what`` and the fix."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise UserError(f"{what} cannot be read ({exc.strerror}); {if_unreadable}.") from None
    except ValueError:
        raise UserError(f"{what} is not JSON; {if_not_json}.") from None


def _load_real(path: str) -> list[list[int]]:
    real = _read_json(f"--real-labels {path!r}", path, "check the path", "give ImageNet-ReaL's real.json")
    if not isinstance(real, list) or not all(isinstance(r, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                                                         for i in r) for r in real):
        raise UserError(f"--real-labels {path!r} is not a list of lists of class indices, as real.json is.")
    return real


def read_real(path: str, samples: list[tuple[str, int]], num_classes: int) -> dict[str, list[int]]:
    """The ReaL labels of each image file of ``samples`` (path -> class indices), from ``path``.

    The folder must hold the val images under their ImageNet names, as many as the file has entries; anything else
    (another length, other file names, indices beyond the model's classes) is one UserError.
    """
    real = _load_real(path)
    if len(real) != len(samples):
        raise UserError(f"--real-labels {path!r} has {len(real)} entries but the folder has {len(samples)} images; "
                        "ReaL labels one whole ImageNet val set (50000 images): evaluate the whole val folder.")
    out = {}
    for file, _ in samples:
        match = VAL_NAME.fullmatch(os.path.basename(file))
        number = int(match.group(1)) if match else 0
        if not 1 <= number <= len(real):
            raise UserError(f"--real-labels {path!r} does not fit the folder: {file!r} is not an ImageNet val image "
                            f"ILSVRC2012_val_00000001 to {len(real):08d}; evaluate the ImageNet val folder.")
        out[file] = real[number - 1]
    bad = [i for labels in out.values() for i in labels if not 0 <= i < num_classes]
    if bad:
        raise UserError(f"--real-labels {path!r} names class {bad[0]}, but the model has {num_classes} classes; "
                        "ReaL labels are for 1000-class ImageNet models.")
    return out


def real_accuracy(paths: list[str], top1: torch.Tensor, real: dict[str, list[int]]) -> dict:
    """ReaL top-1 (percent) over the images with at least one ReaL label, and how many those are."""
    hits = [int(top1[row]) in real[path] for row, path in enumerate(paths) if real.get(path)]
    return {"real_top1": 100.0 * sum(hits) / max(1, len(hits)), "real_images": len(hits)}
