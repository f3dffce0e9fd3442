"""Shard folders as others publish them: timm's Hub layout and the webdataset project's ImageNet converter.

timm's ``imagenet-1k-wds`` names its shards ``imagenet1k-train-NNNN.tar`` and ``imagenet1k-validation-NN.tar`` and
describes each split in ``_info.json`` (``splits.<name>.filenames`` and ``shard_lengths``), without ``classes.txt``;
the webdataset converter writes ``imagenet-train-NNNNNN.tar`` and ``imagenet-val-NNNNNN.tar``. This module reads
what those folders say: the sample count of each shard, and the class names where the folder gives none: from
``_info.json``, else from the samples' ``.json`` members (``{"label": 3, "class_name": "tulip"}``, as a
``webdataset.ShardWriter`` user or timm's shards write them). A layout named otherwise is given with its split
patterns in timm's brace form: ``--data 'wds:DIR?train=shop-train-{0000..0015}.tar&val=shop-test-{00..03}.tar'``
(``PatternRoot``).
"""
from __future__ import annotations

import functools
import json
import os
import re
import tarfile

import torchvision

from common.errors import UserError

INFO_NAME = "_info.json"
# The keys of a sample's .json that name its class, and those that give its label (else its .cls member does).
NAME_KEYS = ("class_name", "classname", "label_name", "class", "synset", "wnid")
LABEL_KEYS = ("label", "cls", "class_id", "target")
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


def _sample_json(path: str) -> dict[int, str]:
    """label -> class name, from the ``.json`` (and ``.cls``) members of one shard's samples; images are skipped."""
    found: dict[int, str] = {}
    current, meta, cls = None, None, None

    def note() -> None:
        name = next((meta[k] for k in NAME_KEYS if isinstance(meta, dict) and isinstance(meta.get(k), str)), None)
        label = next((meta[k] for k in LABEL_KEYS if isinstance(meta, dict) and isinstance(meta.get(k), int)), cls)
        if name and isinstance(label, int) and label >= 0 and found.setdefault(label, name) != name:
            raise UserError(f"{path}: the samples' .json give label {label} two class names ({found[label]!r}, "
                            f"{name!r}); write classes.txt beside the shards (one name per line, in label order).")

    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = os.path.basename(member.name).partition(".")
                if key != current:
                    note()
                    current, meta, cls = key, None, None
                if ext.lower() == "json":
                    meta = json.loads(tar.extractfile(member).read())
                elif ext.lower() == "cls":
                    text = tar.extractfile(member).read().strip()
                    cls = int(text) if text.isdigit() else None
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise UserError(f"{path} cannot be read for its samples' class names ({exc}); write classes.txt beside the "
                        "shards (one name per line, in label order).") from None
    note()
    return found


@functools.lru_cache(maxsize=8)
def _sample_classes(files: tuple[str, ...], stamp: tuple) -> list[str] | None:
    names: dict[int, str] = {}
    for path in files:
        for label, name in _sample_json(path).items():
            if names.setdefault(label, name) != name:
                raise UserError(f"the samples' .json give label {label} two class names ({names[label]!r}, {name!r}); "
                                "write classes.txt beside the shards (one name per line, in label order).")
    if not names:
        return None
    missing = [i for i in range(max(names) + 1) if i not in names]
    if missing:
        raise UserError(f"the samples' .json name no class for label {missing[0]} (of 0..{max(names)}); write "
                        "classes.txt beside the shards (one name per line, in label order).")
    return [names[i] for i in range(len(names))]


def sample_classes(files: list[str]) -> list[str] | None:
    """Class names in label order from the samples' ``.json`` members of ``files`` (each shard read once per process,
    images skipped); None when no sample names its class; a UserError when they name a label twice differently or
    leave one unnamed."""
    stamp = tuple((os.path.getsize(f), os.path.getmtime(f)) for f in files)
    return _sample_classes(tuple(files), stamp)


SPLIT_KEYS = {"train": "train", "val": "val", "validation": "val"}
MAX_EXPANDED = 1_000_000  # shard names one pattern may stand for
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(\d+)\.\.(\d+)")


def expand_braces(pattern: str) -> list[str]:
    """The names a brace pattern stands for, in order: ``{0000..0015}`` a zero-padded range (the width of its first
    bound), ``{a,b}`` alternatives, several braces combined (as timm's and webdataset's shard specs)."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    ranged = _RANGE.fullmatch(body)
    if ranged:
        low, high = int(ranged.group(1)), int(ranged.group(2))
        if high < low or high - low >= MAX_EXPANDED:
            raise UserError(f"the shard pattern {pattern!r} has the range {{{body}}}, which is empty or too large; "
                            "give {FIRST..LAST} with FIRST <= LAST.")
        width = len(ranged.group(1))
        choices = [f"{i:0{width}d}" for i in range(low, high + 1)]
    else:
        choices = body.split(",")
    out = [head + choice + rest for choice in choices for rest in expand_braces(tail)]
    if len(out) > MAX_EXPANDED:
        raise UserError(f"the shard pattern {pattern!r} stands for more than {MAX_EXPANDED} files; give fewer.")
    return out


class PatternRoot(str):
    """A shard folder with the split patterns it was given (``DIR?train=PATTERN&val=PATTERN``): the folder as a
    ``str`` for every path built from it, ``patterns`` ({"train"|"val": brace pattern}) for the shards, and ``spec``
    (the whole value, as ``--data`` records it)."""

    patterns: dict[str, str]

    def __new__(cls, folder: str, patterns: dict[str, str]) -> PatternRoot:
        root = super().__new__(cls, folder)
        root.patterns = dict(patterns)
        return root

    def __reduce__(self):
        return PatternRoot, (str.__str__(self), self.patterns)

    @property
    def spec(self) -> str:
        return str.__str__(self) + "?" + "&".join(f"{k}={v}" for k, v in self.patterns.items())

    def files(self, split: str) -> list[str]:
        """The shards of ``split`` in pattern order ([] when no pattern names the split); a UserError naming the
        first that does not exist."""
        if split not in self.patterns:
            return []
        paths = [os.path.join(self, name) for name in expand_braces(self.patterns[split])]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise UserError(f"the {split} pattern {self.patterns[split]!r} names {len(missing)} file(s) that do not "
                            f"exist, e.g. {missing[0]!r}; fix the pattern after wds:{str.__str__(self)}?")
        return paths


def pattern_root(value: str) -> PatternRoot:
    """``DIR?train=PATTERN&val=PATTERN`` (either split may be left out) as a PatternRoot; one UserError for a
    malformed value or a pattern naming a file that does not exist."""
    folder, _, query = value.partition("?")
    patterns = {}
    for part in query.split("&"):
        key, sep, pattern = part.partition("=")
        if not sep or key not in SPLIT_KEYS or not pattern or "/" in pattern or os.sep in pattern:
            raise UserError(f"--data wds:{value!r}: after '?' give train=PATTERN and/or val=PATTERN joined by '&', "
                            "each a shard file name in the folder with timm's braces, e.g. "
                            "'wds:DIR?train=shop-train-{0000..0015}.tar&val=shop-test-{00..03}.tar'.")
        patterns[SPLIT_KEYS[key]] = pattern
    root = PatternRoot(folder, patterns)
    for split in patterns:
        root.files(split)  # every file a pattern names must exist: said now, in one line
    return root
