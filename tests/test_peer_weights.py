"""Checkpoints holding raw and EMA weights, as timm's train.py, torchvision's references and this project save them:
the default and --ema / --no-ema pick the set test.py, the sorter and export.py load, and the header says which.

    python -m pytest tests/test_peer_weights.py -q
"""
from __future__ import annotations

import argparse

import pytest
import torch

from common.models import factory, loading
from conftest import refusal

ARCH = ["ghostnet", 4, 0.25]


def two_sets() -> tuple[dict, dict]:
    torch.manual_seed(0)
    raw = factory.create_model(ARCH[0], ARCH[1], width_mult=ARCH[2]).state_dict()
    ema = {k: v + 0.01 if v.is_floating_point() else v.clone() for k, v in raw.items()}
    return raw, ema


def peer_files(tmp_path) -> dict[str, tuple[str, dict, dict]]:
    """The same raw and EMA weights as timm's CheckpointSaver, torchvision's references (an AveragedModel's
    state_dict: ``module.`` keys and ``n_averaged``) and this project's loop (``best_weights``) save them."""
    raw, ema = two_sets()
    kinds = {
        "timm": {"epoch": 3, "arch": "ghostnetv1", "state_dict": raw, "state_dict_ema": ema, "metric": 40.0,
                 "args": argparse.Namespace(model="ghostnet")},
        "torchvision": {"model": raw, "model_ema": {"n_averaged": torch.tensor(7),
                                                    **{f"module.{k}": v for k, v in ema.items()}},
                        "epoch": 3, "args": argparse.Namespace(model="ghostnet")},
        "ours": {"epoch": 3, "arch": "ghostnet", "state_dict": raw, "state_dict_ema": ema, "best_weights": "raw",
                 "args": {"width_mult": 0.25}, "best_acc1": 40.0},
    }
    out = {}
    for kind, ckpt in kinds.items():
        path = str(tmp_path / f"{kind}.pth")
        torch.save(ckpt, path)
        out[kind] = (path, raw, ema)
    return out


def loaded_weights(path: str, ema: bool | None) -> tuple[dict, str]:
    loaded = loading.load_model(loading.ModelSource(path, arch="ghostnet", width_mult=0.25, ema=ema))
    return loaded.model.state_dict(), loaded.note


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("kind", ["timm", "torchvision", "ours"])
def test_raw_weights_by_default_and_ema_weights_with_the_flag(kind, tmp_path):
    path, raw, ema = peer_files(tmp_path)[kind]
    state, note = loaded_weights(path, None)
    assert same(state, raw) and "raw weights (" in note and "--ema" in note
    state, note = loaded_weights(path, True)
    key = "model_ema" if kind == "torchvision" else "state_dict_ema"
    assert same(state, ema) and f"EMA weights ({key}, --ema)" in note
    state, note = loaded_weights(path, False)
    assert same(state, raw) and "--no-ema" in note


def test_our_checkpoint_marking_ema_as_better_gives_ema_unless_no_ema(tmp_path):
    raw, ema = two_sets()
    path = str(tmp_path / "ema.pth.tar")
    torch.save({"epoch": 3, "arch": "ghostnet", "state_dict": raw, "state_dict_ema": ema, "best_weights": "ema",
                "args": {"width_mult": 0.25}}, path)
    state, note = loaded_weights(path, None)
    assert same(state, ema) and "the checkpoint marks them as the better ones" in note
    assert same(loaded_weights(path, False)[0], raw)


def test_ema_on_a_file_without_ema_weights_is_refused(tmp_path):
    raw, _ = two_sets()
    path = str(tmp_path / "plain.pth")
    torch.save({"model": raw, "model_ema": {"n_averaged": torch.tensor(0)}}, path)  # an update count, no weights
    assert "no EMA weights" in refusal(loaded_weights, path, True)
    assert loaded_weights(path, None)[1] == ""  # one set of weights: nothing to say


def test_test_py_header_says_which_weights_and_the_top1_follows_them(tmp_path):
    from conftest import make_image_folder
    from inprocess import call_main

    folder = make_image_folder(str(tmp_path / "data"), 1, 2, size=(32, 32))
    path, _, _ = peer_files(tmp_path)["timm"]
    flags = ["--ckpt", path, "-a", "ghostnet", "--width-mult", "0.25", "--data", folder, "-j", "0",
             "--val-resize-size", "32", "--val-crop-size", "32"]
    results = {}
    for choice in ("--no-ema", "--ema"):
        results[choice], out = call_main("test.py", *flags, choice, "--output-dir", str(tmp_path / choice))
        header = next(line for line in out.splitlines() if line.startswith("=> ghostnet"))
        assert ("EMA weights (state_dict_ema, --ema)" if choice == "--ema" else "raw weights (state_dict, --no-ema)"
                ) in header
    assert results["--ema"]["loss"] != results["--no-ema"]["loss"]


def test_files_written_by_the_peers_own_savers_load_raw_and_ema(tmp_path):
    """timm's own CheckpointSaver (with a ModelEmaV3, as timm's train.py saves each epoch) and torch's AveragedModel
    (which torchvision's references' ExponentialMovingAverage subclasses, saved as their train.py does): both sets
    load back equal to the models that were saved."""
    timm_utils = pytest.importorskip("timm.utils")
    torch.manual_seed(0)
    model = factory.create_model(ARCH[0], ARCH[1], width_mult=ARCH[2])
    ema = timm_utils.ModelEmaV3(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    ema.update(model)
    saver = timm_utils.CheckpointSaver(model, torch.optim.SGD(model.parameters(), lr=0.1), args=argparse.Namespace(
        model="ghostnet"), model_ema=ema, checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path), max_history=1)
    saver.save_checkpoint(epoch=0, metric=40.0)
    timm_file = str(tmp_path / "last.pth.tar")
    assert same(loaded_weights(timm_file, None)[0], model.state_dict())
    assert same(loaded_weights(timm_file, True)[0], ema.module.state_dict())

    averaged = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    averaged.update_parameters(model)
    tv_file = str(tmp_path / "torchvision.pth")
    torch.save({"model": model.state_dict(), "model_ema": averaged.state_dict(), "epoch": 0,
                "args": argparse.Namespace(model="ghostnet")}, tv_file)
    assert same(loaded_weights(tv_file, True)[0], averaged.module.state_dict())
    assert same(loaded_weights(tv_file, False)[0], model.state_dict())
