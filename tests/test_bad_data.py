"""Training on a dataset with unreadable files: skipped and counted, or a stop naming the file; --check-data."""
from __future__ import annotations

import csv
import io
import os

import pytest
from PIL import Image

from conftest import SMALL, make_image_folder, run_script
from inprocess import load_script

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_fail_policy_stops_at_the_first_bad_image_with_its_path(dirty_data, tmp_path):
    root, bad = dirty_data
    proc = run_script("train_main.py", root, *TRAIN, "--epochs", "1", "-j", "1", "--bad-images", "fail",
                      "--output-dir", str(tmp_path), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: unreadable image ") and any(path in proc.stderr for path in bad)


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("layout, message", [
    ({"train/a": 2, "train/b": 0, "val/a": 1, "val/b": 1}, "no valid file for the classes b"),
    ({"train/a": 0, "val/a": 0}, "no valid file for the classes a"),
])
def test_empty_class_folders_and_image_less_datasets_are_refused_in_one_line(layout, message, tmp_path):
    for folder, count in layout.items():
        os.makedirs(tmp_path / folder)
        for i in range(count):
            Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / folder / f"{i}.png")
    proc = run_script("train_main.py", str(tmp_path), *TRAIN, "--epochs", "1", "--output-dir", str(tmp_path / "o"),
                      check=False)
    assert proc.returncode == 2 and message in proc.stderr.lower() and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_non_utf8_file_names_train_evaluate_and_sort(tmp_path):
    root = make_image_folder(str(tmp_path / "data"), train_per_class=6, val_per_class=2)
    odd = os.path.join(os.fsencode(root), b"val", b"class1", b"caf\xe9.png")
    Image.new("RGB", (40, 48), (30, 200, 30)).save(odd)
    for split in (os.path.join(os.fsencode(root), s) for s in (b"train", b"val")):  # a class folder too
        os.rename(os.path.join(split, b"class3"), os.path.join(split, b"cl\xe4ss3"))
    run_script("train_main.py", root, *TRAIN, "--epochs", "1", "--output-dir", str(tmp_path / "run"))
    ckpt = str(tmp_path / "run" / "model_best.pth.tar")
    run_script("test.py", "--ckpt", ckpt, "--data", root, "--output-dir", str(tmp_path / "eval"))
    with open(tmp_path / "eval" / "predictions.csv", "rb") as f:
        assert b"caf\xe9.png" in f.read()  # the original bytes, so the path can be opened again
    for report in ("predictions.csv", "per_class.csv", "confusion_matrix.csv"):
        with open(tmp_path / "eval" / report, "rb") as f:
            assert b"cl\xe4ss3" in f.read()
    run_script("classify_test_data.py", "--ckpt", ckpt, "--data", root, "--out", str(tmp_path / "sorted"))
    placed = [name for _, _, files in os.walk(os.fsencode(tmp_path / "sorted" / "class1")) for name in files]
    assert any(b"caf\xe9" in name for name in placed)
    assert os.path.isdir(os.path.join(os.fsencode(tmp_path / "sorted"), b"cl\xe4ss3"))
    for report in ("manifest.csv", "summary.csv", "summary.txt"):
        with open(tmp_path / "sorted" / report, "rb") as f:
            assert b"cl\xe4ss3" in f.read()


@pytest.mark.slow
def test_gpu_beyond_the_device_count_is_refused():
    proc = run_script("train_main.py", "--dummy", "--gpu", "7", "--no-accel", check=False)
    assert proc.returncode == 2 and "--gpu 7 does not exist" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["--cache-features", "--no-cache-features"])
def test_network_py_skips_bad_images_too(cache, dirty_data, trained_ckpt, tmp_path):
    root, _bad = dirty_data
    run_script("network.py", root, "-a", "ghostnet", "--weights", trained_ckpt, "-b", "12", "--epochs", "1",
               "--seed", "0", "--no-accel", cache, *SMALL, "--output-dir", str(tmp_path))
    with open(tmp_path / "network.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["bad_images"] == "6" and row["val_images"] == "12"


def test_test_py_check_data_lists_the_unreadable_files_of_the_labelled_set_or_of_the_given_files(dirty_data, capsys):
    root, bad = dirty_data
    test_py = load_script("test.py")

    def check(*argv: str) -> tuple[int, list[str], str]:
        with pytest.raises(SystemExit) as exc:  # no model is needed, and nothing is evaluated
            test_py.main(test_py.get_args_parser().parse_args([*argv, "--check-data", "-j", "0"]))
        out = capsys.readouterr().out
        listed = [line.split("unreadable: ", 1)[1].split(": ")[0] for line in out.splitlines()
                  if line.startswith("unreadable: ")]
        return exc.value.code, listed, out

    bad_val = [path for path in bad if f"{os.sep}val{os.sep}" in path]
    code, listed, out = check("--data", root)  # its val/, as an evaluation would read it
    assert code == 1 and listed == bad_val and "checked 14 images under" in out
    good = os.path.join(root, "val", "class0", "img0.png")
    code, listed, out = check(good, bad_val[0], os.path.join(root, "missing.png"))
    assert code == 1 and listed == [bad_val[0], os.path.join(root, "missing.png")] and "checked 3 images" in out
    assert check(good)[0] == 0


@pytest.mark.slow
@pytest.mark.parametrize("script, what", [
    ("train_main.py", "training's skipped-image line"),
    ("train_main.py --check-data", "the --check-data listing"),
    ("test.py IMAGE", "per-image output"),
    ("test.py --data", "the folder report"),
    ("classify_test_data.py", "the sorting report"),
])
def test_non_utf8_file_names_print_on_a_strict_console(script, what, trained_ckpt, tmp_path):
    root = make_image_folder(str(tmp_path / "data"), train_per_class=4, val_per_class=1)
    readable = os.path.join(os.fsencode(root), b"val", b"class1", b"caf\xe9.png")
    Image.new("RGB", (40, 48), (30, 200, 30)).save(readable)
    for split in (b"train", b"val"):
        open(os.path.join(os.fsencode(root), split, b"class2", b"na\xefve.png"), "wb").close()  # unreadable
    commands = {
        "train_main.py": ["train_main.py", root, *TRAIN, "--epochs", "1", "--output-dir", str(tmp_path / "run")],
        "train_main.py --check-data": ["train_main.py", root, "--check-data"],
        "test.py IMAGE": ["test.py", "--ckpt", trained_ckpt, os.fsdecode(readable), "--output-dir",
                          str(tmp_path / "p")],
        "test.py --data": ["test.py", "--ckpt", trained_ckpt, "--data", root, "--output-dir", str(tmp_path / "eval")],
        "classify_test_data.py": ["classify_test_data.py", "--ckpt", trained_ckpt, "--data", root, "--out",
                                  str(tmp_path / "sorted")],
    }
    proc = run_script(*commands[script], "-j", "0", env={"PYTHONIOENCODING": "utf-8:strict"}, check=False)
    assert "Traceback" not in proc.stderr and proc.returncode == (1 if "check-data" in script else 0), proc.stderr
    shown = "caf\\udce9.png" if script == "test.py IMAGE" else "na\\udcefve.png"  # printed as escapes
    assert shown in proc.stdout, what
