"""Shards whose only class names are in the samples' ``.json`` members (``{"label": 2, "class_name": "ring"}``), as
``webdataset.ShardWriter`` users and timm's shards write them: no classes.txt, no ``_info.json``; and shards named
otherwise, given with their split patterns in timm's brace form (``wds:DIR?train=...&val=...``).

    python -m pytest tests/test_shard_json.py -q
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from common.data import formats, shards
from common.models import factory
from conftest import make_image_folder, refusal

wds = pytest.importorskip("webdataset")


def write_shards(folder: str, out: str, names: dict[str, str] | None = None,
                 stems: tuple[str, str] = ("train-%04d", "val-%04d")) -> None:
    """``folder/{train,val}/<class>/`` as ``train-NNNN.tar`` / ``val-NNNN.tar`` written by ``webdataset.ShardWriter``,
    each sample with ``.jpg``, ``.cls`` and a ``.json`` naming its class (``names`` renames some)."""
    os.makedirs(out, exist_ok=True)
    classes = sorted(os.listdir(os.path.join(folder, "val")))
    for split, stem in zip(("train", "val"), stems):
        with wds.ShardWriter(os.path.join(out, f"{stem}.tar"), maxcount=5, verbose=0) as sink:
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


def evaluate(data: dict[str, str], tmp_path) -> dict[str, dict]:
    """test.py's results on each ``--data`` value of ``data``, with the same random GhostNet."""
    from inprocess import call_main

    torch.manual_seed(0)
    weights = str(tmp_path / "g.pth")
    torch.save(factory.create_model("ghostnet", 4, width_mult=0.25).state_dict(), weights)
    flags = ["--ckpt", weights, "-a", "ghostnet", "--width-mult", "0.25", "-j", "0", "--val-resize-size", "32",
             "--val-crop-size", "32"]
    return {name: call_main("test.py", *flags, "--data", value, "--output-dir", str(tmp_path / name))[0]
            for name, value in data.items()}


def same_report(results: dict[str, dict], name: str) -> bool:
    keys = ("images", "top1", "top5", "loss")
    return [results[name][k] for k in keys] == [results["folder"][k] for k in keys]


def test_test_py_on_them_reports_what_it_reports_on_the_folder(json_shards, tmp_path):
    results = evaluate({"folder": json_shards["folder"], "shards": json_shards["shards"]}, tmp_path)
    assert same_report(results, "shards")


def test_shards_named_otherwise_are_read_through_brace_patterns(json_shards, tmp_path):
    out = str(tmp_path / "shop")
    write_shards(json_shards["folder"], out, stems=("shop-train-%03d", "shop-test-%02d"))
    assert sorted(os.listdir(out)) == ["shop-test-00.tar", "shop-test-01.tar", "shop-test-02.tar",
                                       "shop-train-000.tar"]
    assert shards.shard_files(out, "val") == []  # 'test' is no validation split name it knows
    spec = f"wds:{out}?train=shop-train-{{000..000}}.tar&val=shop-test-{{00..02}}.tar"
    source = formats.resolve_source(spec)
    assert source.format == "shards" and str(source) == spec  # recorded in a checkpoint as given
    assert [os.path.basename(f) for f in shards.shard_files(source.root, "val")] == [
        "shop-test-00.tar", "shop-test-01.tar", "shop-test-02.tar"]
    assert same_report(evaluate({"folder": json_shards["folder"], "shop": spec}, tmp_path), "shop")
    assert "shop-test-03.tar" in refusal(formats.resolve_source, spec.replace("{00..02}", "{00..03}"))
    assert "train=PATTERN" in refusal(formats.resolve_source, f"wds:{out}?test=shop-test-00.tar")


def test_two_names_for_one_label_are_refused_in_one_line(json_shards, tmp_path):
    write_shards(json_shards["folder"], str(tmp_path / "bad"), {"val/class1/img0.jpg": "tulip"})
    assert "give label 1 two class names ('tulip', 'class1')" in refusal(shards.read_classes, str(tmp_path / "bad"))
