"""Datasets and loaders of a training run, whatever the format: the transforms of the flags, the reader of the
resolved source, and loaders whose training batches are cut from one global permutation (so that N processes see,
step by step, the same images as one process with the same global batch) and whose evaluation split counts every
image exactly once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from common.data import transforms
from common.data.formats import SYNTHETIC, DataSource
from common.data.sampling import GlobalBatchSampler, SeededSamples, ShardSampler
from common.data.synthetic import FakeDataWithPaths
from common.data.unreadable import BadImageLog, skip_none_collate
from common.parallel.distributed import DistContext


@dataclass(frozen=True)
class DataConfig:
    """What to load: a resolved ``--data`` (or synthetic data), the input sizes, the training augmentation and the
    pipeline.

    ``fast``: uint8 images through the DataLoader, normalised per batch by ``transforms.to_model_input``; otherwise
    the classic PIL transforms with normalised float images. ``augment``'s crop size wins over ``train_crop_size``.
    """

    source: DataSource
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
    if cfg.fast and cfg.source.format == SYNTHETIC:
        return v2.Compose([v2.PILToTensor(), train_tf]), v2.Compose([v2.PILToTensor(), val_tf])
    return train_tf, val_tf


def build_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset, list[str]]:
    """Training set, validation set and class names (shared by both splits), read by the source's reader."""
    train_tf, val_tf = build_transforms(cfg)
    if cfg.source.format == SYNTHETIC:
        size = max(cfg.train_augment().crop_size, cfg.val_resize_size)
        train = FakeDataWithPaths(cfg.dummy_train_size, size, cfg.dummy_classes, train_tf)
        val = FakeDataWithPaths(cfg.dummy_val_size, size, cfg.dummy_classes, val_tf, random_offset=cfg.dummy_train_size)
        return train, val, train.classes
    return cfg.source.reader.datasets(cfg.source.root, cfg.fast, train_tf, val_tf, cfg.bad_log)


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, workers: int, device: torch.device,
                collate_fn=None) -> DataLoader:
    """A DataLoader with pinned memory on CUDA and workers that live across epochs."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0, drop_last=False,
                      collate_fn=collate_fn)


def ordered_loader(source: DataSource, dataset: Dataset, batch_size: int, workers: int, device: torch.device):
    """A loader over every sample of ``dataset`` (read from ``source``) once, in its order, in one process."""
    stream = None if source.format == SYNTHETIC else source.reader.ordered_loader
    if stream is not None:
        return stream(dataset, batch_size, workers, device)
    return make_loader(dataset, ShardSampler(len(dataset)), batch_size, workers, device)


def build_loaders(source: DataSource, train_set: Dataset, val_set: Dataset, batch_size: int, workers: int,
                  ctx: DistContext, seed: int | None = None) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders for this rank; ``batch_size`` is per process.

    A streaming format (shards) deals its files to ranks and workers itself; for the others, with a ``seed``, each
    training sample's augmentation is seeded by (seed, epoch, index) (see SeededSamples).
    """
    stream = None if source.format == SYNTHETIC else source.reader.loaders
    if stream is not None:
        return stream(train_set, val_set, batch_size, workers, ctx, seed)
    seeded = seed is not None
    train_sampler = GlobalBatchSampler(len(train_set), batch_size, ctx.world_size, ctx.rank, seed=seed or 0,
                                       seed_samples=seeded)
    train_set = SeededSamples(train_set) if seeded else train_set
    val_sampler = ShardSampler(len(val_set), ctx.world_size, ctx.rank)
    return (make_loader(train_set, train_sampler, batch_size, workers, ctx.device),
            make_loader(val_set, val_sampler, batch_size, workers, ctx.device, collate_fn=skip_none_collate))
