"""Shared fixtures: tiny generated ImageFolders and a checkpoint trained on one, all on the CPU."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

try:  # the fuzz tests' profiles (tests/test_fuzz.py); registered here, where --hypothesis-profile can find them
    from hypothesis import HealthCheck, settings
except ImportError:
    pass
else:
    settings.register_profile("fuzz-quick", max_examples=25, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("fuzz-thorough", max_examples=1250, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fuzz-quick"))



def pytest_configure(config) -> None:
    """Under pytest-xdist (``-n 2``, as CI runs the suite) each worker and every process it starts computes on one
    thread: two workers of two threads each on 2 cores spin-wait on each other and run several times slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


COLORS = ((200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30))
# The flags that make a 32-px GhostNet run on the tiny folders take seconds on a 2-core CPU.
SMALL = ["--train-crop-size", "32", "--val-resize-size", "32", "--val-crop-size", "32", "-j", "0", "-p", "100"]


def refusal(parse, *argv: str) -> str:
    """The one-line message with which ``parse(*argv)`` refuses bad flags: argparse's ``error:`` line (exit status
    2, from a ``type=`` check) or a UserError's text (a check of several flags); fails when nothing is refused."""
    import contextlib
    import io

    from common.errors import UserError

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parse(*argv)
    except SystemExit as exc:
        assert exc.code == 2, f"argparse exited with {exc.code}"
        errors = [line for line in stderr.getvalue().splitlines() if "error:" in line]
        assert len(errors) == 1, stderr.getvalue()
        return errors[0]
    except UserError as exc:
        assert "\n" not in str(exc)
        return str(exc)
    raise AssertionError(f"{argv} was accepted")


def random_state_dict(arch: str, path: str, num_classes: int = 1000, seed: int = 0) -> str:
    """A seeded, randomly initialised state_dict of ``arch`` saved at ``path`` (no weights can be downloaded here)."""
    import torch

    from common.models import factory

    torch.manual_seed(seed)
    torch.save(factory.create_model(arch, num_classes).state_dict(), path)
    return path


def make_image_folder(root: str, train_per_class: int = 40, val_per_class: int = 10, classes=COLORS,
                      size: tuple[int, int] = (40, 48), seed: int = 0, ext: str = "png") -> str:
    """Write ``root/{train,val}/class<i>/img<j>.<ext>``: noisy images whose mean colour is the class."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c, color in enumerate(classes):
            folder = os.path.join(root, split, f"class{c}")
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                pixels = np.array(color)[None, None, :] + rng.normal(0, 40, (size[0], size[1], 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(os.path.join(folder, f"img{i}.{ext}"))
    return root


@pytest.fixture(scope="session")
def jpegs(tmp_path_factory) -> str:
    """4 colour classes of 48x40 JPEGs: 8 train and 5 val images each (read-only; the export and int8 tests')."""
    return make_image_folder(str(tmp_path_factory.mktemp("jpegs")), 8, 5, ext="jpg")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """4 colour classes, 40 train and 10 val PNG images each (read-only: tests must not modify it)."""
    return make_image_folder(str(tmp_path_factory.mktemp("tiny_data")))


@pytest.fixture(scope="session")
def trained_ckpt(tiny_data, tmp_path_factory) -> str:
    """``model_best.pth.tar`` of a 1-epoch GhostNet run with train_main.py on ``tiny_data`` (32 px)."""
    out = str(tmp_path_factory.mktemp("trained"))
    run_script("train_main.py", tiny_data, "-a", "ghostnet", "--epochs", "1", "-b", "16", "--lr", "0.02",
               "--seed", "0", "--output-dir", out, *SMALL)
    return os.path.join(out, "model_best.pth.tar")


def run_script(script: str, *args: str, launcher: list[str] | None = None, env: dict | None = None,
               check: bool = True, timeout: float = 180, cwd: str = ROOT) -> subprocess.CompletedProcess:
    """Run one of the project's scripts in a fresh interpreter (or under ``launcher``, e.g. torchrun), in ``cwd``.

    The script runs in its own process group, killed whole on timeout so that no worker outlives a hung test.
    """
    cmd = (launcher or [sys.executable]) + [os.path.join(ROOT, script), *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{' '.join(cmd)} timed out after {timeout} s:\n{stdout}\n{stderr}") from None
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def fill_and_check(args, archs: list[str]) -> None:
    """What ``launch.prepare`` does with a training script's flags before the data source: fill the defaults that
    depend on other flags, check them, and resolve the data source."""
    from common.cli import defaults, options

    defaults.fill_training_defaults(args)
    options.check_training_args(args, archs)
    if args.dummy or args.data:
        args.data_source = defaults.data_source(args)
