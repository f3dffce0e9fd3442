"""Every architecture that -a accepts round-trips its checkpoint: saved the way training saves it, and loaded back
the way each consumer loads it (test.py, the sorter and export.py through ``loading.load_model``; --resume and -e
through ``resume.restore``; --weights and --finetune-from through ``factory.create_model``).

The sweep over every name builds the models with their tensors on the meta device (no memory, no init time) and
compares names, shapes and the state_dict's ``_metadata``; a few cheap models are also built for real and must give
equal outputs; one MNASNet is trained and used end to end.
"""
from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from common.models import checkpoint, factory, loading
from common.train import loop, resume
from conftest import SMALL, run_script
from inprocess import call_main

CLASSES = ["a", "b", "c"]
# Cheap enough to build for real and run on a small batch: MNASNet versions its state, GoogLeNet has auxiliary
# heads, SqueezeNet a convolutional head.
REAL = {"mnasnet0_5": 64, "ghostnet": 32, "googlenet": 64, "squeezenet1_0": 64}


@contextlib.contextmanager
def tensors_on_meta():
    """Build modules whose parameters and buffers live on the meta device, without random init. Unlike
    ``torch.device("meta")``, code that computes with tensors while building (RegNet's widths) runs on the CPU."""
    add_param, add_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def param(self, name, value):
        add_param(self, name, None if value is None else nn.Parameter(value.to("meta"), value.requires_grad))

    def buffer(self, name, value, persistent=True):
        add_buffer(self, name, None if value is None else value.to("meta"), persistent)

    inits = {name: getattr(nn.init, name) for name in dir(nn.init) if name.endswith("_") and not name.startswith("_")}
    nn.Module.register_parameter, nn.Module.register_buffer = param, buffer
    for name in inits:  # random init of meta tensors goes through slow Python reference code, and means nothing
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = add_param, add_buffer
        for name, function in inits.items():
            setattr(nn.init, name, function)


def fake_run(model: nn.Module) -> SimpleNamespace:
    """What ``loop.training_state`` and ``resume.restore`` read of a run: the model wrapped as DataParallel wraps
    it, an optimizer and a schedule."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return SimpleNamespace(model=nn.DataParallel(model), optimizer=optimizer, scheduler=scheduler, classes=CLASSES,
                           ema=None)


def save_trained(arch: str, folder: str) -> tuple[nn.Module, str]:
    """A fresh ``arch`` with 3 classes, saved through the training path's checkpoint functions."""
    model = factory.create_model(arch, len(CLASSES))
    cfg = SimpleNamespace(arch=arch, saved_args={"arch": arch})
    state = loop.training_state(fake_run(model), cfg, epoch=1, step=0, best_acc1=50.0)
    return model, checkpoint.save_checkpoint(state, folder, is_best=False)


def consumers(arch: str, path: str, bare: str | None = None) -> dict[str, nn.Module]:
    """The model each consumer rebuilds from ``path`` (a training checkpoint) or ``bare`` (a DataParallel
    state_dict, with its ``module.`` prefixes)."""
    run = fake_run(factory.create_model(arch, len(CLASSES)))
    resume.restore(path, run, arch)
    models = {"test.py, sorter, export.py": loading.load_model(loading.ModelSource(path=path)).model,
              "--resume, -e": run.model.module,
              "--weights, --finetune-from": factory.create_model(arch, len(CLASSES), weights_path=path)}
    if bare:
        models["bare state_dict with -a"] = loading.load_model(loading.ModelSource(path=bare, arch=arch)).model
    return models


def save_bare(model: nn.Module, folder: str) -> str:
    path = os.path.join(folder, "bare.pth")
    torch.save(nn.DataParallel(model).state_dict(), path)
    return path


def assert_same_state(model: nn.Module, reference: nn.Module, who: str, values: bool) -> None:
    got, want = model.state_dict(), reference.state_dict()
    assert list(got) == list(want), who
    assert got._metadata == want._metadata, who  # the versions MNASNet and BatchNorm read
    for key, value in want.items():
        assert got[key].shape == value.shape and got[key].dtype == value.dtype, (who, key)
        assert not values or torch.equal(got[key], value), (who, key)


@pytest.mark.slow
@pytest.mark.parametrize("arch", factory.available_archs())
def test_every_architecture_checkpoint_loads_back_in_every_consumer(arch, tmp_path, capsys):
    with tensors_on_meta():
        model, path = save_trained(arch, str(tmp_path))
        for who, loaded in consumers(arch, path).items():
            assert_same_state(loaded, model, who, values=False)


@pytest.fixture
def one_thread():
    """Forward passes of small models on a loaded 2-core machine run ~100x faster on one thread than on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(REAL))
def test_cheap_architectures_give_equal_outputs_after_the_round_trip(arch, tmp_path, capsys, one_thread):
    torch.manual_seed(0)
    model, path = save_trained(arch, str(tmp_path))
    images = torch.rand(2, 3, REAL[arch], REAL[arch])
    with torch.no_grad():
        want = model.eval()(images)
        for who, loaded in consumers(arch, path, save_bare(model, str(tmp_path))).items():
            assert_same_state(loaded, model, who, values=True)
            assert torch.equal(loaded.eval()(images), want), who


def test_state_dict_metadata_survives_prefix_stripping_and_plain_dicts():
    model = factory.create_model("mnasnet0_5", 3)
    wrapped = nn.DataParallel(model).state_dict()
    stripped = checkpoint.strip_prefixes(wrapped)
    assert stripped._metadata == model.state_dict()._metadata
    for state in (stripped, dict(stripped)):  # dict(): a tool that rebuilt it without _metadata
        fresh = factory.create_model("mnasnet0_5", 3)
        checkpoint.load_exact(fresh, state, "x.pth", "")
        assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


@pytest.mark.slow
def test_a_trained_mnasnet_is_used_by_test_py_and_resumed(tiny_data, tmp_path, one_thread):
    out = str(tmp_path / "run")
    run_script("train_main.py", tiny_data, "-a", "mnasnet0_5", "--epochs", "1", "-b", "32", "--lr", "0.01",
               "--output-dir", out, *SMALL, env={"OMP_NUM_THREADS": "1"})
    ckpt = os.path.join(out, "checkpoint.pth.tar")
    _, printed = call_main("test.py", os.path.join(tiny_data, "val"), "--ckpt", ckpt, "-j", "0",
                           "--output-dir", str(tmp_path / "pred"))
    assert "on 40 images" in printed
    _, printed = call_main("train_main.py", tiny_data, "-a", "mnasnet0_5", "-e", "--resume", ckpt, "-b", "32",
                           "--output-dir", str(tmp_path / "eval"), *SMALL)
    assert f"resumed from {ckpt}" in printed
