"""Outputs go where the user said, or under runs/: no default writes into the current folder (often the checkout)."""
from __future__ import annotations

import glob
import hashlib
import importlib
import os
import shutil
import subprocess
import sys

import pytest

from common.data import demo
from conftest import ROOT, SMALL
from inprocess import load_script


@pytest.mark.parametrize(("script", "default"), [("test.py", "runs/test"), ("evaluation/compare.py", "runs/compare")])
def test_default_output_dir_is_under_runs(script, default):
    parser = load_script(script).get_args_parser()
    assert parser.get_default("output_dir") == os.path.join(*default.split("/"))
    assert f"default: {default}" in parser.format_help().replace("\n", " ").replace("  ", " ")


# ---------------------------------------------------------------------------------------------------- every parser

OUTPUT_DESTS = ("output_dir", "out", "output")  # the flags that name where a script writes


def entry_points() -> list[str]:
    """Every file of the project with a command line (``get_args_parser``): scripts, evaluation/, benchmarks/ and
    the ``python -m common...`` modules."""
    found = [p for pattern in ("*.py", "evaluation/*.py", "benchmarks/*.py", "common/**/*.py")
             for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)]
    return sorted(os.path.relpath(p, ROOT) for p in found if "def get_args_parser" in open(p).read())


def parser_of(path: str):
    if path.startswith("common" + os.sep):  # a package module: imported as itself, not as a loose file
        return importlib.import_module(path[:-3].replace(os.sep, ".")).get_args_parser()
    return load_script(path).get_args_parser()


def test_no_command_line_defaults_an_output_outside_runs():
    """Each output flag has a default under runs/, or none (required, or derived: the benchmarks' runs/benchmarks/,
    the curves' PNG beside the CSV they read); no other flag defaults to a path in the current folder."""
    scripts = entry_points()
    assert {"train_main.py", "network.py", "export.py", "evaluation/compare.py",
            os.path.join("common", "report", "curves.py")} <= set(scripts)
    outside = []
    for script in scripts:
        for action in parser_of(script)._actions:
            default = action.default
            pathlike = isinstance(default, str) and (default == "." or os.sep in default)
            under_runs = isinstance(default, str) and default.split(os.sep)[0] == "runs"
            if ((action.dest in OUTPUT_DESTS and default is not None) or pathlike) and not under_runs:
                outside.append(f"{script} {action.option_strings or action.dest}: {default!r}")
    assert outside == []
    assert all(p.split(os.sep)[0] == "runs" for p in (demo.DEFAULT_DIR, demo.DEFAULTS["output_dir"]))


# ---------------------------------------------------------------------------------------------------- read-only copy

DRIVER = """
import os, runpy, sys, time
sys.path.insert(0, os.getcwd())
from common.data import demo
demo.TRAIN_PER_CLASS, demo.VAL_PER_CLASS = 3, 2  # the same code and path; drawing 750 images would take seconds
for argv, status in {commands!r}:
    sys.argv = list(argv)
    print(f"=== {{time.time():.2f}} " + " ".join(argv), flush=True)
    try:
        if argv[0] == "-m":
            sys.argv = argv[1:]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(argv[0], run_name="__main__")
        ended = 0
    except SystemExit as exc:
        ended = exc.code or 0
    assert ended == status, f"{{argv}} ended with {{ended}}, not {{status}}"
print("=== all done", flush=True)
"""


def tracked_files() -> list[str]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [p for p in listed.decode().split("\0") if p and os.path.isfile(os.path.join(ROOT, p))]


def snapshot(root: str) -> dict[str, str]:
    """Every file and folder under ``root`` outside runs/ and Python's own __pycache__, with its content's hash."""
    found = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__" and os.path.join(folder, d) != os.path.join(root, "runs")]
        found[os.path.relpath(folder, root)] = "folder"
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                found[os.path.relpath(os.path.join(folder, name), root)] = hashlib.sha256(f.read()).hexdigest()
    return found


def set_read_only(root: str, read_only: bool) -> None:
    """Folders and files under ``root`` (not runs/) read-only, or writable again (for the temporary folder's
    removal); running as root ignores the modes, so the test compares snapshots as well."""
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) != os.path.join(root, "runs")]
        for name in names:
            os.chmod(os.path.join(folder, name), 0o444 if read_only else 0o644)
        os.chmod(folder, 0o555 if read_only else 0o755)


@pytest.mark.slow
def test_documented_commands_in_a_read_only_copy_write_only_under_runs(jpegs, tmp_path):
    """The checkout's tracked files, read-only but for a runs/ folder: a default training run, a second one (refused
    in one line, as one run, one record says), the curves, test.py, the sorter, export.py (timm; ONNX takes 5 s more),
    network.py and the demo quick start, each with its default outputs, all run there and change nothing outside
    runs/. One interpreter runs them all (as ``python ...`` would, with runpy): torch is imported once."""
    copy = str(tmp_path / "copy")
    for path in tracked_files():
        os.makedirs(os.path.join(copy, os.path.dirname(path)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, path), os.path.join(copy, path))
    os.makedirs(os.path.join(copy, "runs"))
    best = os.path.join("runs", "train", "model_best.pth.tar")
    train = ["train_main.py", jpegs, "-a", "ghostnet", "--epochs", "1", "-b", "16", "--seed", "0", *SMALL]
    commands = [
        (train, 0), (train, 2),
        (["-m", "common.report", os.path.join("runs", "train")], 0),
        (["test.py", "--ckpt", best, "--data", jpegs, "-j", "0"], 0),
        (["classify_test_data.py", "--ckpt", best, "--data", jpegs, "--out", os.path.join("runs", "sorted"), "-j", "0"],
         0),
        (["export.py", "--ckpt", best, "--format", "timm", "--output", os.path.join("runs", "timm")], 0),
        (["network.py", jpegs, "-a", "ghostnet", "--weights", best, "--epochs", "1", "-b", "16", *SMALL], 0),
        (["train_main.py", "--demo", "--epochs", "1", "-a", "ghostnet", "-b", "6", *SMALL], 0),
    ]
    before = snapshot(copy)
    set_read_only(copy, True)
    try:
        done = subprocess.run([sys.executable, "-c", DRIVER.format(commands=commands)], cwd=copy, text=True,
                              capture_output=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        set_read_only(copy, False)
    assert "=== all done" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"--output-dir {os.path.join('runs', 'train')!r} holds another run" in done.stderr
    assert snapshot(copy) == before
    runs = os.path.join(copy, "runs")
    for written in (best, os.path.join("runs", "train", "main.png"), os.path.join("runs", "test"),
                    os.path.join("runs", "sorted"), os.path.join("runs", "timm", "config.json"),
                    os.path.join("runs", "probe", "network.csv"), os.path.join("runs", "demo", "main.csv"),
                    os.path.join(demo.DEFAULT_DIR, demo.MARKER)):
        assert os.path.exists(os.path.join(copy, written)), (written, sorted(os.listdir(runs)))
