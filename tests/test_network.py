"""network.py: a new head on a frozen backbone, from a train_main.py checkpoint or from hub-cached ImageNet weights.

    python -m pytest tests/test_network.py -q
"""
from __future__ import annotations

import csv
import os
import socket

import pytest
import torch
import torch.nn as nn
import torchvision
from torch.utils.data import DataLoader

from common.models import factory
from common.train.loop import PassConfig
from common.train.watch import CSV_FIELDS
from conftest import SMALL
from inprocess import call_main, load_script

HEAD = "classifier."  # GhostNet's head
PROBE = ["-a", "ghostnet", "-b", "16", "--lr", "0.5", "--seed", "0", "--epochs", "1", *SMALL]


def probe(data: str, out: str, *extra: str) -> str:
    call_main("network.py", data, "--output-dir", out, *PROBE, *extra)
    return out


@pytest.fixture(scope="module")
def cached_run(tiny_data, trained_ckpt, tmp_path_factory) -> str:
    """One epoch on cached features (the default), backbone from the train_main.py checkpoint."""
    return probe(tiny_data, str(tmp_path_factory.mktemp("cached")), "--weights", trained_ckpt)


@pytest.fixture(scope="module")
def plain_run(tiny_data, trained_ckpt, tmp_path_factory) -> str:
    """The same epoch, running the backbone on every batch."""
    return probe(tiny_data, str(tmp_path_factory.mktemp("plain")), "--weights", trained_ckpt, "--no-cache-features")


def state(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("run", ["cached_run", "plain_run"])
def test_only_head_changes_backbone_weights_and_bn_buffers_stay_bit_identical(run, trained_ckpt, request):
    before = state(trained_ckpt)
    after = state(os.path.join(request.getfixturevalue(run), "checkpoint.pth.tar"))
    assert before.keys() == after.keys()
    backbone = [k for k in before if not k.startswith(HEAD)]
    assert any("running_mean" in k for k in backbone) and any("num_batches_tracked" in k for k in backbone)
    assert [k for k in backbone if not torch.equal(before[k], after[k])] == []
    assert not torch.equal(before[HEAD + "weight"], after[HEAD + "weight"])


@pytest.mark.slow
def test_cached_features_and_plain_path_give_the_same_head_after_one_epoch(cached_run, plain_run):
    cached = state(os.path.join(cached_run, "checkpoint.pth.tar"))
    plain = state(os.path.join(plain_run, "checkpoint.pth.tar"))
    for key in (HEAD + "weight", HEAD + "bias"):
        torch.testing.assert_close(cached[key], plain[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_checkpoint_has_the_training_format_and_the_optimizer_holds_only_the_head(cached_run):
    ckpt = torch.load(os.path.join(cached_run, "model_best.pth.tar"), map_location="cpu", weights_only=True)
    assert {"epoch", "arch", "state_dict", "best_acc1", "optimizer", "scheduler", "args", "classes"} <= ckpt.keys()
    assert (ckpt["arch"], ckpt["epoch"], ckpt["classes"]) == ("ghostnet", 1, ["class0", "class1", "class2", "class3"])
    assert (ckpt["args"]["val_resize_size"], ckpt["args"]["val_crop_size"]) == (32, 32)
    assert ckpt["state_dict"][HEAD + "weight"].shape == (4, 1280)
    assert ckpt["optimizer"]["param_groups"][0]["params"] == [0, 1]  # head weight and bias, nothing else
    with open(os.path.join(cached_run, "network.csv")) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == CSV_FIELDS and len(rows) == 1
    assert float(rows[0]["val_top1"]) == pytest.approx(ckpt["best_acc1"], abs=1e-3)


@pytest.mark.slow
def test_checkpoint_loads_in_test_py_with_the_accuracy_network_py_reported(cached_run, tiny_data, tmp_path):
    with open(os.path.join(cached_run, "network.csv")) as f:
        last = list(csv.DictReader(f))[-1]
    result, out = call_main("test.py", "--ckpt", os.path.join(cached_run, "checkpoint.pth.tar"), "--data",
                            tiny_data, "-j", "0", "--output-dir", str(tmp_path))
    assert "CenterCrop(32)" in out  # the sizes come from the checkpoint, no flags needed
    assert result["images"] == int(last["val_images"]) == 40
    assert result["top1"] == pytest.approx(float(last["val_top1"]), abs=1e-3)
    assert result["loss"] == pytest.approx(float(last["val_loss"]), rel=1e-4)


@pytest.mark.slow
def test_pretrained_backbone_comes_from_the_hub_cache(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    path = factory.cache_path(factory.weights_url("resnet18"))
    os.makedirs(os.path.dirname(path))
    torch.manual_seed(1)
    saved = torchvision.models.resnet18().state_dict()  # random stand-in for the published weights
    torch.save(saved, path)
    out = probe(tiny_data, str(tmp_path / "out"), "--pretrained", "-a", "resnet18")
    after = state(os.path.join(out, "checkpoint.pth.tar"))
    assert after["fc.weight"].shape == (4, 512)
    assert all(torch.equal(saved[k], after[k]) for k in saved if not k.startswith("fc."))


def test_pretrained_offline_is_one_error_line_naming_the_cache_file_and_weights_flag(tiny_data, tmp_path,
                                                                                      monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # never hang on a network that drops packets instead of refusing
    try:
        with pytest.raises(SystemExit) as exc:
            probe(tiny_data, str(tmp_path / "out"), "--pretrained", "-a", "resnet18")
    finally:
        socket.setdefaulttimeout(previous)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert exc.value.code == 2 and len(errors) == 1 and "Traceback" not in err
    assert factory.cache_path(factory.weights_url("resnet18")) in errors[0] and "--weights" in errors[0]


def test_features_are_cached_only_when_the_head_gives_the_model_output():
    network = load_script("network.py")
    torch.manual_seed(0)
    images = [(torch.randn(3, 2, 2), i % 3, f"img{i}") for i in range(10)]
    loader = DataLoader(images, batch_size=4)
    ctx = network.distributed.single_process(no_accel=True)
    linear_last = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    feats = network.extract_features(linear_last, "1", loader, ctx, PassConfig("", 100))
    torch.testing.assert_close(feats.features, torch.stack([x for x, _, _ in images]).flatten(1))
    assert feats.targets.tolist() == [i % 3 for i in range(10)]
    relu_after = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.ReLU())  # like SqueezeNet: layers after the head
    assert network.extract_features(relu_after, "1", loader, ctx, PassConfig("", 100)) is None


def test_cache_features_with_train_augment_is_refused(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        probe(tiny_data, str(tmp_path), "--cache-features", "--train-augment")
    assert exc.value.code == 2 and "--train-augment" in capsys.readouterr().err
