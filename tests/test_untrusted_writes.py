"""Nothing the user has is overwritten or escaped: outputs never land on or inside an input, paths built from data
stay inside their output folder, and an interrupted writer leaves the old file or a whole new one (issue 25)."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import tempfile

import pytest

from common import files
from common.data import convert, demo, valprep
from common.errors import UserError
from conftest import SMALL, make_image_folder
from inprocess import call_main
from test_interrupt import tree
from test_valprep import TRUTH, WNIDS, flat_folder


def one_line_exit(capsys, status: int, run) -> str:
    """Run ``run()``, expect SystemExit(status) with one stderr line (a progress bar aside: its lines hold ``\\r``)
    and no traceback; return that line."""
    with pytest.raises(SystemExit) as exc:
        run()
    assert exc.value.code == status
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if line and "\r" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def run_convert(src: str, out: str, to: str, *flags: str) -> dict:
    return convert.main(convert.get_args_parser().parse_args([src, out, "--to", to, *flags]))


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> str:
    """2 classes, 3 train and 2 val PNGs each."""
    return make_image_folder(str(tmp_path_factory.mktemp("small")), 3, 2, classes=((200, 30, 30), (30, 30, 200)),
                             size=(16, 16))


@pytest.mark.parametrize("flag", ["--ckpt", "--weights", "hard link"])
def test_export_refuses_to_write_over_its_own_checkpoint(flag, tmp_path, capsys):
    ckpt = tmp_path / "model.onnx.pth"
    ckpt.write_bytes(b"the training checkpoint")
    output = str(ckpt)
    if flag == "hard link":  # the same file under another name
        output = str(tmp_path / "copy.onnx")
        os.link(ckpt, output)
    given = ["--weights", str(ckpt), "-a", "resnet18"] if flag == "--weights" else ["--ckpt", str(ckpt)]
    err = one_line_exit(capsys, 2, lambda: call_main("export.py", *given, "--output", output, "--format", "onnx"))
    assert f"--output {output!r} is " in err and ("--ckpt" in err or "--weights" in err)
    assert ckpt.read_bytes() == b"the training checkpoint"


def test_export_refuses_an_output_inside_its_data_folder(small_folder, tmp_path, capsys):
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"x")
    before = tree(small_folder)
    output = os.path.join(small_folder, "val", "m.onnx")
    err = one_line_exit(capsys, 2, lambda: call_main("export.py", "--ckpt", str(ckpt), "--data", small_folder,
                                                     "--output", output))
    assert "is inside --data" in err
    assert tree(small_folder) == before


@pytest.mark.parametrize("where", ["train/new", ".", "parent"])
def test_convert_refuses_an_out_folder_inside_or_around_its_source(where, small_folder, capsys):
    before = tree(small_folder)
    out = os.path.dirname(small_folder) if where == "parent" else os.path.join(small_folder, where)
    err = one_line_exit(capsys, 2, lambda: run_convert(small_folder, out, "parquet"))
    assert f"OUT {out!r} " in err and "SRC" in err
    assert tree(small_folder) == before


def test_convert_to_folder_refuses_a_class_name_leading_outside_out(small_folder, tmp_path, capsys):
    shards = str(tmp_path / "shards")
    run_convert(small_folder, shards, "shards")
    with open(os.path.join(shards, convert.CLASSES_NAME), "w") as f:
        f.write("../../escaped\nok\n")
    capsys.readouterr()
    out = tmp_path / "deep" / "out"
    err = one_line_exit(capsys, 2, lambda: run_convert(shards, str(out), "folder"))
    assert "class name '../../escaped' would be written outside" in err
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()


def test_paths_from_data_stay_inside_their_folder(tmp_path):
    root = str(tmp_path / "out")
    os.makedirs(root)
    assert files.inside(root, "train", "cat", "a.png") == os.path.join(root, "train", "cat", "a.png")
    for bad in ("../x", "/abs/path", "", "a/../../b"):
        with pytest.raises(UserError, match="outside"):
            files.inside(root, "train", bad)
    os.symlink(str(tmp_path), os.path.join(root, "link"))  # a folder inside OUT that leads out of it
    with pytest.raises(UserError, match="through a link"):
        files.inside(root, "link", "a.png")


def test_sigterm_during_a_conversion_leaves_whole_files_and_a_rerun_finishes(small_folder, tmp_path, capsys,
                                                                             monkeypatch):
    whole, part = str(tmp_path / "whole"), str(tmp_path / "part")
    run_convert(small_folder, whole, "parquet", "--max-shard-mb", "0.001")  # one file per image
    fsyncs, real_fsync = [], os.fsync

    def fsync_then_sigterm(fd):  # SIGTERM arrives while the third file is still a temporary .part
        fsyncs.append(fd)
        if len(fsyncs) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_then_sigterm)
    capsys.readouterr()
    err = one_line_exit(capsys, 128 + signal.SIGTERM,
                        lambda: run_convert(small_folder, part, "parquet", "--max-shard-mb", "0.001"))
    assert "stopped by SIGTERM" in err and "run the same command again" in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler does not outlive the run
    left = tree(part)
    assert not [n for n in left if n.endswith(files.TEMP_SUFFIX)] and convert.STATE_NAME in left
    monkeypatch.setattr(os, "fsync", real_fsync)
    # a run killed outright (SIGKILL) leaves its temporary file: the rerun removes it
    open(os.path.join(part, "data", ".tmp-killed.part"), "wb").close()
    run_convert(small_folder, part, "parquet", "--max-shard-mb", "0.001")
    assert tree(part) == tree(whole)


def kaggle_solution(path) -> str:
    path.write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{n:08d},{WNIDS[c]} 1 2 3 4\n" for n, c in enumerate(TRUTH, 1)))
    return str(path)


def valprep_main(*argv: str) -> dict:
    return valprep.main(valprep.get_args_parser().parse_args(list(argv)))


@pytest.mark.parametrize("manifest", ["file,class\nILSVRC2012_val_00000001.JPEG,../../escaped\n",
                                      "file,class\n../ILSVRC2012_val_00000001.JPEG,n01440764\n",
                                      "file,class\n"], ids=["class out of the folder", "file out", "header only"])
def test_valprep_refuses_a_manifest_that_moves_images_out_or_leaves_them_flat(manifest, tmp_path, capsys):
    folder = flat_folder(tmp_path)
    with open(os.path.join(folder, valprep.MANIFEST_NAME), "w") as f:
        f.write(manifest)
    err = one_line_exit(capsys, 2, lambda: valprep_main(folder, "--labels", kaggle_solution(tmp_path / "s.csv")))
    assert valprep.MANIFEST_NAME in err and "sort the folder afresh" in err and "Nothing was moved" in err
    assert sorted(os.listdir(folder)) == sorted([valprep.MANIFEST_NAME, *[f"ILSVRC2012_val_{n:08d}.JPEG"
                                                                         for n in range(1, 11)]])


def test_valprep_across_filesystems_copies_then_deletes_and_survives_a_sigterm(tmp_path, capsys, monkeypatch):
    fresh, folder = flat_folder(tmp_path / "fresh"), flat_folder(tmp_path / "exdev")
    solution = kaggle_solution(tmp_path / "s.csv")
    valprep_main(fresh, "--labels", solution)
    real_replace, real_copy, copies = os.replace, shutil.copyfileobj, []

    def replace(src, dst):  # the class folders are on another filesystem; temporary files stay on theirs
        if not os.path.basename(src).startswith(files.TEMP_PREFIX) and os.path.dirname(dst) != os.path.dirname(src):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    def copy_then_sigterm(src, dst, *a):  # SIGTERM while the fourth image is half copied
        copies.append(src)
        if len(copies) == 4:
            dst.write(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
        real_copy(src, dst, *a)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(shutil, "copyfileobj", copy_then_sigterm)
    err = one_line_exit(capsys, 128 + signal.SIGTERM, lambda: valprep_main(folder, "--labels", solution))
    assert "stopped by SIGTERM" in err
    left = tree(folder)
    assert not [n for n in left if n.endswith(files.TEMP_SUFFIX)]
    assert len([n for n in left if "/" in n]) == 3 and len(left) == 11  # 3 moved whole, 7 flat, the manifest
    monkeypatch.setattr(shutil, "copyfileobj", real_copy)
    assert valprep_main(folder, "--labels", solution)["placed"] == 7
    assert tree(folder) == tree(fresh)


@pytest.fixture
def tiny_demo(monkeypatch):
    """The demo dataset at one image per class and split (drawing it whole takes seconds)."""
    monkeypatch.setattr(demo, "TRAIN_PER_CLASS", 1)
    monkeypatch.setattr(demo, "VAL_PER_CLASS", 1)


def test_demo_data_through_a_link_is_redrawn_where_the_link_points(tiny_demo, tmp_path):
    target = tmp_path / "big-disk" / "demo"
    demo.ensure_dataset(str(target))
    os.remove(target / demo.MARKER)  # an older or unfinished copy: redrawn
    os.makedirs(tmp_path / "data")
    os.symlink(target, tmp_path / "data" / "demo")
    demo.ensure_dataset(str(tmp_path / "data" / "demo"))
    assert os.path.islink(tmp_path / "data" / "demo") and demo.is_complete(str(target))


def test_demo_data_that_cannot_be_written_ends_in_one_line_naming_the_path(tiny_demo, tmp_path, monkeypatch):
    (tmp_path / "data").write_text("a file where the data folder goes")
    with pytest.raises(UserError, match=f"{tmp_path / 'data'}' is a file where the demo dataset's folder"):
        demo.ensure_dataset(str(tmp_path / "data" / "demo"))

    def read_only(*_a, **_k):  # as in a read-only folder (the tests may run as root, who may write anywhere)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(UserError, match=r"cannot write the demo dataset to '.*ro/demo' \(Permission denied\)"):
        demo.ensure_dataset(str(tmp_path / "ro" / "demo"))


def test_the_sorters_overwrite_refills_a_linked_output_folder(trained_ckpt, tiny_data, tmp_path):
    real, link = tmp_path / "disk" / "sorted", tmp_path / "sorted"
    os.makedirs(real)
    os.symlink(real, link)
    sort = ["--ckpt", trained_ckpt, "--data", os.path.join(tiny_data, "val"), "--out", str(link), "-j", "0",
            "--sheet-size", "0", *SMALL[2:6]]
    call_main("classify_test_data.py", *sort)
    (real / "extra.txt").write_text("from an earlier run")
    call_main("classify_test_data.py", *sort, "--overwrite")
    assert os.path.islink(link) and not (real / "extra.txt").exists()
    assert len([n for n in tree(str(real)) if "/right/" in n or "/wrong/" in n]) == 40


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_comparison_writes_its_csv_keeps_the_last_whole_one(sig, tmp_path, capsys, monkeypatch):
    out = str(tmp_path)
    compare_args = ["--models", "squeezenet1_1", "squeezenet1_0", "--input-size", "16", "--batch-size", "1",
                    "--repeats", "1", "--threads", "1", "--output-dir", out]  # both fail at 16 px: fast rows
    fsyncs, real_fsync = [], os.fsync

    def fsync_then_signal(fd):  # compare.csv, compare.md after the first model, then the second model's csv
        fsyncs.append(fd)
        if len(fsyncs) == 3:
            os.kill(os.getpid(), sig)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_then_signal)
    err = one_line_exit(capsys, 128 + sig, lambda: call_main("evaluation/compare.py", *compare_args))
    assert "stopped by SIGTERM" in err if sig == signal.SIGTERM else "interrupted by Ctrl+C" in err
    assert sorted(os.listdir(out)) == ["compare.csv", "compare.md"]  # no temporary file
    with open(os.path.join(out, "compare.csv")) as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["squeezenet1_1"]
    monkeypatch.setattr(os, "fsync", real_fsync)
    rows, _ = call_main("evaluation/compare.py", *compare_args)
    with open(os.path.join(out, "compare.csv")) as f:
        assert len(f.read().splitlines()) == 1 + len(rows) == 3


def test_test_py_refuses_reports_inside_its_data_or_over_a_file_it_reads(small_folder, tmp_path, capsys):
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"the checkpoint")
    before = tree(small_folder)
    inside_a_class = os.path.join(small_folder, "val", "class0", "reports")  # the PNG would become an image of class0
    for data in (small_folder, f"folder:{small_folder}"):
        err = one_line_exit(capsys, 2, lambda: call_main("test.py", "--ckpt", str(ckpt), "--data", data,  # noqa: B023
                                                         "--output-dir", inside_a_class))
        assert f"--output-dir {inside_a_class!r} is inside --data {small_folder!r}" in err
    assert tree(small_folder) == before and not os.path.exists(inside_a_class)
    labels = tmp_path / "per_class.csv"  # a class map that a report of the same name would replace
    labels.write_text('{"class0": 0}')
    err = one_line_exit(capsys, 2, lambda: call_main("test.py", "--ckpt", str(ckpt), "--data", small_folder,
                                                     "--class-map", str(labels), "--output-dir", str(tmp_path)))
    assert f"--output-dir {str(labels)!r} is --class-map" in err and labels.read_text() == '{"class0": 0}'


def test_the_sorter_refuses_an_output_folder_in_its_prefixed_data_or_holding_its_checkpoint(small_folder, tmp_path,
                                                                                          capsys):
    out = tmp_path / "sorted"
    os.makedirs(out)
    ckpt = out / "m.pth"  # --overwrite would empty the folder, checkpoint and all
    ckpt.write_bytes(b"the checkpoint")
    err = one_line_exit(capsys, 2, lambda: call_main("classify_test_data.py", "--ckpt", str(ckpt), "--data",
                                                     small_folder, "--out", str(out), "--overwrite"))
    assert f"--output-dir {str(out)!r} holds --ckpt" in err and ckpt.read_bytes() == b"the checkpoint"
    before, inside = tree(small_folder), os.path.join(small_folder, "sorted")
    err = one_line_exit(capsys, 2, lambda: call_main("classify_test_data.py", "--ckpt", str(ckpt), "--data",
                                                     f"folder:{small_folder}", "--out", inside))
    assert "is inside --data" in err and tree(small_folder) == before and not os.path.exists(inside)
