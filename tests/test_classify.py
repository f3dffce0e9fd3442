"""classify_test_data.py: every readable image lands once under <true class>/right or /wrong, sources untouched.

    python -m pytest tests/test_classify.py -q
"""
from __future__ import annotations

import csv
import errno
import hashlib
import os
import shutil

import pytest
import torch

from conftest import SMALL, make_image_folder, run_script
from inprocess import call_main

pytestmark = pytest.mark.slow  # every test sorts with heads trained on trained_ckpt (module fixtures of 2-7 s)

CLASSES = ["class0", "class1", "class2", "class3"]


@pytest.fixture(scope="module")
def sort_data(tmp_path_factory) -> dict:
    """A dataset root whose val/ has 6 PNGs per class, one more PNG in a subfolder with a name already used
    (class0/sub/img0.png), an unreadable broken.jpg and a notes.txt that is no image."""
    root = make_image_folder(str(tmp_path_factory.mktemp("sort_data")), train_per_class=1, val_per_class=6, seed=3)
    val = os.path.join(root, "val")
    os.makedirs(os.path.join(val, "class0", "sub"))
    shutil.copy(os.path.join(val, "class0", "img1.png"), os.path.join(val, "class0", "sub", "img0.png"))
    with open(os.path.join(val, "class1", "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8 definitely not a JPEG")
    with open(os.path.join(val, "class2", "notes.txt"), "w") as f:
        f.write("not an image\n")
    return {"root": root, "val": val, "readable": 4 * 6 + 1}


def permuted_head(path: str, order: list[int], out: str) -> str:
    """The checkpoint at ``path`` with its class outputs reordered: a model whose mistakes are known in advance."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("classifier.weight", "classifier.bias"):
        ckpt["state_dict"][key] = ckpt["state_dict"][key][order]
    torch.save(ckpt, out)
    return out


@pytest.fixture(scope="module")
def ckpts(tiny_data, trained_ckpt, tmp_path_factory) -> dict:
    """Two models from one network.py head: outputs 2 and 3 swapped ('probe'), or 0 and 1 swapped ('swapped').

    Whatever the training reached, the first is right on some images and wrong on others, and the two disagree.
    """
    out = str(tmp_path_factory.mktemp("probe"))
    call_main("network.py", tiny_data, "-a", "ghostnet", "--weights", trained_ckpt, "--epochs", "3", "-b", "16",
              "--lr", "0.5", "--lr-schedule", "constant", "--seed", "0", "--output-dir", out, *SMALL)
    trained = os.path.join(out, "checkpoint.pth.tar")
    return {"probe": permuted_head(trained, [0, 1, 3, 2], os.path.join(out, "probe.pth.tar")),
            "swapped": permuted_head(trained, [1, 0, 2, 3], os.path.join(out, "swapped.pth.tar"))}


def classify(ckpt: str, data: str, out: str, *extra: str) -> tuple[dict, str]:
    return call_main("classify_test_data.py", "--ckpt", ckpt, "--data", data, "--out", out, "-j", "0", "-b", "8",
                     *extra)


def tree(folder: str) -> dict[str, tuple[int, int, int, str]]:
    """Relative path -> (inode, size, mtime_ns, sha256) of every file, links not followed."""
    out = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            digest = "" if os.path.islink(path) else hashlib.sha256(open(path, "rb").read()).hexdigest()
            out[os.path.relpath(path, folder)] = (st.st_ino, st.st_size, st.st_mtime_ns, digest)
    return out


def verdict_files(out: str) -> dict[str, list[str]]:
    """'<class>/right' / '<class>/wrong' -> file names."""
    found = {}
    for c in os.listdir(out):
        for verdict in ("right", "wrong"):
            folder = os.path.join(out, c, verdict)
            if os.path.isdir(folder):
                found[f"{c}/{verdict}"] = sorted(os.listdir(folder))
    return found


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sorted_once(ckpts, sort_data, tmp_path_factory) -> dict:
    """One default run (hard links), with the source tree's checksums taken before it."""
    before = tree(sort_data["root"])
    out = str(tmp_path_factory.mktemp("sorted") / "out")
    result, printed = classify(ckpts["probe"], sort_data["root"], out)
    return {"out": out, "result": result, "printed": printed, "source_before": before}


def test_right_plus_wrong_files_equal_the_readable_images_and_same_names_do_not_collide(sorted_once, sort_data):
    files = verdict_files(sorted_once["out"])
    assert sum(len(names) for names in files.values()) == sort_data["readable"] == sorted_once["result"]["placed"]
    assert sorted_once["result"]["unreadable"] == 1 and "broken.jpg" in sorted_once["printed"]
    class0 = files.get("class0/right", []) + files.get("class0/wrong", [])
    assert any(n.startswith(("img0.", "img0__pred-")) for n in class0)
    assert any(n.startswith(("sub__img0.", "sub__img0__pred-")) for n in class0)
    for key, names in files.items():
        if key.endswith("/wrong"):
            assert all("__pred-class" in n for n in names)


def test_right_counts_match_test_py_per_class_correct_counts(sorted_once, ckpts, sort_data, tmp_path):
    result, _ = call_main("test.py", "--ckpt", ckpts["probe"], "--data", sort_data["root"], "-j", "0",
                          "--output-dir", str(tmp_path))
    files = verdict_files(sorted_once["out"])
    per_class = {r["class"]: r for r in read_csv(str(tmp_path / "per_class.csv"))}
    for c in CLASSES:
        assert len(files.get(f"{c}/right", [])) == int(per_class[c]["correct"])
        assert len(files.get(f"{c}/right", [])) + len(files.get(f"{c}/wrong", [])) == int(per_class[c]["support"])
    overall = sorted_once["result"]["summary"][-1]
    assert overall["class"] == "all" and overall["accuracy"] == pytest.approx(result["top1"], abs=1e-3)
    assert 0 < overall["right"] < overall["images"], "the fixture model should be right on some images only"


def test_manifest_summary_and_contact_sheet(sorted_once, sort_data):
    out = sorted_once["out"]
    rows = read_csv(os.path.join(out, "manifest.csv"))
    assert list(rows[0]) == ["source", "destination", "true", "predicted", "confidence", "correct"]
    assert len(rows) == sort_data["readable"] and len({r["source"] for r in rows}) == len(rows)
    for r in rows:
        verdict = "right" if r["true"] == r["predicted"] else "wrong"
        assert r["destination"].split(os.sep)[:2] == [r["true"], verdict] and int(r["correct"]) == (verdict == "right")
        assert os.path.samefile(r["source"], os.path.join(out, r["destination"]))  # default: hard links
    summary = {r["class"]: r for r in read_csv(os.path.join(out, "summary.csv"))}
    assert int(summary["all"]["right"]) == sum(int(r["correct"]) for r in rows)
    assert os.path.getsize(os.path.join(out, "mistakes.png")) > 0 and os.path.isfile(os.path.join(out, "summary.txt"))


def test_source_tree_is_unchanged(sorted_once, sort_data):
    assert tree(sort_data["root"]) == sorted_once["source_before"]


def test_second_run_changes_nothing(sorted_once, ckpts, sort_data):
    before = tree(sorted_once["out"])
    result, printed = classify(ckpts["probe"], sort_data["root"], sorted_once["out"])
    assert tree(sorted_once["out"]) == before
    assert result["stale_removed"] == 0 and f"{sort_data['readable']} already in place" in printed


def test_rerun_with_another_model_equals_a_fresh_run(ckpts, sort_data, tmp_path):
    reused, fresh = str(tmp_path / "reused"), str(tmp_path / "fresh")
    classify(ckpts["probe"], sort_data["root"], reused)
    result, _ = classify(ckpts["swapped"], sort_data["root"], reused)
    classify(ckpts["swapped"], sort_data["root"], fresh)
    assert result["stale_removed"] > 0
    assert verdict_files(reused) == verdict_files(fresh)
    assert read_csv(os.path.join(reused, "manifest.csv")) == read_csv(os.path.join(fresh, "manifest.csv"))


def test_copy_and_symlink_modes_leave_sources_alone(ckpts, sort_data, tmp_path):
    for mode in ("copy", "symlink"):
        out = str(tmp_path / mode)
        classify(ckpts["probe"], sort_data["val"], out, "--mode", mode, "--sheet-size", "0")
        for r in read_csv(os.path.join(out, "manifest.csv")):
            dest = os.path.join(out, r["destination"])
            if mode == "copy":
                assert not os.path.islink(dest) and not os.path.samefile(dest, r["source"])
                assert open(dest, "rb").read() == open(r["source"], "rb").read()
            else:
                assert os.path.islink(dest) and os.readlink(dest) == os.path.abspath(r["source"])


def test_default_mode_copies_where_the_filesystem_cannot_hard_link(ckpts, sort_data, tmp_path, monkeypatch):
    def no_link(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    out = str(tmp_path / "out")
    _, printed = classify(ckpts["probe"], sort_data["val"], out, "--sheet-size", "0")
    assert f"0 hard links, {sort_data['readable']} copies" in printed
    for r in read_csv(os.path.join(out, "manifest.csv")):
        assert not os.path.samefile(r["source"], os.path.join(out, r["destination"]))


def test_overwrite_starts_afresh_and_foreign_or_overlapping_out_is_refused(ckpts, sort_data, tmp_path, capsys):
    out = str(tmp_path / "out")
    classify(ckpts["probe"], sort_data["val"], out, "--sheet-size", "0")
    open(os.path.join(out, "extra.txt"), "w").close()
    classify(ckpts["probe"], sort_data["val"], out, "--sheet-size", "0")
    assert os.path.exists(os.path.join(out, "extra.txt"))
    classify(ckpts["probe"], sort_data["val"], out, "--sheet-size", "0", "--overwrite")
    assert not os.path.exists(os.path.join(out, "extra.txt"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    for bad_out in (str(foreign), os.path.join(sort_data["val"], "sorted")):
        with pytest.raises(SystemExit) as exc:
            classify(ckpts["probe"], sort_data["val"], bad_out, "--overwrite")
        assert exc.value.code == 2 and capsys.readouterr().err.startswith("error: --out")
    assert (foreign / "mine.txt").read_text() == "keep me"
    assert not os.path.exists(os.path.join(sort_data["val"], "sorted"))


def test_two_torchrun_ranks_sort_each_image_once_into_one_manifest(sorted_once, ckpts, sort_data, tmp_path):
    out = str(tmp_path / "out")
    run_script("classify_test_data.py", "--ckpt", ckpts["probe"], "--data", sort_data["root"], "--out", out, "-j",
               "0", "-b", "4", launcher=["torchrun", "--standalone", "--nproc_per_node", "2"])
    one = read_csv(os.path.join(sorted_once["out"], "manifest.csv"))
    two = read_csv(os.path.join(out, "manifest.csv"))
    assert [(r["source"], r["destination"]) for r in two] == [(r["source"], r["destination"]) for r in one]
    assert verdict_files(out) == verdict_files(sorted_once["out"])
