"""WebDataset tar shards as --data (common.shards): what each rank and loader worker reads, per epoch."""
from __future__ import annotations

import io
import os
import tarfile
from collections import Counter

import pytest
import torch

from common.data import convert, formats, loaders, shards, unreadable
from common.data.images import BadImage
from common.models import factory
from conftest import refusal


def datasets_at(data: str):
    """The training and validation sets that a training run reads from ``data``, with default settings."""
    return loaders.build_datasets(loaders.DataConfig(formats.resolve_source(data)))


def usable(data: str) -> None:
    """What a training script does with ``--data`` before any process starts: resolve it, refuse what no reader
    can use."""
    formats.check_source(formats.resolve_source(data))


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
    stream = shards.ShardStream(root, split, shards.read_classes(root), fake_decode, None,
                                unreadable.BadImageLog("skip"))
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


@pytest.mark.slow
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
    stream = shards.ShardStream(root, "train", shards.read_classes(root), fake_decode, None,
                                unreadable.BadImageLog("skip"))
    assert stream.counts[1] < 4  # counted as far as it is readable
    log = unreadable.BadImageLog("skip")
    stream = shards.ShardStream(root, "train", ["a", "b", "c"], fake_decode, None, log)
    loader = shards.ShardLoader(stream, shards.StreamConfig(1, train=False), torch.device("cpu"))
    assert sum(len(keys) for *_, keys in loader) == sum(stream.counts)
    assert any("train-000001.tar" in name and "truncated" in reason for name, reason in log.drain())
    write_shards(root, "val", [2])
    assert shards.scan(root, decode=fake_decode) == 1  # --check-data names the truncated shard


def test_bad_shard_folders_are_refused_in_one_line(tmp_path):
    nocls = tmp_path / "nocls"
    write_shards(str(nocls), "train", [2])
    with tarfile.open(nocls / "val-000000.tar", "w") as tar:
        info = tarfile.TarInfo("x.jpg")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    assert "has no .cls member" in refusal(datasets_at, str(nocls))
    labels = tmp_path / "labels"
    write_shards(str(labels), "train", [2], classes=2, labels={"s0_1": 7})
    write_shards(str(labels), "val", [1], classes=2)
    assert "disagrees with the labels" in refusal(datasets_at, str(labels))
    text = tmp_path / "text"
    write_shards(str(text), "train", [2], classes=2, labels={"s0_1": "cat"})
    write_shards(str(text), "val", [1], classes=2)
    assert "not an integer label" in refusal(datasets_at, str(text))
    empty = tmp_path / "empty"
    write_shards(str(empty), "train", [0])
    write_shards(str(empty), "val", [1])
    assert "holds no readable sample" in refusal(datasets_at, str(empty))
    nolist = tmp_path / "nolist"
    write_shards(str(nolist), "train", [1])
    os.remove(nolist / "classes.txt")
    assert "no classes.txt" in refusal(usable, str(nolist))


@pytest.fixture(scope="module")
def val_as_shards(tmp_path_factory) -> dict:
    """The same 12 validation JPEGs as a folder and as several shards (common.data.convert), and a random 4-class
    GhostNet state_dict: equality of the two readings is what is tested, not accuracy."""
    from conftest import make_image_folder

    base = tmp_path_factory.mktemp("val_shards")
    folder = make_image_folder(str(base / "folder"), 1, 3, ext="jpg")
    out = str(base / "shards")
    convert.main(convert.get_args_parser().parse_args([folder, out, "--to", "shards", "--max-shard-mb", "0.004"]))
    torch.manual_seed(0)
    weights = str(base / "ghostnet.pth")
    torch.save(factory.create_model("ghostnet", 4, width_mult=0.25).state_dict(), weights)
    flags = ["--ckpt", weights, "-a", "ghostnet", "--width-mult", "0.25", "-j", "0", "--val-resize-size", "32",
             "--val-crop-size", "32"]
    return {"folder": folder, "shards": out, "flags": flags}


def csv_rows(path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def by_key(rows: list[dict]) -> dict[str, dict]:
    """predictions.csv rows by sample key: ``class0/img1.jpg`` of the folder is ``val-00000i.tar:class0__img1``."""
    keyed = {}
    for row in rows:
        path = row.pop("path")
        below_val = os.path.relpath(path, os.path.dirname(os.path.dirname(path)))
        key = path.split(":", 1)[1] if ".tar:" in path else os.path.splitext(below_val)[0].replace(os.sep, "__")
        keyed[key] = row
    return keyed


def test_test_py_on_shards_reports_what_it_reports_on_the_same_images_as_a_folder(val_as_shards, tmp_path):
    from inprocess import call_main

    assert len(shards.shard_files(val_as_shards["shards"], "val")) > 1
    results, printed = {}, ""
    for fmt in ("folder", "shards"):
        out = tmp_path / fmt
        results[fmt], printed = call_main("test.py", *val_as_shards["flags"], "--data", val_as_shards[fmt],
                                          "--output-dir", str(out))
    assert "(WebDataset tar shards)" in printed
    folder, shard = results["folder"], results["shards"]
    assert (shard["images"], shard["top1"], shard["top5"], shard["loss"]) == (
        folder["images"], folder["top1"], folder["top5"], folder["loss"]) and shard["images"] == 12
    assert csv_rows(tmp_path / "shards" / "per_class.csv") == csv_rows(tmp_path / "folder" / "per_class.csv")
    predictions = {fmt: by_key(csv_rows(tmp_path / fmt / "predictions.csv")) for fmt in ("folder", "shards")}
    assert len(predictions["shards"]) == 12 and predictions["shards"] == predictions["folder"]


@pytest.mark.slow
def test_the_sorter_writes_every_shard_image_once_with_the_folder_counts(val_as_shards, tmp_path):
    import glob
    import hashlib

    from inprocess import call_main

    got = {fmt: call_main("classify_test_data.py", *val_as_shards["flags"], "--data", val_as_shards[fmt],
                          "--out", str(tmp_path / fmt))[0] for fmt in ("folder", "shards")}
    assert got["shards"]["placed"] == 12 and got["shards"]["summary"] == got["folder"]["summary"]
    written = glob.glob(str(tmp_path / "shards" / "*" / "*" / "val-*.jpg"))
    assert {os.path.basename(os.path.dirname(p)) for p in written} <= {"right", "wrong"}

    def sha1(path: str) -> str:
        return hashlib.sha1(open(path, "rb").read()).hexdigest()

    sources = glob.glob(os.path.join(val_as_shards["folder"], "val", "*", "*.jpg"))
    assert sorted(map(sha1, written)) == sorted(map(sha1, sources))


def test_a_truncated_validation_shard_is_named_in_one_line_and_the_rest_evaluated(val_as_shards, tmp_path):
    import shutil

    from inprocess import call_main

    root = str(tmp_path / "cut")
    shutil.copytree(val_as_shards["shards"], root)
    os.remove(os.path.join(root, "manifest.json"))  # the checksums no longer hold
    last = shards.shard_files(root, "val")[-1]
    with tarfile.open(last) as tar:
        image = [m for m in tar.getmembers() if m.name.endswith(".jpg")][-1]
    with open(last, "r+b") as f:
        f.truncate(image.offset_data + 100)  # inside its last image
    result, printed = call_main("test.py", *val_as_shards["flags"], "--data", root, "--output-dir", str(tmp_path / "o"))
    named = [line for line in printed.splitlines() if os.path.basename(last) in line]
    assert len(named) == 1 and "truncated" in named[0]
    whole = len(shards.TarImages(root, "val", shards.read_classes(root), fake_decode))
    assert 0 < whole < 12 and result["images"] == whole
    with pytest.raises(SystemExit) as exit_:
        call_main("test.py", "--data", root, "--check-data", *val_as_shards["flags"])
    assert exit_.value.code == 1
