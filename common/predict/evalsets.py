"""Labelled folders whose classes are not the model's one for one: ImageNet's robustness sets and a 1000-way head
evaluated on fewer folders.

* ImageNet-V2 names its 1000 folders by class index (``0``..``999``): they are read through the class map ``index``.
* ImageNet-Sketch has ImageNet's 1000 synset folders: matched as any ImageNet folder is.
* ImageNet-A and ImageNet-R have 200 synset folders each: as timm evaluates them, the logits are restricted to those
  200 classes before top-1, top-5 and the loss (``Matching.outputs``). A model without class names and 1000 outputs
  counts as ImageNet's 1000 synsets in sorted order.
* A model with more outputs than the folder has classes and no class names (the PyTorch ImageNet example always
  builds a 1000-way head, even when it trains on 10 folders) is evaluated as that example evaluates it: class folder
  ``i`` is output ``i`` and the top-1 is the argmax over all outputs; a prediction beyond the folders counts as wrong
  (``Matching.other_from``).

Each set is recognised from its folders (V2: the names ``0``..``999``; A and R: exactly their 200 synsets; Sketch:
``sketch`` in the folder's path) or named with ``test.py --eval-set``. The synset lists (ImageNet's 1000, in class
index order, and the 200 of A and of R) are in ``imagenet_synsets.json`` beside this module.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

import torch

from common.errors import UserError

EVAL_SETS = {"imagenet-v2": "ImageNet-V2", "imagenet-sketch": "ImageNet-Sketch", "imagenet-a": "ImageNet-A",
             "imagenet-r": "ImageNet-R"}
IMAGENET_CLASSES = 1000
OTHER = "(another output)"  # the report's class for a prediction beyond the folders


@functools.cache
def synsets(name: str = "imagenet") -> tuple[str, ...]:
    """ImageNet's 1000 synsets in class-index order (``imagenet``), or the 200 of ``imagenet-a`` / ``imagenet-r``."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_synsets.json"),
              encoding="utf-8") as f:
        return tuple(json.load(f)[name])


@dataclass(frozen=True)
class Matching:
    """How a folder's classes meet the model's outputs, when not one for one by name.

    ``classes``: the report's classes; ``outputs``: the model outputs the logits are restricted to, in ``classes``
    order (None: all); ``other_from``: predictions at or beyond this index are outputs no folder holds (None: none);
    ``name``: the set, for the report; ``note``: one line for the header; ``targets``: the class of each folder, in
    folder order (None: folder ``i`` is class ``i``).
    """

    classes: list[str]
    outputs: torch.Tensor | None
    other_from: int | None
    name: str
    note: str
    targets: list[int] | None = None


def recognise(folders: list[str], root: str, flag: str | None) -> str | None:
    """The robustness set a folder holds: ``flag`` (``--eval-set``) when given, else what its folders say."""
    if flag:
        return flag
    if len(folders) == IMAGENET_CLASSES and set(folders) == {str(i) for i in range(IMAGENET_CLASSES)}:
        return "imagenet-v2"
    for name in ("imagenet-a", "imagenet-r"):
        if sorted(folders) == sorted(synsets(name)):
            return name
    if len(folders) == IMAGENET_CLASSES and "sketch" in os.path.abspath(root).lower() and \
            set(folders) == set(synsets()):
        return "imagenet-sketch"
    return None


def model_synsets(model_classes: list[str] | None, num_classes: int) -> list[str] | None:
    """The model's classes as synsets: its own names when they are ImageNet's synsets, ImageNet's list for 1000
    unnamed outputs; None otherwise."""
    if model_classes is None:
        return list(synsets()) if num_classes == IMAGENET_CLASSES else None
    return list(model_classes) if set(model_classes) <= set(synsets()) else None


def restricted(folders: list[str], model_classes: list[str] | None, num_classes: int, name: str) -> Matching:
    """ImageNet-A / -R: the logits restricted to the set's 200 synsets (timm's way), each folder's images labelled
    with its synset's place among them; a UserError when the folders or the model's classes are not fit for it."""
    own, subset = model_synsets(model_classes, num_classes), list(synsets(name))
    title = EVAL_SETS[name]
    if own is None or not set(subset) <= set(own):
        raise UserError(f"--eval-set {name}: the model's classes are not ImageNet's synsets; evaluate a 1000-class "
                        f"ImageNet model on {title}.")
    unknown = [f for f in folders if f not in subset]
    if unknown:
        raise UserError(f"the class folders {unknown[:3]} are not among {title}'s 200 synsets; pass the set's own "
                        "folder, or another --eval-set.")
    index = {c: i for i, c in enumerate(own)}
    outputs = torch.tensor([index[c] for c in subset], dtype=torch.long)
    return Matching(subset, outputs, None, title,
                    f"{title}: top-1, top-5 and loss over the logits of its {len(subset)} classes only, as timm "
                    "evaluates it", [subset.index(f) for f in folders])


def pytorch_example(folders: list[str], num_classes: int) -> Matching:
    """A head of ``num_classes`` unnamed outputs on fewer folders: folder ``i`` is output ``i``, the argmax over all
    outputs (the PyTorch ImageNet example's evaluation)."""
    n = len(folders)
    return Matching([*folders, OTHER], None, n, "",
                    f"the model has {num_classes} outputs and no class names, the folder {n} classes: evaluated as "
                    f"the PyTorch ImageNet example does, class folder i is output i and top-1 is the argmax over all "
                    f"{num_classes} outputs (a prediction of output {n} or above is wrong)")


def match(folders: list[str], root: str, model_classes: list[str] | None, num_classes: int,
          flag: str | None) -> tuple[Matching | None, str | None]:
    """How ``folders`` (sorted class folders of ``root``) meet the model's outputs: a Matching where they are not
    matched one for one by name (A/R restriction, a larger unnamed head), else None; and the recognised set."""
    name = recognise(folders, root, flag)
    if name in ("imagenet-a", "imagenet-r"):
        return restricted(folders, model_classes, num_classes, name), name
    if model_classes is None and name is None and num_classes > len(folders):
        if model_synsets(None, num_classes) and set(folders) <= set(synsets()):
            return None, None  # ImageNet synset folders: matched by name to ImageNet's class list
        return pytorch_example(folders, num_classes), None
    return None, name


def other_output(top_idx: torch.Tensor, other_from: int | None) -> torch.Tensor:
    """``top_idx`` with every output no folder holds shown as the report's ``OTHER`` class."""
    return top_idx if other_from is None else top_idx.clamp(max=other_from)
