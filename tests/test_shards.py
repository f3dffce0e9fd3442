"""WebDataset tar shards as --data (common.shards): what each rank and loader worker reads, per epoch."""
from __future__ import annotations

import io
import os
import tarfile
from collections import Counter

import pytest
import torch

from conftest import refusal
from common import data, shards
from common.images import BadImage


def write_shards(root: str, split: str, sizes: list[int], classes: int = 3, labels: dict | None = None) -> list[str]:
    """Shards ``split-00000i.tar`` with ``sizes[i]`` samples each, keys ``s<i>_<j>``, fake image bytes."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("".join(f"c{k}\n" for k in range(classes)))
    keys = []
    for i, n in enumerate(sizes):
        with tarfile.open(os.path.join(root, f"{split}-{i:06d}.tar"), "w") as tar:
            for j in range(n):
                key = f"s{i}_{j}"
                members = {"jpg": key.encode(), "cls": str((labels or {}).get(key, j % classes)).encode()}
                for ext, payload in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                keys.append(f"{split}-{i:06d}.tar:{key}")
    return keys


def fake_decode(payload: bytes, name: str) -> torch.Tensor:
    if payload.startswith(b"bad"):
        raise BadImage(name, "corrupt JPEG")
    return torch.zeros(1)


def keys_of(root: str, split: str, cfg: shards.StreamConfig, epoch: int = 0, start: int = 0) -> list[list[str]]:
    stream = shards.ShardStream(root, split, shards.read_classes(root), fake_decode, None, data.BadImageLog("skip"))
    loader = shards.ShardLoader(stream, cfg, torch.device("cpu"))
    loader.sampler.set_epoch(epoch)  # as the engine does
    loader.sampler.set_start(start)
    batches = [list(keys) for _images, _targets, keys in loader]
    assert len(batches) == len(loader) - start
    return batches


def test_every_training_sample_is_seen_once_per_epoch_across_two_ranks_of_two_workers(tmp_path):
    root = str(tmp_path)
    keys = write_shards(root, "train", [4] * 8)
    for epoch in (0, 1):
        seen, steps = [], []
        for rank in (0, 1):
            batches = keys_of(root, "train", shards.StreamConfig(2, 2, rank, workers=2, buffer=3, seed=5), epoch)
            steps.append(len(batches))
            seen += [k for b in batches for k in b]
        assert steps == [8, 8] and sorted(seen) == sorted(keys)


def test_uneven_shards_give_every_rank_the_same_number_of_steps_in_every_epoch(tmp_path):
    root = str(tmp_path)
    write_shards(root, "train", [7, 1, 5, 2, 9])  # 24 samples: 6 steps of 2 per rank
    for epoch in (0, 1, 2):
        seen = []
        for rank in (0, 1):
            batches = keys_of(root, "train", shards.StreamConfig(2, 2, rank, workers=2, seed=0), epoch)
            assert len(batches) == 6
            seen += [k for b in batches for k in b]
        assert len(seen) == 24 and max(Counter(seen).values()) <= 2


@pytest.mark.parametrize("world_size", [1, 2])
def test_validation_on_shards_counts_each_sample_once(tmp_path, world_size):
    root = str(tmp_path)
    keys = write_shards(root, "val", [5, 1, 3])
    write_shards(root, "train", [1])
    seen = []
    for rank in range(world_size):
        batches = keys_of(root, "val", shards.StreamConfig(2, world_size, rank, workers=2, train=False))
        seen += [k for b in batches for k in b]
    assert sorted(seen) == sorted(keys)


def test_a_resumed_epoch_delivers_the_batches_an_uninterrupted_one_would(tmp_path):
    root = str(tmp_path)
    write_shards(root, "train", [6, 6, 4, 4])
    cfg = shards.StreamConfig(2, 1, 0, workers=2, buffer=4, seed=3)
    whole = keys_of(root, "train", cfg, epoch=1)
    assert keys_of(root, "train", cfg, epoch=1, start=3) == whole[3:]
    uneven = str(tmp_path / "uneven")  # one worker runs out long before the other
    write_shards(uneven, "train", [10, 2, 2, 2])
    whole = keys_of(uneven, "train", cfg)
    for start in (1, 2, 5, len(whole) - 1):
        assert keys_of(uneven, "train", cfg, start=start) == whole[start:]


def test_damaged_samples_and_truncated_shards_are_skipped_and_named(tmp_path):
    root = str(tmp_path)
    write_shards(root, "train", [4, 4])
    path = os.path.join(root, "train-000001.tar")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    stream = shards.ShardStream(root, "train", shards.read_classes(root), fake_decode, None, data.BadImageLog("skip"))
    assert stream.counts[1] < 4  # counted as far as it is readable
    log = data.BadImageLog("skip")
    stream = shards.ShardStream(root, "train", ["a", "b", "c"], fake_decode, None, log)
    loader = shards.ShardLoader(stream, shards.StreamConfig(1, train=False), torch.device("cpu"))
    assert sum(len(keys) for *_, keys in loader) == sum(stream.counts)
    assert any("train-000001.tar" in name and "truncated" in reason for name, reason in log.drain())
    write_shards(root, "val", [2])
    assert shards.check(root, fake_decode) == 1  # --check-data names the truncated shard


def test_bad_shard_folders_are_refused_in_one_line(tmp_path):
    nocls = tmp_path / "nocls"
    write_shards(str(nocls), "train", [2])
    with tarfile.open(nocls / "val-000000.tar", "w") as tar:
        info = tarfile.TarInfo("x.jpg")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    assert "has no .cls member" in refusal(lambda: data.build_datasets(data.DataConfig(str(nocls))))
    labels = tmp_path / "labels"
    write_shards(str(labels), "train", [2], classes=2, labels={"s0_1": 7})
    write_shards(str(labels), "val", [1], classes=2)
    assert "disagrees with the labels" in refusal(lambda: data.build_datasets(data.DataConfig(str(labels))))
    empty = tmp_path / "empty"
    write_shards(str(empty), "train", [0])
    write_shards(str(empty), "val", [1])
    assert "holds no readable sample" in refusal(lambda: data.build_datasets(data.DataConfig(str(empty))))
    nolist = tmp_path / "nolist"
    write_shards(str(nolist), "train", [1])
    os.remove(nolist / "classes.txt")
    assert "no classes.txt" in refusal(data.check_source, str(nolist))
