"""Writes that the system refuses (a file size limit stands in for a full disk: both fail the write call) end in one
line; nothing is half-written, an earlier report is kept, and the sorter's manifest stays true to what is in place.
"""
from __future__ import annotations

import csv
import os
import resource
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, make_image_folder
from inprocess import call_main

pytestmark = pytest.mark.slow  # every test runs test.py or the sorter on trained_ckpt (2-7 s each)

LIMIT = 3000  # bytes: above every file the scripts need to read or create before the reports, below the reports


def limited(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``script`` with RLIMIT_FSIZE at LIMIT bytes: a larger write fails with EFBIG, as a full disk does with
    ENOSPC (Python ignores SIGXFSZ, which would otherwise kill the process)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, preexec_fn=limit, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_test_py_keeps_the_earlier_report_when_a_new_one_cannot_be_written(trained_ckpt, tiny_data, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "predictions.csv").write_text("the earlier report\n")
    done = limited("test.py", "--ckpt", trained_ckpt, "--data", tiny_data, "-j", "0", "--output-dir", str(out))
    path = out / "predictions.csv"
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines() == [f"error: cannot write {path} (File too large); the earlier file is kept: free "
                                        "some disk space, choose a writable folder or a shorter name, and run it "
                                        "again."]
    assert path.read_text() == "the earlier report\n" and os.listdir(out) == ["predictions.csv"]


def test_the_sorter_stops_in_one_line_with_a_manifest_of_what_is_in_place(trained_ckpt, tmp_path):
    data = make_image_folder(str(tmp_path / "data"), 0, 3, size=(16, 16))  # PNGs of about 1 kB
    large = make_image_folder(str(tmp_path / "large"), 0, 3, size=(40, 48))  # and of about 3.5 kB
    for folder, _dirs, names in os.walk(os.path.join(large, "val")):
        for name in names:
            shutil.move(os.path.join(folder, name), os.path.join(data, "val", os.path.basename(folder), "z" + name))
    sizes = sorted(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(data) for f in fs)
    assert sizes[0] < LIMIT < sizes[-1], sizes  # some copies fit under the limit, the others fail
    out = str(tmp_path / "sorted")
    done = limited("classify_test_data.py", "--ckpt", trained_ckpt, "--data", data, "--output-dir", out,
                   "--mode", "copy", "-j", "0", "-b", "4", "--sheet-size", "0")
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"error: cannot place {out}/") and "(File too large)" in lines[0]
    assert "and listed in manifest.csv: free some disk space" in lines[0]
    with open(os.path.join(out, "manifest.csv"), newline="") as f:
        listed = {row["destination"] for row in csv.DictReader(f)}
    placed = {os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs
              if r != out}
    assert listed == placed and 0 < len(placed) < 24  # the manifest is true to the tree: no temporary file either
    assert all(os.path.getsize(os.path.join(out, p)) < LIMIT for p in placed)  # each one whole


def test_names_longer_than_the_filesystem_holds_are_shortened_and_stay_distinct(trained_ckpt, tmp_path):
    data = make_image_folder(str(tmp_path / "data"), 0, 2, classes=((200, 30, 30), (30, 200, 30)))
    for folder, _dirs, names in list(os.walk(data)):
        for i, name in enumerate(sorted(names)):
            shutil.move(os.path.join(folder, name), os.path.join(folder, f"{'x' * 240}{i}.png"))  # 245 bytes
    out = str(tmp_path / "sorted")
    call_main("classify_test_data.py", "--ckpt", trained_ckpt, "--data", data, "--output-dir", out,
                           "-j", "0")
    placed = [f for r, _, fs in os.walk(out) for f in fs if r != out]
    assert len(placed) == len(set(placed)) == 4 and all(len(os.fsencode(f)) <= 255 for f in placed)
