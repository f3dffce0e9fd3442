"""What ``--data`` is: the dataset format at a path, recognised once and carried as a frozen ``DataSource``.

Each format is one reader module (``imagefolder``, ``hfdata``, ``shards``) and one ``Reader`` entry in ``READERS``
here; nothing downstream asks again which format a path holds. A new format needs a module with the same entry
points and one line in ``READERS``.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import Dataset

from common.data import hfdata, imagefolder, published, shards
from common.data.imagefolder import LAYOUT_HELP
from common.errors import UserError


@dataclass(frozen=True)
class Reader:
    """The entry points of one dataset format.

    ``found_at(root)``: whether its files are at ``root``; ``check(root)``: refuse what it cannot read, before any
    process starts; ``datasets(root, fast, train_tf, val_tf, bad_log)``: the training and validation sets and
    their class names; ``split(root, name, transform, fast)``: one split by random access (evaluation, sorting);
    ``scan(root, splits, hint, workers, limit)``: ``--check-data``. A streaming format also gives ``loaders``
    (training and validation loaders of a rank) and ``ordered_loader`` (every sample once, in order); a map-style
    one leaves them None and gets the samplers of ``loaders.build_loaders``.
    """

    name: str
    prefix: str
    found_at: Callable[[str], bool]
    check: Callable[[str], None]
    datasets: Callable[..., tuple]
    split: Callable[..., Dataset]
    scan: Callable[..., int]
    loaders: Callable[..., tuple] | None = None
    ordered_loader: Callable[..., object] | None = None


READERS = {
    "folder": Reader("ImageFolder", "folder:", imagefolder.found_at, imagefolder.check, imagefolder.datasets,
                     imagefolder.split, imagefolder.scan),
    "parquet": Reader("Hugging Face parquet", "hf:", hfdata.is_parquet, hfdata.check, hfdata.datasets, hfdata.split,
                      hfdata.scan),
    "arrow": Reader("Hugging Face save_to_disk (Arrow)", "hf:", hfdata.found_arrow, hfdata.check, hfdata.datasets,
                    hfdata.split, hfdata.scan),
    "shards": Reader("WebDataset tar shards", "wds:", shards.found_at, shards.check, shards.datasets, shards.split,
                     shards.scan, shards.loaders, shards.ordered_loader),
}
FORMATS = {fmt: reader.name for fmt, reader in READERS.items()}
PREFIXES = {prefix: tuple(f for f, r in READERS.items() if r.prefix == prefix)
            for prefix in dict.fromkeys(r.prefix for r in READERS.values())}
SYNTHETIC = "synthetic"  # --dummy: torchvision FakeData, no files


@dataclass(frozen=True)
class DataSource:
    """A resolved ``--data``: the format (a key of READERS, or ``synthetic`` for ``--dummy``) and its root folder.

    ``str()`` gives the prefixed form (``wds:/data/shards``) that ``resolve_source`` reads back, which is how a
    checkpoint records it."""

    format: str
    root: str | None = None

    def __str__(self) -> str:
        root = getattr(self.root, "spec", self.root)  # split patterns (wds:DIR?train=...) come back with the folder
        return SYNTHETIC if self.format == SYNTHETIC else f"{READERS[self.format].prefix}{root}"

    @property
    def reader(self) -> Reader:
        return READERS[self.format]

    def describe(self) -> str:
        """The format's name for a header: ``synthetic``, ``ImageFolder``, ``WebDataset tar shards``, ..."""
        return SYNTHETIC if self.format == SYNTHETIC else self.reader.name


def _formats_at(root: str) -> list[str]:
    """Every format whose files are at ``root`` (none, one, or several for a folder that mixes them)."""
    return [fmt for fmt, reader in READERS.items() if reader.found_at(root)]


def resolve_source(data: str) -> DataSource:
    """The DataSource of a ``--data`` value: recognised from what is at the path, or forced by a prefix (``hf:``,
    ``wds:``, ``folder:``; ``wds:DIR?train=PATTERN&val=PATTERN`` names the shards of each split in timm's brace
    form). A folder holding several formats, or none, is a UserError."""
    prefix = next((p for p in PREFIXES if data.startswith(p)), None)
    root = data[len(prefix):] if prefix else data
    if prefix == "wds:" and "?" in root:  # shards named otherwise, with their split patterns
        root = published.pattern_root(root)
    if not os.path.isdir(root):
        raise UserError(f"dataset folder {root!r} does not exist or is not a folder; {LAYOUT_HELP}.")
    found = _formats_at(root)
    if prefix:
        allowed = [f for f in found if f in PREFIXES[prefix]]
        if not allowed and prefix != "folder:":
            raise UserError(f"{root!r} holds no {' or '.join(FORMATS[f] for f in PREFIXES[prefix])} dataset; "
                            f"{LAYOUT_HELP}.")
        return DataSource((allowed or ["folder"])[0], root)
    if len(found) > 1:
        raise UserError(f"{root!r} mixes dataset formats ({', '.join(FORMATS[f] for f in found)}); keep one per "
                        "folder, or choose with a prefix: --data hf:DIR, wds:DIR or folder:DIR.")
    return DataSource((found or ["folder"])[0], root)


def check_source(source: DataSource) -> None:
    """Refuse a source that its reader cannot use, before any process starts."""
    if source.format != SYNTHETIC:
        source.reader.check(source.root)
