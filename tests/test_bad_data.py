"""Training on a dataset with unreadable files: skipped and counted, or a stop naming the file; --check-data."""
from __future__ import annotations

import csv
import io
import os

import pytest
from PIL import Image

from conftest import SMALL, make_image_folder, run_script

TRAIN = ["-a", "ghostnet", "-b", "12", "--lr", "0.02", "--seed", "0", "--no-accel", *SMALL]


@pytest.fixture(scope="module")
def dirty_data(tmp_path_factory) -> tuple[str, list[str]]:
    """4 classes of 8 train / 3 val good PNGs, plus 6 unreadable files, none next to another in sample order."""
    root = make_image_folder(str(tmp_path_factory.mktemp("dirty")), train_per_class=8, val_per_class=3)
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(jpeg, "JPEG")
    bad = {"train/class0/zz_empty.png": b"", "train/class1/zz_text.png": b"not an image\n",
           "train/class2/zz_truncated.jpg": jpeg.getvalue()[:300], "train/class3/zz_random.jpg": os.urandom(500),
           "val/class1/zz_empty.jpg": b"", "val/class2/zz_text.PNG": b"hello"}
    for rel, content in bad.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(content)
    return root, sorted(os.path.join(root, rel) for rel in bad)


def test_bad_images_are_skipped_named_once_and_counted_each_epoch(dirty_data, tmp_path):
    root, bad = dirty_data
    proc = run_script("train_main.py", root, *TRAIN, "--epochs", "2", "-j", "1", "--output-dir", str(tmp_path))
    named = sorted(line.split("image ", 1)[1].split(":")[0] for line in proc.stdout.splitlines()
                   if line.startswith("=> skipped unreadable image"))
    assert named == bad  # each file once over two epochs
    with open(tmp_path / "main.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # 36 train files in 3 full batches of 12 (bad ones replaced by readable ones), 12 readable val images
    assert [r["bad_images"] for r in rows] == ["6", "6"] and [r["val_images"] for r in rows] == ["12", "12"]


def test_fail_policy_stops_at_the_first_bad_image_with_its_path(dirty_data, tmp_path):
    root, bad = dirty_data
    proc = run_script("train_main.py", root, *TRAIN, "--epochs", "1", "-j", "1", "--bad-images", "fail",
                      "--output-dir", str(tmp_path), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: unreadable image ") and any(path in proc.stderr for path in bad)


def test_check_data_lists_every_unreadable_file_without_training(dirty_data, tiny_data, tmp_path):
    root, bad = dirty_data
    proc = run_script("train_multiprocessing.py", root, "--check-data", "-j", "2", "--output-dir", str(tmp_path),
                      check=False)
    listed = sorted(line.split("unreadable: ", 1)[1].split(": ")[0] for line in proc.stdout.splitlines()
                    if line.startswith("unreadable: "))
    assert proc.returncode == 1 and listed == bad and "checked 50 images" in proc.stdout
    assert not os.path.exists(tmp_path / "checkpoint.pth.tar")
    clean = run_script("train_main.py", tiny_data, "--check-data", "--output-dir", str(tmp_path))
    assert "checked 200 images" in clean.stdout and "0 unreadable" in clean.stdout
