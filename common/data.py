"""Datasets, transforms, samplers and loaders.

The ImageFolder here also returns each sample's file path: ``(image, target, path)``. Training batches are cut
from one global permutation so that N processes see, step by step, the same images as one process with the same
global batch; evaluation shards the set without padding so that every image is counted exactly once.
"""
from __future__ import annotations

import dataclasses
import glob
import math
import multiprocessing
import os
import queue
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets
from torchvision.transforms import v2

from common import transforms, valprep
from common.distributed import DistContext
from common.errors import UserError
from common.images import BadImage, decode_rgb, load_rgb
from common.samples import CompactSamples

MAX_SUBSTITUTES = 50
LAYOUT_HELP = ("expected DIR/train/<class>/<image> and DIR/val/<class>/<image> (the ImageNet layout, one folder per "
               "class); pass --dummy to try the scripts on synthetic images")


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


class BadImageLog:
    """Where loading code, in DataLoader workers too, reports unreadable files; the main process drains it.

    ``policy`` is ``skip`` (report and go on) or ``fail`` (stop at the first one). A multiprocessing queue is used
    because workers are separate processes; its feeder thread means reporting never blocks a worker.
    """

    def __init__(self, policy: str = "skip") -> None:
        self.policy = policy
        self.queue: multiprocessing.Queue = multiprocessing.Queue()

    def report(self, exc: BadImage) -> None:
        self.queue.put((exc.path, exc.reason))

    def drain(self) -> list[tuple[str, str]]:
        """Every (path, reason) reported since the last call, in arrival order."""
        items = []
        while True:
            try:
                items.append(self.queue.get(timeout=0.05))
            except queue.Empty:
                return items


class ImageFolderWithPaths(datasets.ImageFolder):
    """torchvision ImageFolder that returns ``(image, target, path)`` and ignores hidden files and folders.

    Images are decoded by ``transforms.load_uint8`` (``fast``: JPEG through libjpeg-turbo, to a uint8 tensor) or
    ``images.load_rgb`` (PIL): EXIF orientation, CMYK, 16-bit and transparency are handled either way, and an
    unreadable file raises ``images.BadImage`` naming it and why. The sample list is stored compactly (numpy
    arrays, ``samples.CompactSamples``) so that DataLoader workers do not copy it page by page.

    With a ``bad_log`` under policy ``skip``, an unreadable file is reported and replaced by the next readable one
    (``substitute``: training keeps batches full) or by None (evaluation, where ``skip_none_collate`` drops it so
    that no image is counted twice).
    """

    def __init__(self, root: str, transform=None, bad_log: BadImageLog | None = None, substitute: bool = True,
                 fast: bool = False) -> None:
        super().__init__(root, transform=transform, loader=transforms.load_uint8 if fast else load_rgb)
        self.samples = self.imgs = CompactSamples(self.samples)
        self.targets = self.samples.targets
        self.bad_log, self.substitute = bad_log, substitute

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not _is_hidden(e.name))
        if not classes:
            flat = valprep.flat_folder_error(directory)  # images but no class folders: an unsorted ImageNet val/?
            raise UserError(flat or f"{directory!r} has no class folders; {LAYOUT_HELP}.")
        return classes, {name: i for i, name in enumerate(classes)}

    def __getitem__(self, index: int):
        return load_or_skip(self, index, lambda i, path: self.loader(path))


def load_or_skip(dataset, index: int, load: Callable[[int, str], Any]):
    """``(image, target, key)`` of ``dataset[index]``, with unreadable images handled as ``dataset.bad_log`` says.

    ``dataset`` has ``samples`` (``(key, target)`` per index), ``transform``, ``bad_log`` and ``substitute``;
    ``load(i, key)`` decodes sample ``i`` or raises BadImage. Every map-style dataset of this module (folder,
    parquet, Arrow) goes through here, so that all of them skip, substitute and report alike.
    """
    samples = dataset.samples
    for attempt in range(MAX_SUBSTITUTES):
        i = (index + attempt) % len(samples)
        key, target = samples[i]
        try:
            image = load(i, key)
        except BadImage as exc:
            if dataset.bad_log is None:
                raise
            if dataset.bad_log.policy == "fail":
                raise UserError(f"unreadable image {exc}; remove or replace it, "
                                "or pass --bad-images skip.") from None
            dataset.bad_log.report(exc)
            if not dataset.substitute:
                return None
            continue
        return (dataset.transform(image) if dataset.transform is not None else image), target, key
    raise UserError(f"{MAX_SUBSTITUTES} images in a row are unreadable from {samples[index][0]} on; "
                    "list them with --check-data.")


def skip_none_collate(batch: list):
    """default_collate without the samples that were dropped as unreadable (None); None if none is left."""
    kept = [sample for sample in batch if sample is not None]
    return torch.utils.data.default_collate(kept) if kept else None


class FakeDataWithPaths(datasets.FakeData):
    """torchvision FakeData (``--dummy``) with the same ``(image, target, path)`` contract and class names."""

    def __init__(self, size: int, image_size: int, num_classes: int, transform, random_offset: int = 0) -> None:
        super().__init__(size=size, image_size=(3, image_size, image_size), num_classes=num_classes,
                         transform=transform, random_offset=random_offset)
        self.classes = [f"class{i:04d}" for i in range(num_classes)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        image, target = super().__getitem__(index)
        return image, int(target), f"dummy/{index}"


def split_dirs(root: str) -> tuple[str, str]:
    """``(root/train, root/val)``, or a UserError that explains the expected layout."""
    if not os.path.isdir(root):
        raise UserError(f"dataset folder {root!r} does not exist or is not a folder; {LAYOUT_HELP}.")
    missing = [name for name in ("train", "val") if not os.path.isdir(os.path.join(root, name))]
    if missing:
        raise UserError(f"dataset folder {root!r} has no {' or '.join(m + '/' for m in missing)} subfolder; "
                        f"{LAYOUT_HELP}.")
    return os.path.join(root, "train"), os.path.join(root, "val")


FORMATS = {"folder": "ImageFolder", "parquet": "Hugging Face parquet", "arrow": "Hugging Face save_to_disk (Arrow)",
           "shards": "WebDataset tar shards"}
PREFIXES = {"hf:": ("parquet", "arrow"), "wds:": ("shards",), "folder:": ("folder",)}


def _formats_at(root: str) -> list[str]:
    """Every format whose files are at ``root`` (none, one, or several for a folder that mixes them)."""
    from common import hfdata  # pyarrow-free: only file names are looked at

    found = []
    if all(os.path.isdir(os.path.join(root, name)) for name in ("train", "val")):
        found.append("folder")
    if hfdata.is_parquet(root):
        found.append("parquet")
    elif hfdata.is_arrow(root):
        found.append("arrow")
    if any(glob.glob(os.path.join(glob.escape(root), pattern)) for pattern in ("train-*.tar", "val-*.tar")):
        found.append("shards")
    return found


def resolve_source(data: str) -> tuple[str, str]:
    """``(format, path)`` of a ``--data`` value: recognised from what is at the path, or forced by a prefix
    (``hf:``, ``wds:``, ``folder:``). A folder holding several formats, or none, is a UserError."""
    prefix = next((p for p in PREFIXES if data.startswith(p)), None)
    root = data[len(prefix):] if prefix else data
    if not os.path.isdir(root):
        raise UserError(f"dataset folder {root!r} does not exist or is not a folder; {LAYOUT_HELP}.")
    found = _formats_at(root)
    if prefix:
        allowed = [f for f in found if f in PREFIXES[prefix]]
        if not allowed and prefix != "folder:":
            raise UserError(f"{root!r} holds no {' or '.join(FORMATS[f] for f in PREFIXES[prefix])} dataset; "
                            f"{LAYOUT_HELP}.")
        return (allowed or ["folder"])[0], root
    if len(found) > 1:
        raise UserError(f"{root!r} mixes dataset formats ({', '.join(FORMATS[f] for f in found)}); keep one per "
                        "folder, or choose with a prefix: --data hf:DIR, wds:DIR or folder:DIR.")
    return (found or ["folder"])[0], root


def describe_source(data: str | None, dummy: bool = False) -> str:
    """The name of the format at ``--data``, for a run's header: ``synthetic``, ``ImageFolder``, ..."""
    return "synthetic" if dummy or not data else FORMATS[resolve_source(data)[0]]


def check_source(data: str) -> str:
    """Refuse a ``--data`` that no dataset reader can use, before any process starts; return its format."""
    fmt, root = resolve_source(data)
    if fmt == "folder":
        split_dirs(root)
    elif fmt == "shards":
        from common import shards

        shards.read_classes(root)
    elif fmt in ("parquet", "arrow"):
        from common import hfdata

        hfdata.import_pyarrow()
    return fmt


def image_folder(directory: str, transform, bad_log: BadImageLog | None = None, substitute: bool = True,
                 fast: bool = False) -> ImageFolderWithPaths:
    """An ImageFolderWithPaths over ``directory``, with empty or unusable folders reported as a UserError."""
    try:
        return ImageFolderWithPaths(directory, transform=transform, bad_log=bad_log, substitute=substitute, fast=fast)
    except FileNotFoundError as exc:  # raised by torchvision when a class folder holds no image
        raise UserError(f"{directory!r}: {exc}; remove empty class folders or add images to them.") from None


def check_same_classes(train_classes: list[str], val_classes: list[str]) -> None:
    """Classes are matched by name, never by position: refuse train/ and val/ with different class folders."""
    if train_classes == val_classes:
        return
    only_train = sorted(set(train_classes) - set(val_classes))
    only_val = sorted(set(val_classes) - set(train_classes))
    raise UserError(f"train/ and val/ hold different class folders (only in train/: {only_train[:10]}, "
                    f"only in val/: {only_val[:10]}); give both splits the same class folders.")


@dataclass(frozen=True)
class DataConfig:
    """What to load: a folder (or synthetic data), the input sizes, the training augmentation and the pipeline.

    ``fast``: uint8 images through the DataLoader, normalised per batch by ``transforms.to_model_input``; otherwise
    the classic PIL transforms with normalised float images. ``augment``'s crop size wins over ``train_crop_size``.
    """

    root: str | None
    dummy: bool = False
    train_crop_size: int = 224
    val_resize_size: int = 256
    val_crop_size: int = 224
    dummy_train_size: int = 1280
    dummy_val_size: int = 256
    dummy_classes: int = 1000
    bad_log: BadImageLog | None = None
    augment: transforms.AugmentConfig | None = None
    fast: bool = False
    interpolation: str = "bilinear"  # of the eval resize
    norm: transforms.Normalization = transforms.IMAGENET  # of the classic pipeline (fast: on the device)

    def train_augment(self) -> transforms.AugmentConfig:
        return self.augment or transforms.AugmentConfig(crop_size=self.train_crop_size)


def build_transforms(cfg: DataConfig):
    """(training transform, evaluation transform) of ``cfg``; for synthetic PIL images first to uint8 if fast."""
    train_tf = transforms.train_transform(cfg.train_augment(), cfg.fast, cfg.norm)
    val_tf = transforms.eval_transform(cfg.val_resize_size, cfg.val_crop_size, cfg.fast, cfg.interpolation, cfg.norm)
    if cfg.fast and cfg.dummy:
        return v2.Compose([v2.PILToTensor(), train_tf]), v2.Compose([v2.PILToTensor(), val_tf])
    return train_tf, val_tf


def build_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset, list[str]]:
    """Training set, validation set and class names (shared by both splits)."""
    train_tf, val_tf = build_transforms(cfg)
    if cfg.dummy:
        size = max(cfg.train_augment().crop_size, cfg.val_resize_size)
        train = FakeDataWithPaths(cfg.dummy_train_size, size, cfg.dummy_classes, train_tf)
        val = FakeDataWithPaths(cfg.dummy_val_size, size, cfg.dummy_classes, val_tf, random_offset=cfg.dummy_train_size)
        return train, val, train.classes
    fmt, root = resolve_source(cfg.root)
    if fmt in ("parquet", "arrow"):
        return table_datasets(root, cfg, train_tf, val_tf)
    if fmt == "shards":
        from common import shards

        return shards.datasets(root, decoder(cfg.fast), train_tf, val_tf, cfg.bad_log)
    train_dir, val_dir = split_dirs(root)
    train = image_folder(train_dir, train_tf, cfg.bad_log, substitute=True, fast=cfg.fast)
    val = image_folder(val_dir, val_tf, cfg.bad_log, substitute=False, fast=cfg.fast)
    check_same_classes(train.classes, val.classes)
    return train, val, train.classes


def decoder(fast: bool) -> Callable[[bytes, str], Any]:
    """What decodes an image held in memory for the pipeline: uint8 tensor (``fast``) or PIL image."""
    return transforms.decode_uint8 if fast else decode_rgb


def table_split(root: str, split: str, transform, fast: bool, fmt: str = "parquet") -> Dataset:
    """One split (``train`` or ``val``) of the Hugging Face dataset (or, ``fmt`` shards, the shard folder) at
    ``root``, read by random access, for evaluation or sorting."""
    if fmt == "shards":
        from common import shards

        return shards.TarImages(root, split, shards.read_classes(root), decoder(fast), transform)
    from common import hfdata

    hfdata.import_pyarrow()
    return hfdata.TableImages(root, split, hfdata.class_names(root), decoder(fast), transform, substitute=False)


def check_table(root: str, splits: tuple[str, ...], hint: str = "", limit: int | None = None) -> int:
    """``--check-data`` of a Hugging Face dataset: decode every row of ``splits`` (the first ``limit`` of each), print
    ``unreadable: <file>:<row>: <reason>`` for each bad one and a summary; return 1 if any is unreadable, else 0."""
    bad, total = [], 0
    for split in splits:
        ds = table_split(root, split, None, fast=False)
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


def table_datasets(root: str, cfg: DataConfig, train_tf, val_tf) -> tuple[Dataset, Dataset, list[str]]:
    """The train and validation splits of a Hugging Face parquet or ``save_to_disk`` dataset at ``root``."""
    from common import hfdata

    hfdata.import_pyarrow()
    classes = hfdata.class_names(root)
    train = hfdata.TableImages(root, "train", classes, decoder(cfg.fast), train_tf, cfg.bad_log, substitute=True)
    val = hfdata.TableImages(root, "val", classes, decoder(cfg.fast), val_tf, cfg.bad_log, substitute=False)
    return train, val, classes


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation: a function of (seed, epoch, index) only, never of rank or worker."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % 2**63


class SeededSamples(Dataset):
    """Wraps a dataset so that ``ds[(index, seed)]`` seeds torch and ``random`` before loading ``index``.

    torchvision's random transforms draw from those generators, so each sample's augmentation is fixed by its seed,
    whichever process or DataLoader worker loads it: runs on 1 or N processes, with any ``-j``, and resumed mid-epoch
    see identical training images.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        torch.manual_seed(seed)
        random.seed(seed)
        return self.dataset[index]


class GlobalBatchSampler(Sampler):
    """Training sampler whose k-th batches over all ranks form the one-process k-th batch.

    Each epoch draws one permutation from ``seed + epoch`` (identical on every rank) and cuts it into global
    batches of ``world_size * batch_size``; rank r takes the r-th slice of each. Incomplete global batches are
    dropped (as timm does) unless the set is smaller than one global batch; then it is padded by repetition to a
    multiple of ``world_size``, as DistributedSampler does. With ``seed_samples`` it yields ``(index, seed)``
    pairs for SeededSamples. ``set_start(step)`` skips the first ``step`` batches (mid-epoch resume).
    """

    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, seed_samples: bool = False) -> None:
        self.num_samples, self.batch_size = num_samples, batch_size
        self.world_size, self.rank, self.seed, self.shuffle = world_size, rank, seed, shuffle
        self.seed_samples = seed_samples
        self.epoch = self.start_step = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, step: int) -> None:
        """Begin the epoch at batch ``step`` (0 = from the start)."""
        self.start_step = step

    def _global_order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        global_batch = self.world_size * self.batch_size
        if self.num_samples >= global_batch:
            return order[: self.num_samples // global_batch * global_batch]
        total = math.ceil(self.num_samples / self.world_size) * self.world_size
        return (order * math.ceil(total / max(1, self.num_samples)))[:total]

    def _my_indices(self) -> list[int]:
        order = self._global_order()
        step = self.world_size * self.batch_size
        mine: list[int] = []
        for start in range(0, len(order), step):
            chunk = order[start:start + step]
            share = len(chunk) // self.world_size
            mine.extend(chunk[self.rank * share:(self.rank + 1) * share])
        return mine[self.start_step * self.batch_size:]

    def __iter__(self):
        mine = self._my_indices()
        if self.seed_samples:
            return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in mine])
        return iter(mine)

    def __len__(self) -> int:
        return len(self._my_indices())


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank r takes images r, r+W, r+2W, ...; no padding, so each image is counted once."""

    def __init__(self, num_samples: int, world_size: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, num_samples, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def default_workers(procs_per_node: int = 1) -> int:
    """Loader workers per process: the node's cores shared by its processes, at most 8."""
    return max(1, min(8, (os.cpu_count() or 1) // max(1, procs_per_node)))


def per_process_batch(global_batch: int, world_size: int) -> int:
    """The global ``-b`` split over ``world_size`` processes; it must divide evenly."""
    if global_batch % world_size:
        raise UserError(f"-b/--batch-size {global_batch} does not divide over {world_size} processes; "
                        f"use a multiple of {world_size}.")
    return global_batch // world_size


def smallest_forward_batch(num_samples: int, global_batch: int, world_size: int, accum_steps: int = 1,
                           replicas: int = 1) -> int:
    """The fewest training images that one forward pass of one process (or DataParallel replica) sees in an epoch.

    ``GlobalBatchSampler`` gives each process ``global_batch / world_size`` images a step, or, for a set smaller
    than one global batch, its whole padded share; ``TrainStep`` then chunks that into ``accum_steps``
    micro-batches and DataParallel chunks each over ``replicas`` devices, the last chunk being the smallest.
    """
    share = global_batch // world_size if num_samples >= global_batch else math.ceil(num_samples / world_size)
    micro = min(len(c) for c in torch.arange(share).chunk(accum_steps))
    return min(len(c) for c in torch.arange(micro).chunk(replicas))


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, workers: int, device: torch.device,
                collate_fn=None) -> DataLoader:
    """A DataLoader with pinned memory on CUDA and workers that live across epochs."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0, drop_last=False,
                      collate_fn=collate_fn)


def ordered_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device):
    """A loader over every sample of ``dataset`` once, in its order (shards: in shard order), in one process."""
    if hasattr(dataset, "assignment"):
        from common import shards

        return shards.ShardLoader(dataset, shards.StreamConfig(batch_size, workers=workers, train=False), device)
    return make_loader(dataset, ShardSampler(len(dataset)), batch_size, workers, device)


def build_loaders(train_set: Dataset, val_set: Dataset, batch_size: int, workers: int, ctx: DistContext,
                  seed: int | None = None) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders for this rank; ``batch_size`` is per process.

    With a ``seed``, each training sample's augmentation is seeded by (seed, epoch, index) (see SeededSamples).
    """
    if hasattr(train_set, "assignment"):  # WebDataset shards: streams that deal shards to ranks and workers
        from common import shards

        cfg = shards.StreamConfig(batch_size, ctx.world_size, ctx.rank, workers, seed=seed)
        return (shards.ShardLoader(train_set, cfg, ctx.device),
                shards.ShardLoader(val_set, dataclasses.replace(cfg, train=False), ctx.device))
    seeded = seed is not None
    train_sampler = GlobalBatchSampler(len(train_set), batch_size, ctx.world_size, ctx.rank, seed=seed or 0,
                                       seed_samples=seeded)
    train_set = SeededSamples(train_set) if seeded else train_set
    val_sampler = ShardSampler(len(val_set), ctx.world_size, ctx.rank)
    return (make_loader(train_set, train_sampler, batch_size, workers, ctx.device),
            make_loader(val_set, val_sampler, batch_size, workers, ctx.device, collate_fn=skip_none_collate))
