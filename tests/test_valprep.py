"""python -m common.data.valprep: a flat ImageNet val folder sorted into class folders, from a devkit or Kaggle labels.

    python -m pytest tests/test_valprep.py -q
"""
from __future__ import annotations

import csv
import io
import os
import tarfile

import numpy as np
import pytest
import scipy.io

from common.data import imagefolder, valprep
from common.errors import UserError

WNIDS = {1: "n01440764", 2: "n01443537", 3: "n01484850"}  # ILSVRC2012 ids of three leaf classes
TRUTH = [2, 1, 3, 3, 1, 2, 2, 1, 3, 1]  # the class id of val images 1..10


def flat_folder(root) -> str:
    folder = os.path.join(str(root), "val")
    os.makedirs(folder)
    for number in range(1, len(TRUTH) + 1):
        with open(os.path.join(folder, f"ILSVRC2012_val_{number:08d}.JPEG"), "wb") as f:
            f.write(f"image {number}".encode())
    return folder


def devkit(path: str, truth: list[int] = TRUTH) -> str:
    """A devkit archive laid out as the official one: meta.mat (with a non-leaf synset, as the real one has 860
    of them) and the ground-truth file."""
    synsets = np.zeros(4, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    for row, (i, wnid, children) in enumerate([*[(i, w, 0) for i, w in WNIDS.items()], (1001, "n00001740", 3)]):
        synsets[row] = (i, wnid, f"class {i}", children)
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": synsets})
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in (("meta.mat", mat.getvalue()),
                              ("ILSVRC2012_validation_ground_truth.txt", "\n".join(map(str, truth)).encode())):
            info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/data/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def snapshot(folder: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, name), folder)] = f.read()
    return out


def sort(*argv: str) -> dict:
    return valprep.main(valprep.get_args_parser().parse_args(list(argv)))


def test_a_flat_val_folder_is_named_with_the_command_that_sorts_it(tmp_path):
    folder = flat_folder(tmp_path)
    with pytest.raises(UserError) as err:
        imagefolder.image_folder(folder, None)
    assert "holds 10 images but no class folders" in str(err.value)
    assert "python -m common.data.valprep" in str(err.value)


def test_devkit_labels_sort_the_folder_and_a_rerun_changes_nothing(tmp_path, capsys):
    folder = flat_folder(tmp_path)
    before = snapshot(folder)
    assert sort(folder, "--devkit", devkit(str(tmp_path / "devkit.tar.gz"))) == {"placed": 10, "images": 10,
                                                                                 "classes": 3}
    after = snapshot(folder)
    expected = {f"{WNIDS[c]}/ILSVRC2012_val_{n:08d}.JPEG": before[f"ILSVRC2012_val_{n:08d}.JPEG"]
                for n, c in enumerate(TRUTH, 1)}
    assert {k: v for k, v in after.items() if k != valprep.MANIFEST_NAME} == expected
    with open(os.path.join(folder, valprep.MANIFEST_NAME), newline="") as f:
        assert [(r["file"], r["class"]) for r in csv.DictReader(f)] == [
            (f"ILSVRC2012_val_{n:08d}.JPEG", WNIDS[c]) for n, c in enumerate(TRUTH, 1)]
    assert imagefolder.image_folder(folder, None).classes == sorted(WNIDS.values())
    assert sort(folder, "--devkit", str(tmp_path / "devkit.tar.gz"))["placed"] == 0
    assert snapshot(folder) == after and "already sorted" in capsys.readouterr().out


def test_kaggle_labels_with_links_leave_the_originals(tmp_path):
    folder = flat_folder(tmp_path)
    solution = tmp_path / "LOC_val_solution.csv"
    solution.write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{n:08d},{WNIDS[c]} 1 2 30 40 {WNIDS[c]} 5 6 7 8\n" for n, c in enumerate(TRUTH, 1)))
    assert sort(folder, "--labels", str(solution), "--link")["placed"] == 10
    assert os.path.samefile(os.path.join(folder, "ILSVRC2012_val_00000001.JPEG"),
                            os.path.join(folder, WNIDS[2], "ILSVRC2012_val_00000001.JPEG"))


@pytest.mark.parametrize("truth", [TRUTH[:-1], TRUTH + [1]], ids=["one label short", "one label too many"])
def test_a_label_file_that_does_not_fit_is_refused_before_anything_moves(tmp_path, capsys, truth):
    folder = flat_folder(tmp_path)
    before = snapshot(folder)
    with pytest.raises(SystemExit):
        sort(folder, "--devkit", devkit(str(tmp_path / "devkit.tar.gz"), truth))
    err = capsys.readouterr().err
    assert "Nothing was moved" in err and len(err.strip().splitlines()) == 1
    assert snapshot(folder) == before
