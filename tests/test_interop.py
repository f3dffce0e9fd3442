"""Datasets as others publish them: shards written by the webdataset package in timm's Hub layout
(``imagenet1k-{train,validation}-NNNN.tar`` with ``_info.json``, no classes.txt) and the webdataset converter's
naming (``imagenet-{train,val}-NNNNNN.tar``)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from common.data import formats, published, shards
from common.models import factory

wds = pytest.importorskip("webdataset")


def write_published(folder: str, out: str, names: dict[str, str], per_shard: int = 5) -> dict[str, dict]:
    """The images of ``folder/{train,val}/<class>/`` as shards written by ``webdataset.ShardWriter`` under the split
    names ``names`` (e.g. ``{"train": "imagenet1k-train", "val": "imagenet1k-validation"}``); upper-case image keys
    (``.JPG``) as some writers leave them. Returns ``_info.json``'s splits (file names and shard lengths)."""
    os.makedirs(out, exist_ok=True)
    classes = sorted(os.listdir(os.path.join(folder, "val")))
    splits = {}
    for split, stem in names.items():
        items = [(c, os.path.join(folder, split, c, f)) for c in classes
                 for f in sorted(os.listdir(os.path.join(folder, split, c)))]
        with wds.ShardWriter(os.path.join(out, f"{stem}-%04d.tar"), maxcount=per_shard, verbose=0) as sink:
            for c, path in items:
                with open(path, "rb") as f:
                    key = f"{c}__{os.path.splitext(os.path.basename(path))[0]}"
                    sink.write({"__key__": key, "JPG": f.read(), "cls": classes.index(c)})
        files = sorted(n for n in os.listdir(out) if n.startswith(stem + "-"))
        lengths = [min(per_shard, len(items) - i * per_shard) for i in range(len(files))]
        splits[split] = {"name": split, "filenames": files, "shard_lengths": lengths, "num_samples": len(items)}
    return splits


@pytest.fixture(scope="module")
def published_sets(tmp_path_factory) -> dict:
    from conftest import make_image_folder

    base = tmp_path_factory.mktemp("published")
    folder = make_image_folder(str(base / "folder"), 1, 3, ext="jpg")
    hub = str(base / "hub")
    splits = write_published(folder, hub, {"train": "imagenet1k-train", "val": "imagenet1k-validation"})
    with open(os.path.join(hub, "_info.json"), "w") as f:
        json.dump({"name": "mini", "classes": sorted(os.listdir(os.path.join(folder, "val"))), "splits": splits}, f)
    converter = str(base / "converter")
    write_published(folder, converter, {"train": "imagenet-train", "val": "imagenet-val"})
    with open(os.path.join(converter, "classes.txt"), "w") as f:
        f.write("".join(c + "\n" for c in sorted(os.listdir(os.path.join(folder, "val")))))
    torch.manual_seed(0)
    weights = str(base / "ghostnet.pth")
    torch.save(factory.create_model("ghostnet", 4, width_mult=0.25).state_dict(), weights)
    flags = ["--ckpt", weights, "-a", "ghostnet", "--width-mult", "0.25", "-j", "0", "--val-resize-size", "32",
             "--val-crop-size", "32"]
    return {"folder": folder, "hub": hub, "converter": converter, "flags": flags}


def test_timm_hub_and_converter_shards_are_recognised_with_their_splits(published_sets):
    for layout, val_stem in (("hub", "imagenet1k-validation-"), ("converter", "imagenet-val-")):
        source = formats.resolve_source(published_sets[layout])
        assert source.format == "shards"
        formats.check_source(source)
        val = shards.shard_files(source.root, "val")
        assert len(val) == 3 and all(os.path.basename(f).startswith(val_stem) for f in val)
        assert len(shards.shard_files(source.root, "train")) == 1


def test_shard_lengths_come_from_info_json_without_a_header_scan(published_sets, monkeypatch):
    root = published_sets["hub"]
    files = shards.shard_files(root, "val")
    monkeypatch.setattr(shards, "count_shard", lambda path, classes: pytest.fail(f"{path} was scanned"))
    assert shards.shard_counts(root, files, 4) == [5, 5, 2]


def test_a_1000_class_info_json_without_names_gives_imagenets_class_list(tmp_path):
    (tmp_path / "_info.json").write_text(json.dumps({"name": "imagenet-1k", "splits": {}}))
    names = shards.read_classes(str(tmp_path))
    assert len(names) == 1000 and names[:2] == ["tench", "goldfish"]
    assert published.info_classes({"name": "flowers"}) is None


@pytest.mark.parametrize("layout", ["hub", "converter"])
def test_test_py_on_published_shards_reports_what_it_reports_on_the_same_images_as_a_folder(published_sets,
                                                                                          layout, tmp_path):
    from inprocess import call_main

    results = {}
    for fmt in ("folder", layout):
        results[fmt], _ = call_main("test.py", *published_sets["flags"], "--data", published_sets[fmt],
                                    "--output-dir", str(tmp_path / fmt))
    folder, shard = results["folder"], results[layout]
    assert shard["images"] == 12
    assert (shard["images"], shard["top1"], shard["top5"], shard["loss"]) == (
        folder["images"], folder["top1"], folder["top5"], folder["loss"])


def peer_checkpoints(weights: str, out: str) -> dict[str, str]:
    """The same weights as the PyTorch ImageNet example's main.py saves them (the DDP wrapper's ``module.`` keys,
    ``best_acc1`` a tensor), as torchvision's references save them (``model``, ``model_ema``, ``args`` an
    argparse.Namespace) and as timm's train.py CheckpointSaver does (``state_dict``, ``args``, ``metric``, and
    ``arch`` the model's class name, which need not be an architecture name of ours)."""

    import argparse

    state = torch.load(weights, weights_only=True)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 30)
    kinds = {
        "pytorch_example": {"epoch": 1, "arch": "ghostnet", "state_dict": {f"module.{k}": v for k, v in state.items()},
                            "best_acc1": torch.tensor(25.0), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict()},
        "torchvision": {"model": state, "model_ema": {"n_averaged": torch.tensor(3)},
                        "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(), "epoch": 1,
                        "args": argparse.Namespace(model="ghostnet", lr=0.5, batch_size=32)},
        "timm": {"epoch": 1, "arch": "ghostnetv1", "state_dict": state, "optimizer": optimizer.state_dict(),
                 "version": 2, "args": argparse.Namespace(model="ghostnet", lr=0.5), "metric": 25.0},
    }
    paths = {}
    for kind, ckpt in kinds.items():
        paths[kind] = os.path.join(out, f"{kind}.pth")
        torch.save(ckpt, paths[kind])
    return paths


def test_peer_checkpoints_give_the_top1_of_the_same_weights(published_sets, tmp_path):
    from inprocess import call_main

    flags = published_sets["flags"]
    data = ["--data", published_sets["folder"]]
    reference, _ = call_main("test.py", *flags, *data, "--output-dir", str(tmp_path / "ref"))
    for kind, path in peer_checkpoints(flags[1], str(tmp_path)).items():
        peer_flags = [path if f == flags[1] else f for f in flags]
        result, _ = call_main("test.py", *peer_flags, *data, "--output-dir", str(tmp_path / kind))
        assert (kind, result["images"], result["top1"], result["loss"]) == (
            kind, reference["images"], reference["top1"], reference["loss"])


def test_a_pickled_object_other_than_argparse_namespace_is_still_refused(tmp_path):
    from collections import OrderedDict
    from types import SimpleNamespace

    from common.models import checkpoint
    from conftest import refusal

    path = str(tmp_path / "other.pth")
    torch.save({"state_dict": OrderedDict(), "args": SimpleNamespace(lr=0.1)}, path)
    assert "--unsafe-load" in refusal(checkpoint.load_file, path)


def test_a_safetensors_file_gives_the_top1_of_the_same_weights(published_sets, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    from inprocess import call_main

    flags, data = published_sets["flags"], ["--data", published_sets["folder"]]
    path = str(tmp_path / "model.safetensors")
    safetensors_torch.save_file(torch.load(flags[1], weights_only=True), path)
    reference, _ = call_main("test.py", *flags, *data, "--output-dir", str(tmp_path / "ref"))
    result, _ = call_main("test.py", "--ckpt", path, *flags[2:], *data, "--output-dir", str(tmp_path / "st"))
    assert (result["images"], result["top1"], result["loss"]) == (
        reference["images"], reference["top1"], reference["loss"])


def test_a_timm_hub_folder_gives_the_top1_of_the_same_weights(published_sets, tmp_path):
    from inprocess import call_main

    flags, data = published_sets["flags"], ["--data", published_sets["folder"]]
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text(json.dumps({"architecture": "ghostnet", "num_classes": 4}))
    torch.save(torch.load(flags[1], weights_only=True), hub / "pytorch_model.bin")
    reference, _ = call_main("test.py", *flags, *data, "--output-dir", str(tmp_path / "ref"))
    result, _ = call_main("test.py", "--ckpt", str(hub), *flags[2:], *data, "--output-dir", str(tmp_path / "hubrun"))
    assert (result["images"], result["top1"], result["loss"]) == (
        reference["images"], reference["top1"], reference["loss"])
