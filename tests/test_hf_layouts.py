"""Parquet and Arrow written by the ``datasets`` package itself, in the layouts people have: ``to_parquet`` to one
``train.parquet`` / ``validation.parquet`` (image paths, as a dataset built from files stores them), ``push_to_hub``'s
``data/train-00000-of-00001.parquet`` (image bytes embedded), and ``save_to_disk``. Each reads as the same images,
labels and class names as the folder they came from, and test.py gives the folder's top-1 and loss.

    python -m pytest tests/test_hf_layouts.py -q
"""
from __future__ import annotations

import glob
import os

import pytest
import torch

from common.data import formats, loaders
from conftest import make_image_folder

datasets = pytest.importorskip("datasets")
pytest.importorskip("pyarrow")

SPLITS = {"train": "train", "validation": "val"}


def folder_split(folder: str, split: str) -> list[tuple[str, int]]:
    """(path, label) of the folder's ``split`` in ImageFolder order."""
    classes = sorted(os.listdir(os.path.join(folder, "val")))
    return [(p, classes.index(os.path.basename(os.path.dirname(p))))
            for p in sorted(glob.glob(os.path.join(folder, split, "*", "*")))]


def dataset_dict(folder: str, embed: bool):
    """The folder as a DatasetDict with an Image and a ClassLabel feature; ``embed``: the image bytes in the rows
    (as push_to_hub uploads them), else their paths (as a dataset built from files holds them)."""
    classes = sorted(os.listdir(os.path.join(folder, "val")))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    out = {}
    for hub, ours in SPLITS.items():
        rows = folder_split(folder, ours)
        images = [{"bytes": open(p, "rb").read(), "path": os.path.basename(p)} if embed else p for p, _ in rows]
        out[hub] = datasets.Dataset.from_dict({"image": images, "label": [t for _, t in rows]}, features=features)
    return datasets.DatasetDict(out)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("hf_layouts")
    folder = make_image_folder(str(base / "folder"), 2, 3, ext="jpg")
    paths, embedded = dataset_dict(folder, embed=False), dataset_dict(folder, embed=True)
    for split in SPLITS:
        paths[split].to_parquet(str(base / "to_parquet" / f"{split}.parquet"))
        embedded[split].to_parquet(str(base / "hub" / "data" / f"{split}-00000-of-00001.parquet"))
    embedded.save_to_disk(str(base / "save_to_disk"))
    return {"folder": folder, **{name: str(base / name) for name in ("to_parquet", "hub", "save_to_disk")}}


@pytest.mark.parametrize("layout,fmt", [("to_parquet", "parquet"), ("hub", "parquet"), ("save_to_disk", "arrow")])
def test_each_layout_reads_as_the_folders_images_labels_and_class_names(layouts, layout, fmt):
    source = formats.resolve_source(layouts[layout])
    formats.check_source(source)
    train, val, classes = loaders.build_datasets(loaders.DataConfig(source, fast=True))
    assert source.format == fmt and classes == ["class0", "class1", "class2", "class3"]
    for dataset, split in ((train, "train"), (val, "val")):
        dataset = getattr(dataset, "dataset", dataset)
        rows = folder_split(layouts["folder"], split)
        assert [t for _, t in dataset.samples] == [t for _, t in rows]
        assert [dataset.encoded(i) for i in range(len(rows))] == [open(p, "rb").read() for p, _ in rows]


def test_test_py_on_the_hub_layout_reports_what_it_reports_on_the_folder(layouts, tmp_path):
    from common.models import factory
    from inprocess import call_main

    torch.manual_seed(0)
    weights = str(tmp_path / "g.pth")
    torch.save(factory.create_model("ghostnet", 4, width_mult=0.25).state_dict(), weights)
    flags = ["--ckpt", weights, "-a", "ghostnet", "--width-mult", "0.25", "-j", "0", "--val-resize-size", "32",
             "--val-crop-size", "32"]
    results = {name: call_main("test.py", *flags, "--data", layouts[name], "--output-dir", str(tmp_path / name))[0]
               for name in ("folder", "hub")}
    assert results["hub"]["images"] == 12
    assert [results["hub"][k] for k in ("images", "top1", "top5", "loss")] == [
        results["folder"][k] for k in ("images", "top1", "top5", "loss")]
