"""Shards whose only class names are in the samples' ``.json`` members (``{"label": 2, "class_name": "ring"}``), as
``webdataset.ShardWriter`` users and timm's shards write them: no classes.txt, no ``_info.json``.

    python -m pytest tests/test_shard_json.py -q
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from common.data import shards
from common.models import factory
from conftest import make_image_folder, refusal

wds = pytest.importorskip("webdataset")


def write_shards(folder: str, out: str, names: dict[str, str] | None = None) -> None:
    """``folder/{train,val}/<class>/`` as ``train-NNNN.tar`` / ``val-NNNN.tar`` written by ``webdataset.ShardWriter``,
    each sample with ``.jpg``, ``.cls`` and a ``.json`` naming its class (``names`` renames some)."""
    os.makedirs(out, exist_ok=True)
    classes = sorted(os.listdir(os.path.join(folder, "val")))
    for split in ("train", "val"):
        with wds.ShardWriter(os.path.join(out, f"{split}-%04d.tar"), maxcount=5, verbose=0) as sink:
            for label, cls in enumerate(classes):
                for file in sorted(os.listdir(os.path.join(folder, split, cls))):
                    with open(os.path.join(folder, split, cls, file), "rb") as f:
                        name = (names or {}).get(f"{split}/{cls}/{file}", cls)
                        sink.write({"__key__": f"{cls}_{file.split('.')[0]}", "jpg": f.read(), "cls": label,
                                    "json": json.dumps({"label": label, "class_name": name}).encode()})


@pytest.fixture(scope="module")
def json_shards(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("json_shards")
    folder = make_image_folder(str(base / "folder"), 1, 3, ext="jpg")
    write_shards(folder, str(base / "shards"))
    return {"folder": folder, "shards": str(base / "shards")}


def test_class_names_come_from_the_samples_json(json_shards):
    assert not os.path.exists(os.path.join(json_shards["shards"], "classes.txt"))
    assert shards.read_classes(json_shards["shards"]) == ["class0", "class1", "class2", "class3"]


def test_test_py_on_them_reports_what_it_reports_on_the_folder(json_shards, tmp_path):
    from inprocess import call_main

    torch.manual_seed(0)
    weights = str(tmp_path / "g.pth")
    torch.save(factory.create_model("ghostnet", 4, width_mult=0.25).state_dict(), weights)
    flags = ["--ckpt", weights, "-a", "ghostnet", "--width-mult", "0.25", "-j", "0", "--val-resize-size", "32",
             "--val-crop-size", "32"]
    results = {name: call_main("test.py", *flags, "--data", json_shards[name], "--output-dir", str(tmp_path / name))[0]
               for name in ("folder", "shards")}
    assert [results["shards"][k] for k in ("images", "top1", "top5", "loss")] == [
        results["folder"][k] for k in ("images", "top1", "top5", "loss")]


def test_two_names_for_one_label_are_refused_in_one_line(json_shards, tmp_path):
    write_shards(json_shards["folder"], str(tmp_path / "bad"), {"val/class1/img0.jpg": "tulip"})
    assert "give label 1 two class names ('tulip', 'class1')" in refusal(shards.read_classes, str(tmp_path / "bad"))
