"""Hugging Face datasets on local disk as map-style datasets: parquet as on the Hub, or a ``save_to_disk`` folder.

The Hub layout is ``ROOT/data/train-*.parquet`` and ``ROOT/data/validation-*.parquet`` (``ROOT/*.parquet`` too, and
one ``train.parquet`` / ``validation.parquet`` each, as ``Dataset.to_parquet`` writes them when so named),
with an ``image`` column (a struct of ``bytes`` and ``path``, or plain bytes) and an integer ``label`` column; the
class names are the ``label`` ClassLabel's, read from the Hugging Face features JSON that the ``huggingface`` key of
the Arrow schema metadata holds. ``datasets.save_to_disk`` writes ``ROOT/dataset_dict.json`` and one folder per split
with ``dataset_info.json``, ``state.json`` and ``data-*.arrow`` (Arrow IPC streams). Only pyarrow is needed.

``TableImages`` behaves as ``imagefolder.ImageFolderWithPaths`` does: ``samples`` holds ``(key, target)`` in row order
(the key ``data/train-00000-of-00002.parquet:17`` names the file and row), targets and classes are known up front,
and ``__getitem__`` goes through ``unreadable.load_or_skip``; so the global-permutation sampler, per-image seeds, exact
distributed evaluation, mid-epoch resume and bad-image skipping hold as they do for a folder. Files are opened
lazily in each process (DataLoader workers included) and memory-mapped. Arrow rows are read in place; a parquet row
costs reading its row group's image column (the Hub writes 100 images per group), of which one group per process is
kept, so random access reads each group once per image drawn from it. The Hub's 100-image groups make that about
11 MB per ImageNet image; ``python -m common.data.convert HUB_DIR OUT --to parquet`` rewrites them with 16-image groups
(measured 5x less reading per random sample), and benchmarks/bench_formats.py compares the formats.
"""
from __future__ import annotations

import bisect
import glob
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from common import schema
from common.data import transforms, unreadable
from common.data.images import BadImage
from common.data.samples import CompactSamples
from common.errors import UserError

SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid")}
PARQUET, ARROW = "parquet", "arrow"
FIX = "the dataset's metadata is damaged: download it again, or write it again with datasets"
EXTRA = "pyarrow is needed to read parquet and Arrow datasets; install it with pip install pyarrow " \
        "(see requirements-extra.txt)."


def import_pyarrow():
    """pyarrow and pyarrow.parquet, or one UserError line naming the extra to install."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UserError(EXTRA) from None
    return pyarrow, pyarrow.parquet


def parquet_files(root: str, split: str) -> list[str]:
    """The parquet files of ``split`` (``train`` or ``val``) under ``root`` or ``root/data``, sorted: the Hub's
    ``train-00000-of-00002.parquet`` pieces, or one ``train.parquet`` as ``Dataset.to_parquet`` is usually given."""
    for folder in (os.path.join(root, "data"), root):
        for name in SPLIT_NAMES[split]:
            for pattern in (f"{name}-*.parquet", f"{name}.parquet"):
                found = sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))
                if found:
                    return found
    return []


def arrow_files(root: str, split: str) -> list[str]:
    """The ``data-*.arrow`` files of a ``save_to_disk`` split folder, in ``state.json``'s order."""
    for name in SPLIT_NAMES[split]:
        folder = os.path.join(root, name)
        state = os.path.join(folder, "state.json")
        if os.path.isfile(state):
            entries = schema.load_json(state, FIX, {"_data_files?": [{"filename": schema.Text()}]})
            return [os.path.join(folder, e["filename"]) for e in entries.get("_data_files", [])]
    return []


def is_parquet(root: str) -> bool:
    return os.path.isdir(root) and bool(parquet_files(root, "train") or parquet_files(root, "val"))


def is_arrow(root: str) -> bool:
    return os.path.isdir(root) and (os.path.isfile(os.path.join(root, "dataset_dict.json"))
                                    or bool(arrow_files(root, "train") or arrow_files(root, "val")))


def split_files(root: str, split: str) -> tuple[str, list[str]]:
    """``(kind, files)`` of one split of the Hugging Face dataset at ``root``, or a UserError naming the layout."""
    kind, files = (PARQUET, parquet_files(root, split)) if is_parquet(root) else (ARROW, arrow_files(root, split))
    if not files:
        names = " or ".join(SPLIT_NAMES[split])
        where = f"data/{names}-*.parquet" if kind == PARQUET else f"{names}/state.json with data-*.arrow"
        raise UserError(f"{root!r} holds a Hugging Face dataset without a {split} split; expected {where}.")
    return kind, files


def features_of(arrow_schema, where: str = "the file") -> dict:
    """The Hugging Face features JSON of an Arrow schema (``{}`` when the file was not written by ``datasets``);
    metadata of another shape is one UserError naming ``where``."""
    meta = (arrow_schema.metadata or {}).get(b"huggingface")
    if not meta:
        return {}
    where = f"{where} (its Hugging Face schema metadata)"
    info = schema.check(schema.parse_json(meta, where, FIX), dict, where, FIX)
    info = schema.check(info.get("info", info), {"features?": dict}, where, FIX)
    return info.get("features") or {}


@dataclass(frozen=True)
class Columns:
    """Which column holds the image and which the label, and the label's ClassLabel names (None if it has none)."""

    image: str
    label: str
    names: tuple[str, ...] | None


def choose_columns(arrow_schema, where: str) -> Columns:
    """The image and label columns of ``arrow_schema``; a UserError when there is no ``label`` or no image column,
    or when the ClassLabel names are not distinct strings."""
    features, columns = features_of(arrow_schema, where), list(arrow_schema.names)
    if "label" not in columns:
        raise UserError(f"{where} has no 'label' column (its columns: {columns}); a training or evaluation set needs "
                        "an integer label per image.")
    image = "image" if "image" in columns else next(
        (c for c in columns if isinstance(features.get(c), dict) and features[c].get("_type") == "Image"), None)
    if image is None:
        raise UserError(f"{where} has no 'image' column (its columns: {columns}); expected the image bytes there.")
    label = features.get("label") or {}
    names = (label.get("names") or None) if isinstance(label, dict) else None
    if names is not None:
        names = tuple(schema.class_names(names, f"{where} (the ClassLabel of its 'label' column)", FIX))
    return Columns(image, "label", names)


class _Reader:
    """Random access to one column of a list of parquet or Arrow files; opened on first use in each process."""

    def __init__(self, kind: str, files: list[str], column: str) -> None:
        self.kind, self.files, self.column = kind, files, column
        self._open: dict[int, Any] = {}
        self._group: tuple[tuple[int, int], Any] | None = None  # the last parquet row group read, per process

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}, "_group": None}  # handles and mmaps are not sent to workers

    def value(self, file: int, row: int) -> Any:
        """Row ``row`` of file ``file``'s column, as a Python value."""
        if self.kind == ARROW:
            return self._arrow(file)[row].as_py()
        pf, starts = self._parquet(file)
        group = bisect.bisect_right(starts, row) - 1
        if self._group is None or self._group[0] != (file, group):
            self._group = ((file, group), pf.read_row_group(group, columns=[self.column]).column(0))
        return self._group[1][row - starts[group]].as_py()

    def _parquet(self, file: int):
        if file not in self._open:
            _, pq = import_pyarrow()
            pf = pq.ParquetFile(self.files[file], memory_map=True)
            sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
            self._open[file] = (pf, [0, *np.cumsum(sizes)[:-1].tolist()])
        return self._open[file]

    def _arrow(self, file: int):
        if file not in self._open:
            pa, _ = import_pyarrow()
            with pa.memory_map(self.files[file]) as source:  # zero-copy: the table's buffers point into the mapping
                self._open[file] = pa.ipc.open_stream(source).read_all().column(self.column)
        return self._open[file]


def read_table(kind: str, path: str, columns: list[str] | None = None):
    """One parquet or Arrow IPC file as a pyarrow Table (only ``columns`` when given), memory-mapped."""
    pa, pq = import_pyarrow()
    try:
        if kind == PARQUET:
            return pq.read_table(path, columns=columns, memory_map=True)
        with pa.memory_map(path) as source:
            table = pa.ipc.open_stream(source).read_all()
        return table.select(columns) if columns else table
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path} cannot be read as {kind} ({exc}); download or convert it again.") from None


def read_labels(kind: str, path: str) -> np.ndarray:
    """The ``label`` column of one file as int64, or a UserError naming the file, how many rows are not integer
    class indices and the first of them (strings, as ``datasets`` writes a string feature; nulls; floats)."""
    pa, _ = import_pyarrow()
    column = read_table(kind, path, ["label"]).column(0)
    if pa.types.is_integer(column.type) and column.null_count == 0:
        return column.to_numpy().astype(np.int64, copy=False)
    values = column.to_pylist()
    bad = [i for i, v in enumerate(values) if not (isinstance(v, int) and not isinstance(v, bool))]
    if pa.types.is_floating(column.type):
        bad = [i for i, v in enumerate(values) if v is None or not float(v).is_integer()]
        if not bad:  # whole numbers stored as floats (1.0, 2.0): nothing is lost
            return np.asarray(values, dtype=np.int64)
    first = values[bad[0]]
    what = "nulls" if first is None else "strings" if isinstance(first, str) else f"{column.type} values"
    raise UserError(f"{path}: its 'label' column holds {what} where integer class indices are expected ({len(bad)} "
                    f"of {len(values)} rows, the first row {bad[0]}: {first!r}); encode the labels as "
                    "integers (with datasets: class_encode_column('label')) and write the file again.")


def schema_of(kind: str, path: str):
    pa, pq = import_pyarrow()
    try:
        if kind == PARQUET:
            return pq.read_schema(path, memory_map=True)
        with pa.memory_map(path) as source:
            return pa.ipc.open_stream(source).schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path} cannot be read as {kind} ({exc}); download or convert it again.") from None


def image_bytes(value: Any, base: str, key: str) -> bytes:
    """The encoded image of one ``image`` cell: bytes, or a struct of bytes and a path (relative to ``base``)."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and path:
            try:
                with open(path if os.path.isabs(path) else os.path.join(base, path), "rb") as f:
                    return f.read()
            except OSError as exc:
                raise BadImage(key, f"cannot read {path} ({exc.strerror})") from None
        value = data
    if not value:
        raise BadImage(key, "empty file")
    return value


class TableImages(Dataset):
    """One split of a Hugging Face dataset on disk: ``(image, target, key)`` like ``imagefolder.ImageFolderWithPaths``.

    ``classes`` come from the ClassLabel names (``names``), or are the label numbers as text; ``samples`` is a
    ``CompactSamples`` of ``(key, target)``; ``decode(bytes, key)`` turns a row's bytes into what ``transform``
    takes (``transforms.decode_uint8`` or ``images.decode_rgb``).
    """

    def __init__(self, root: str, split: str, classes: list[str], decode, transform=None, bad_log=None,
                 substitute: bool = True) -> None:
        self.root, self.split = root, split
        self.kind, files = split_files(root, split)
        columns = choose_columns(schema_of(self.kind, files[0]), files[0])
        labels = [read_labels(self.kind, f) for f in files]
        self.classes, self.class_to_idx = list(classes), {c: i for i, c in enumerate(classes)}
        self._check_labels(labels, files)
        self._starts = [0, *np.cumsum([len(x) for x in labels])[:-1].tolist()]
        rel = [os.path.relpath(f, root) for f in files]
        self.samples = self.imgs = CompactSamples(
            (f"{name}:{row}", int(t)) for name, part in zip(rel, labels) for row, t in enumerate(part))
        self.targets = self.samples.targets
        self._reader = _Reader(self.kind, files, columns.image)
        self.decode, self.transform, self.bad_log, self.substitute = decode, transform, bad_log, substitute

    def _check_labels(self, labels: list[np.ndarray], files: list[str]) -> None:
        for path, part in zip(files, labels):
            bad = np.flatnonzero((part < 0) | (part >= len(self.classes))) if len(part) else []
            if len(bad):
                raise UserError(f"{path} row {int(bad[0])} has label {int(part[bad[0]])}, outside the "
                                f"{len(self.classes)} classes; {self.split} images need a label in 0..."
                                f"{len(self.classes) - 1} (the Hub's test split has none: use validation).")

    def __len__(self) -> int:
        return len(self.samples)

    def encoded(self, index: int) -> bytes:
        """The encoded image of sample ``index`` as stored (JPEG, PNG, ...); BadImage when the row holds none."""
        file = bisect.bisect_right(self._starts, index) - 1
        key = self.samples[index][0]
        pa, _ = import_pyarrow()
        try:
            value = self._reader.value(file, index - self._starts[file])
        except (pa.ArrowException, OSError) as exc:  # a damaged page or row group: this row cannot be read
            raise BadImage(key, f"damaged file ({str(exc).splitlines()[0][:100] if str(exc) else 'unreadable'})"
                           ) from None
        return image_bytes(value, os.path.dirname(self._reader.files[file]), key)

    def __getitem__(self, index: int):

        return unreadable.load_or_skip(self, index, lambda i, key: self.decode(self.encoded(i), key))


def row_name(key: str) -> str:
    """A file name stem for a row: ``data/train-00000.parquet:17`` becomes ``train-00000-17``."""
    file, row = key.rsplit(":", 1)
    return f"{os.path.splitext(os.path.basename(file))[0]}-{row}"


def class_names(root: str) -> list[str]:
    """The class names shared by both splits: their ClassLabel names, else ``0``..``K-1``. Splits that name
    their classes differently are refused: the same label would mean another class in each."""
    named = {}
    for split in ("train", "val"):
        try:
            kind, files = split_files(root, split)
        except UserError:
            continue
        columns = choose_columns(schema_of(kind, files[0]), files[0])
        if columns.names is not None:
            named[split] = (files[0], list(columns.names))
    if len(named) == 2 and named["train"][1] != named["val"][1]:
        (train, a), (val, b) = named["train"], named["val"]
        diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        raise UserError(f"{root}: the train and validation splits name their classes differently (label {diff} is "
                        f"{a[diff] if diff < len(a) else 'absent'!r} in {train} but "
                        f"{b[diff] if diff < len(b) else 'absent'!r} in {val}); write both splits with one "
                        "ClassLabel.")
    if named:
        return next(iter(named.values()))[1]
    top = -1
    for split in ("train", "val"):
        kind, files = split_files(root, split) if (parquet_files(root, split) or arrow_files(root, split)) else ("", [])
        for f in files:
            labels = read_labels(kind, f)
            top = max(top, int(labels.max()) if len(labels) else -1)
    return [str(i) for i in range(top + 1)]


def found_arrow(root: str) -> bool:
    """A ``save_to_disk`` folder that is not also a parquet dataset (parquet wins where both are found)."""
    return is_arrow(root) and not is_parquet(root)


def check(root: str) -> None:
    """Refuse a Hugging Face dataset when pyarrow, which reads it, is missing."""
    import_pyarrow()


def datasets(root: str, fast: bool, train_tf, val_tf, bad_log=None):
    """The train and validation splits of a Hugging Face parquet or ``save_to_disk`` dataset at ``root``."""
    import_pyarrow()
    classes, decode = class_names(root), transforms.decoder(fast)
    train = TableImages(root, "train", classes, decode, train_tf, bad_log, substitute=True)
    val = TableImages(root, "val", classes, decode, val_tf, bad_log, substitute=False)
    return train, val, classes


def split(root: str, name: str, transform, fast: bool) -> Dataset:
    """One split of the dataset at ``root``, read by random access, for evaluation or sorting."""
    import_pyarrow()
    return TableImages(root, name, class_names(root), transforms.decoder(fast), transform, substitute=False)


def scan(root: str, splits: tuple[str, ...], hint: str = "", workers: int = 0, limit: int | None = None) -> int:
    """``--check-data``: decode every row of ``splits`` (the first ``limit`` of each), print
    ``unreadable: <file>:<row>: <reason>`` for each bad one and a summary; 1 if any is unreadable, else 0."""
    bad, total = [], 0
    for name in splits:
        ds = split(root, name, None, fast=False)
        for i in range(min(len(ds), limit or len(ds))):
            try:
                ds[i]
            except BadImage as exc:
                bad.append(exc)
                print(f"unreadable: {exc}")
            total += 1
    print(f"=> checked {total} images in {root}: {len(bad)} unreadable" + (f" ({hint})" if bad and hint else ""),
          flush=True)
    return 1 if bad else 0
