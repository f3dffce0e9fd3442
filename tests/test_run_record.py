"""One run, one record: a fresh training run never appends to or replaces another run's log and best model."""
from __future__ import annotations

import os

import pytest

from common.errors import UserError
from common.train import resume
from conftest import SMALL, make_image_folder
from inprocess import call_main

RUN = ["-a", "ghostnet", "--epochs", "1", "-b", "8", "--no-accel", "--seed", "0", *SMALL]


def snapshot(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("main.csv", "model_best.pth.tar", "checkpoint.pth.tar")}


def test_a_second_fresh_run_into_the_same_folder_is_refused_and_leaves_the_first_untouched(tmp_path, capsys):
    data = make_image_folder(str(tmp_path / "data"), train_per_class=4, val_per_class=2)
    tmp_path = tmp_path / "run"
    call_main("train_main.py", data, *RUN, "--output-dir", str(tmp_path))
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as stop:
        call_main("train_main.py", data, *RUN, "--output-dir", str(tmp_path))
    assert stop.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_the_refusal_names_resume_and_overwrite_and_overwrite_removes_only_the_run_record(tmp_path):
    (tmp_path / "main.csv").write_text("epoch,start_time\n0,1\n")
    (tmp_path / "main.png").write_bytes(b"png")
    (tmp_path / "model_best.pth.tar").write_bytes(b"ckpt")
    (tmp_path / "labels.csv").write_text("path,label\n")  # a CSV that is no training log
    with pytest.raises(UserError, match=r"--resume auto.*--overwrite"):
        resume.check_fresh_output_dir(str(tmp_path), resuming=False, overwrite=False)
    resume.check_fresh_output_dir(str(tmp_path), resuming=True, overwrite=False)  # continuing it is fine
    assert sorted(os.listdir(tmp_path)) == ["labels.csv", "main.csv", "main.png", "model_best.pth.tar"]
    resume.check_fresh_output_dir(str(tmp_path), resuming=False, overwrite=True)
    assert os.listdir(tmp_path) == ["labels.csv"]
