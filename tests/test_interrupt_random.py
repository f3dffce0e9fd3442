"""The writers stopped at random moments: SIGINT or SIGTERM at a seeded random time during the converter, valprep,
export.py and the comparison's CSV leaves every file either as it was or whole and new, never part of one, and no
temporary file; the same command run again finishes the job (issue 25). test_untrusted_writes.py stops each of them
at one fixed point and checks the one line; here the moment is drawn, a few per writer.

    python -m pytest tests/test_interrupt_random.py -q
"""
from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import threading
import time
from functools import partial

import onnx
import pytest

from common import files
from common.data import convert, valprep
from conftest import make_image_folder, random_state_dict
from inprocess import call_main
from test_interrupt import tree
from test_untrusted_writes import kaggle_solution, run_convert, valprep_main
from test_valprep import flat_folder

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Killed(BaseException):
    """A SIGTERM that came before the writer's own handler was in place (a real process would end there)."""


def stop_at(run, sig: int, delay: float) -> bool:
    """Call ``run()`` with ``sig`` sent to this process ``delay`` seconds after the start; True if the run was stopped,
    False if it finished first (a signal that comes after that is ignored)."""
    done = threading.Event()

    def outside_the_writer(signum, _frame):
        if not done.is_set():
            raise KeyboardInterrupt if signum == signal.SIGINT else Killed

    previous = {s: signal.signal(s, outside_the_writer) for s in SIGNALS}
    timer = threading.Timer(delay, lambda: done.is_set() or os.kill(os.getpid(), sig))
    timer.start()
    try:
        run()
        done.set()
        return False
    except SystemExit as exc:
        assert exc.code == 128 + sig
        return True
    except (KeyboardInterrupt, Killed):
        return True
    finally:
        done.set()
        timer.cancel()
        timer.join()
        for s, handler in previous.items():
            signal.signal(s, handler)


def moments(seed: int, duration: float, count: int = 3) -> list[tuple[int, float]]:
    """``count`` seeded (signal, delay) pairs, the delays drawn within the first 60% of ``duration`` seconds (the
    timed first run pays for warm-ups that the later ones do not, and a loaded machine varies the rest)."""
    rng = random.Random(seed)
    return [(rng.choice(SIGNALS), rng.uniform(0.0, 0.6 * duration)) for _ in range(count)]


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def no_traceback(capsys) -> None:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err


def test_the_converter_stopped_at_random_moments_leaves_only_whole_files_and_a_rerun_finishes(tmp_path, capsys):
    src = make_image_folder(str(tmp_path / "src"), 4, 2, size=(16, 16))
    fresh = str(tmp_path / "fresh")
    duration = timed(lambda: run_convert(src, fresh, "parquet", "--max-shard-mb", "0.001"))  # one file per image
    reference, stopped = tree(fresh), 0
    for n, (sig, delay) in enumerate(moments(25, duration)):
        out = str(tmp_path / f"out{n}")
        stopped += stop_at(partial(run_convert, src, out, "parquet", "--max-shard-mb", "0.001"), sig, delay)
        no_traceback(capsys)
        left = tree(out)
        for name, digest in left.items():  # each file is one of the finished run's, whole; the state parses
            if name.endswith(files.TEMP_SUFFIX):  # a signal between a temporary file's creation and its cleanup
                continue  # handler leaves it; the rerun removes it (the tree below equals the reference)
            if name == convert.STATE_NAME:
                with open(os.path.join(out, name)) as f:
                    json.load(f)
            else:
                assert reference.get(name) == digest, name
        if left != reference:  # stopped before the end (a finished folder is refused as a target)
            run_convert(src, out, "parquet", "--max-shard-mb", "0.001")
        assert tree(out) == reference
    assert stopped >= 1


def test_valprep_stopped_at_random_moments_keeps_every_image_whole_in_one_place_and_a_rerun_finishes(tmp_path,
                                                                                                      capsys):
    solution = kaggle_solution(tmp_path / "s.csv")
    fresh = flat_folder(tmp_path / "fresh")
    images = tree(fresh)
    duration = timed(lambda: valprep_main(fresh, "--labels", solution))
    reference, stopped = tree(fresh), 0
    for n, (sig, delay) in enumerate(moments(26, duration)):
        folder = flat_folder(tmp_path / f"run{n}")
        stopped += stop_at(partial(valprep_main, folder, "--labels", solution), sig, delay)
        no_traceback(capsys)
        left = tree(folder)
        # a temporary file may be left by a signal between its creation and its cleanup handler: the rerun removes it
        left = {name: digest for name, digest in left.items() if not name.endswith(files.TEMP_SUFFIX)}
        placed = {os.path.basename(name): digest for name, digest in left.items() if name != valprep.MANIFEST_NAME}
        assert placed == images  # each image once, whole, flat or in its class folder
        assert len(left) - (valprep.MANIFEST_NAME in left) == len(images)
        valprep_main(folder, "--labels", solution)
        assert tree(folder) == reference
    assert stopped >= 1


def onnx_metadata(path: str) -> dict[str, str]:
    model = onnx.load(path)
    onnx.checker.check_model(model)
    return {prop.key: prop.value for prop in model.metadata_props}


@pytest.mark.slow
def test_export_stopped_at_random_moments_leaves_the_earlier_file_or_a_whole_new_one(tmp_path, capsys):
    state = random_state_dict("squeezenet1_1", str(tmp_path / "sd.pth"), 4)
    output = str(tmp_path / "model.onnx")
    export = ["export.py", "--ckpt", state, "-a", "squeezenet1_1", "--val-resize-size", "36", "--val-crop-size", "32",
              "--output", output]
    duration = timed(lambda: call_main(*export))
    expected = onnx_metadata(output)
    model = onnx.load(output)  # the earlier file: another export, told apart by its metadata
    model.metadata_props[0].value = "an earlier export"
    onnx.save(model, output)
    with open(output, "rb") as f:
        earlier = f.read()
    stopped = 0
    for sig, delay in moments(27, duration, count=2):
        stopped += stop_at(lambda: call_main(*export), sig, delay)
        no_traceback(capsys)
        assert sorted(os.listdir(tmp_path)) == ["model.onnx", "sd.pth"]  # no temporary file
        with open(output, "rb") as f:
            if f.read() != earlier:
                assert onnx_metadata(output) == expected  # a whole new export
    assert stopped >= 1
    call_main(*export)
    assert onnx_metadata(output) == expected


def csv_models(path: str) -> list[str]:
    with open(path, newline="") as f:
        return [row["model"] for row in csv.DictReader(f)]


@pytest.mark.slow
def test_the_comparison_stopped_at_random_moments_keeps_a_whole_csv_and_a_rerun_lists_every_model(tmp_path, capsys):
    models = ["squeezenet1_1", "squeezenet1_0", "squeezenet1_1"]  # each fails at 16 px: fast rows
    def compare(out):
        return call_main("evaluation/compare.py", "--models", *models, "--input-size", "16", "--batch-size", "1",
                         "--repeats", "1", "--threads", "1", "--output-dir", out)
    fresh = str(tmp_path / "fresh")
    compare(fresh)  # the first run imports the models' code: the moments are drawn over a second one
    duration = timed(lambda: compare(fresh))
    reference, stopped = csv_models(os.path.join(fresh, "compare.csv")), 0
    for n, (sig, delay) in enumerate(moments(28, duration, count=2)):
        out = str(tmp_path / f"out{n}")
        shutil.copytree(fresh, out)  # an earlier comparison is there
        stopped += stop_at(partial(compare, out), sig, delay)
        no_traceback(capsys)
        assert set(os.listdir(out)) <= set(os.listdir(fresh))  # no temporary file
        listed = csv_models(os.path.join(out, "compare.csv"))
        assert listed == reference or listed == reference[:len(listed)]  # the earlier one, or whole rows so far
        compare(out)
        assert csv_models(os.path.join(out, "compare.csv")) == reference
    assert stopped >= 1
