"""test.py's evaluation options: --tta, several resolutions in one pass, ImageNet-ReaL labels, --class-map.

    python -m pytest tests/test_eval_options.py -q
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from common.models import factory, loading
from conftest import make_image_folder, refusal
from inprocess import call_main, load_script

CLASSES = ["class0", "class1", "class2", "class3"]
FAST = ["-j", "0", "--no-amp", "-b", "8"]


def save_ckpt(path: str, always: int | None = None) -> str:
    """A random GhostNet (width 0.5) checkpoint of the four tiny classes; ``always``: a head that predicts that
    class whatever the image (zero weights, one-hot bias)."""
    torch.manual_seed(0)
    state = factory.create_model("ghostnet", len(CLASSES), width_mult=0.5).state_dict()
    if always is not None:
        state["classifier.weight"].zero_()
        state["classifier.bias"] = torch.nn.functional.one_hot(torch.tensor(always), len(CLASSES)).float() * 5
    torch.save({"arch": "ghostnet", "state_dict": state, "classes": CLASSES, "epoch": 1, "best_acc1": 0.0,
                "args": {"width_mult": 0.5, "val_resize_size": 40, "val_crop_size": 32}}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return save_ckpt(str(tmp_path_factory.mktemp("ckpt") / "random.pth.tar"))


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> str:
    return make_image_folder(str(tmp_path_factory.mktemp("small")), train_per_class=0, val_per_class=3)


def top_probabilities(image: dict) -> list[float]:
    return [t["probability"] for t in image["top"]]


def test_flip_tta_of_a_mirror_symmetric_image_equals_no_tta(ckpt, tmp_path):
    rng = np.random.default_rng(0)
    half = rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)
    Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1)).save(tmp_path / "symmetric.png")  # 40 x 48
    Image.fromarray(np.concatenate([half, half], axis=1)).save(tmp_path / "lopsided.png")
    images = [str(tmp_path / "symmetric.png"), str(tmp_path / "lopsided.png")]
    plain, _ = call_main("test.py", "--ckpt", ckpt, *images, *FAST, "--output-dir", str(tmp_path / "p"))
    flipped, printed = call_main("test.py", "--ckpt", ckpt, *images, "--tta", "flip", *FAST, "--output-dir",
                                 str(tmp_path / "p"))
    assert "test-time augmentation: flip" in printed
    assert top_probabilities(flipped[0]) == pytest.approx(top_probabilities(plain[0]), abs=1e-6)
    assert top_probabilities(flipped[1]) != pytest.approx(top_probabilities(plain[1]), abs=1e-6)  # flip does act


def test_five_crop_is_the_mean_of_the_corner_and_centre_crops_logits(ckpt, tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    result, _ = call_main("test.py", "--ckpt", ckpt, str(tmp_path / "a.png"), "--tta", "five-crop", "--no-fold-bn",
                          "--no-channels-last", "--no-uint8-pipeline", *FAST, "--output-dir", str(tmp_path / "p"))
    from torchvision import transforms

    model = loading.load_model(loading.ModelSource(ckpt)).model
    resized = transforms.Resize(40)(Image.open(tmp_path / "a.png").convert("RGB"))
    crops = torch.stack([transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(
        transforms.functional.to_tensor(c)) for c in transforms.FiveCrop(32)(resized)])
    with torch.no_grad():
        expected = model(crops).mean(0).softmax(0).sort(descending=True).values
    assert top_probabilities(result[0]) == pytest.approx(expected.tolist(), abs=1e-5)


@pytest.mark.slow
def test_each_resolution_of_one_pass_equals_its_own_run(ckpt, small_data, tmp_path):
    result, printed = call_main("test.py", "--ckpt", ckpt, "--data", small_data, "--val-crop-size", "24", "32",
                                "--crop-pct", "0.8", "--output-dir", str(tmp_path / "multi"), *FAST)
    assert " * 30/24 (resize/crop): Acc@1" in printed and " * 40/32 (resize/crop): Acc@1" in printed
    with open(tmp_path / "multi" / "resolutions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["resize"], r["crop"]) for r in rows] == [("30", "24"), ("40", "32")]
    for row, (resize, crop) in zip(result["resolutions"], [("30", "24"), ("40", "32")]):
        single, _ = call_main("test.py", "--ckpt", ckpt, "--data", small_data, "--val-resize-size", resize,
                              "--val-crop-size", crop, "--output-dir", str(tmp_path / crop), *FAST)
        assert (row["top1"], row["top5"], row["images"]) == (pytest.approx(single["top1"]), single["top5"], 12)
        assert row["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert result["top1"] == pytest.approx(result["resolutions"][0]["top1"])  # the usual files: the first size


def parse(*argv: str):
    script = load_script("test.py")
    args = script.get_args_parser().parse_args(list(argv))
    script.sort_inputs(args)
    script.check_args(args)


@pytest.mark.parametrize("argv,expected", [
    (["--val-crop-size", "224", "256", "--val-resize-size", "256"], "one --val-resize-size 256 for 2 crop sizes"),
    (["--val-crop-size", "224", "256", "--val-resize-size", "256", "288", "320"], "lists 3 sizes for 2"),
    (["--val-crop-size", "224", "--crop-pct", "0.9", "--val-resize-size", "256"], "--crop-pct and --val-resize-size"),
])
def test_an_ambiguous_resolution_list_is_one_line(argv, expected, tmp_path):
    assert expected in refusal(parse, "--ckpt", "x.pth", "--data", str(tmp_path), *argv)


def val_folder(root, folder_of) -> str:
    """10 images ILSVRC2012_val_00000001..10, image n in folder ``folder_of[n - 1]``."""
    rng = np.random.default_rng(2)
    for n, folder in enumerate(folder_of, 1):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        pixels = rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, folder, f"ILSVRC2012_val_{n:08d}.png"))
    return str(root)


FOLDERS = [0, 2, 1, 2, 3, 0, 2, 1, 3, 3]  # the class of val images 1..10
REAL = [[2], [0], [], [1, 2], [3], [], [2, 3], [0, 1], [2], [1]]  # hand-made ReaL labels: 8 labelled, 4 with class 2


@pytest.fixture(scope="module")
def always_two(tmp_path_factory) -> str:
    return save_ckpt(str(tmp_path_factory.mktemp("always") / "always2.pth.tar"), always=2)


@pytest.mark.slow
def test_real_top1_counts_only_labelled_images_and_any_of_their_labels(always_two, tmp_path):
    folder = val_folder(tmp_path / "val", [CLASSES[c] for c in FOLDERS])
    (tmp_path / "real.json").write_text(json.dumps(REAL))
    result, printed = call_main("test.py", "--ckpt", always_two, "--data", folder, "--real-labels",
                                str(tmp_path / "real.json"), "--output-dir", str(tmp_path / "out"), *FAST)
    assert result["top1"] == pytest.approx(30.0)  # 3 of the 10 images are of class2, the model's only answer
    assert (result["real_top1"], result["real_images"]) == (pytest.approx(50.0), 8)
    assert " * ReaL Acc@1 50.000 on 8 images with a ReaL label (Acc@1 30.000 on all 10)" in printed


@pytest.mark.slow
def test_class_map_index_reads_folders_named_by_class_index(always_two, tmp_path):
    folder = val_folder(tmp_path / "v2", [str(c) for c in FOLDERS])
    result, _ = call_main("test.py", "--ckpt", always_two, "--data", folder, "--class-map", "index",
                          "--output-dir", str(tmp_path / "out"), *FAST)
    assert result["top1"] == pytest.approx(30.0)  # the 3 images of folder 2 are right: class 2 is class2


def one_line_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit):
        call_main("test.py", *argv, *FAST)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_label_files_and_class_maps_are_one_line(always_two, tmp_path, capsys):
    folder = val_folder(tmp_path / "val", [CLASSES[c] for c in FOLDERS])
    short = tmp_path / "short.json"
    short.write_text(json.dumps(REAL[:-1]))
    out = ["--output-dir", str(tmp_path / "out")]
    assert "has 9 entries but the folder has 10 images" in one_line_error(
        capsys, "--ckpt", always_two, "--data", folder, "--real-labels", str(short), *out)
    (tmp_path / "real.json").write_text(json.dumps(REAL))
    os.rename(os.path.join(folder, "class0", "ILSVRC2012_val_00000001.png"), os.path.join(folder, "class0", "x.png"))
    assert "does not fit the folder" in one_line_error(
        capsys, "--ckpt", always_two, "--data", folder, "--real-labels", str(tmp_path / "real.json"), *out)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"class0": "tulip", "class1": "class1", "class2": "class2", "class3": "class3"}))
    assert "the class map names classes the model does not know (['tulip'])" in one_line_error(
        capsys, "--ckpt", always_two, "--data", folder, "--class-map", str(unknown), *out)
    assert "the class map names no class for the folder(s) ['class0'" in one_line_error(
        capsys, "--ckpt", always_two, "--data", folder, "--class-map", "index", *out)
