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
