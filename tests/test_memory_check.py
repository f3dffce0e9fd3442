"""A run that would allocate more than the machine has says so in one line before it starts (issue 25): the lower
estimate of common/models/memory.py against the free memory, for training and for test.py.

    python -m pytest tests/test_memory_check.py -q
"""
from __future__ import annotations

import os

import pytest
import torch

from common.errors import UserError
from common.models import factory, memory
from conftest import SMALL, make_image_folder, random_state_dict
from inprocess import call_main
from test_untrusted_writes import one_line_exit

HUGE = "100000000"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return make_image_folder(str(tmp_path_factory.mktemp("memory")), 2, 2, size=(16, 16))


def saved_on_a_real_forward(model: torch.nn.Module, size: int) -> int:
    """What autograd saves for two real images, per image: distinct storages that are not parameters."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(2, 3, size, size))
    return sum(seen.values()) // 2


def test_the_meta_estimate_equals_what_a_real_forward_saves():
    torch.manual_seed(0)
    real = factory.create_model("resnet18", 2)
    with torch.device("meta"):
        meta = factory.create_model("resnet18", 2)
    assert memory.saved_bytes_per_image(meta, 64) == saved_on_a_real_forward(real, 64) > 1_000_000
    assert memory.parameter_bytes(meta) == memory.parameter_bytes(real) == 4 * sum(p.numel() for p in real.parameters())


def test_the_refusal_comes_at_the_estimate_and_not_below(monkeypatch):
    with torch.device("meta"):
        model = factory.create_model("resnet18", 2)
    size = memory.RunSize(64, 224, training=True)
    needed = memory.parameter_bytes(model) * 3 + 64 * memory.per_image_bytes(model, size, torch.device("meta"))
    assert 64 * 20e6 < needed < 64 * 30e6  # ResNet-18 saves about 23 MB per 224 px image for its backward pass
    monkeypatch.setattr(memory, "available_bytes", lambda _device: needed)
    memory.check_fits(model, size, 64, torch.device("cpu"), optimizer_states=1)  # just fits: no refusal
    monkeypatch.setattr(memory, "available_bytes", lambda _device: needed - 1)
    with pytest.raises(UserError, match=r"^-b 64 at --train-crop-size 224 needs at least 1\.\d GiB for training, "
                                        r"but this machine has 1\.\d GiB free; lower -b \(or --train-crop-size\)\.$"):
        memory.check_fits(model, size, 64, torch.device("cpu"), optimizer_states=1)


def test_training_with_a_huge_batch_is_refused_in_one_line_before_any_work(folder, tmp_path, capsys):
    out = tmp_path / "out"
    err = one_line_exit(capsys, 2, lambda: call_main("train_main.py", folder, "-a", "resnet18", "-b", HUGE,
                                                     "--no-accel", "--epochs", "1", *SMALL, "--output-dir", str(out)))
    assert err.startswith(f"error: -b {HUGE} at --train-crop-size 32 needs at least ") and "lower -b" in err
    assert not os.listdir(out)  # no checkpoint, no log


def test_test_py_with_a_huge_batch_is_refused_before_the_first_batch(folder, tmp_path, capsys):
    state = random_state_dict("resnet18", str(tmp_path / "sd.pth"), 4)
    err = one_line_exit(capsys, 2, lambda: call_main("test.py", "--ckpt", state, "-a", "resnet18", "--data", folder,
                                                     "-b", HUGE, "--val-resize-size", "32", "--val-crop-size", "32",
                                                     "-j", "0", "--output-dir", str(tmp_path / "eval")))
    assert err.startswith(f"error: -b {HUGE} at --val-crop-size 32 needs at least ") and "for evaluation" in err
    assert not os.listdir(tmp_path / "eval")


def test_a_normal_run_is_not_refused(folder, tmp_path):
    state = random_state_dict("resnet18", str(tmp_path / "sd.pth"), 4)
    call_main("test.py", "--ckpt", state, "-a", "resnet18", "--data", folder, "-b", "4",
                          "--val-resize-size", "32", "--val-crop-size", "32", "-j", "0", "--output-dir",
                          str(tmp_path / "eval"))
    assert os.path.isfile(tmp_path / "eval" / "predictions.csv")
