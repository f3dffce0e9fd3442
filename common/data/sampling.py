"""Which sample each process reads when: the global-permutation training sampler, the exact evaluation split,
per-sample seeds, and the batch arithmetic of -b over processes, micro-batches and replicas."""
from __future__ import annotations

import math
import os
import random

import torch
from torch.utils.data import Dataset, Sampler

from common.errors import UserError


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
