"""export.py --format timm: a folder that timm builds the model from (``local-dir:``) with the same logits, its config
giving timm's eval transform our preprocessing, a model card, and nothing written when the check or the architecture
fails.

    python -m pytest tests/test_timm_export.py -q
"""
from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

from common.models import factory
from conftest import random_state_dict, refusal
from inprocess import call_main, load_script

timm = pytest.importorskip("timm")
pytest.importorskip("safetensors")

CLASSES = ["daisy", "rose", "tulip", "sunflower"]


def ghostnet_checkpoint(path: str) -> str:
    """A training checkpoint of GhostNet at width 0.5 as train_*.py writes it: classes, args, best_acc1."""
    torch.manual_seed(0)
    model = factory.create_model("ghostnet", len(CLASSES), width_mult=0.5)
    args = {"width_mult": 0.5, "data": "/data/flowers", "epochs": 3, "lr": 0.1, "batch_size": 64,
            "val_resize_size": 36, "val_crop_size": 32, "interpolation": "bicubic"}
    torch.save({"epoch": 3, "arch": "ghostnet", "state_dict": model.state_dict(), "best_acc1": 62.5, "args": args,
                "classes": CLASSES}, path)
    return path


@pytest.fixture(scope="module")
def ghostnet_export(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("timm_export")
    ckpt = ghostnet_checkpoint(str(work / "model_best.pth.tar"))
    result, out = call_main("export.py", "--ckpt", ckpt, "--format", "timm", "--output", str(work / "hub"), "-b", "4")
    return {"ckpt": ckpt, "folder": str(work / "hub"), "result": result, "out": out}


def test_timm_builds_the_exported_ghostnet_with_the_same_logits(ghostnet_export):
    folder = ghostnet_export["folder"]
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    ours = factory.create_model("ghostnet", len(CLASSES), width_mult=0.5).eval()
    ours.load_state_dict(torch.load(ghostnet_export["ckpt"], weights_only=True)["state_dict"])
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=1e-5)
    assert type(theirs).__name__ == "GhostNet" and theirs.pretrained_cfg["label_names"] == CLASSES
    assert ghostnet_export["result"]["timm_name"] == "ghostnet_050" and ghostnet_export["result"]["max_diff"] < 1e-5


def test_timms_eval_transform_from_the_config_is_the_checkpoints(ghostnet_export):
    model = timm.create_model(f"local-dir:{ghostnet_export['folder']}", pretrained=True)
    cfg = timm.data.resolve_data_config({}, model=model)
    assert tuple(cfg["input_size"]) == (3, 32, 32) and cfg["interpolation"] == "bicubic"
    assert math.floor(32 / cfg["crop_pct"]) == 36  # timm resizes to floor(crop / crop_pct): our 36 px
    assert tuple(cfg["mean"]) == pytest.approx((0.485, 0.456, 0.406))
    with open(os.path.join(ghostnet_export["folder"], "config.json")) as f:
        config = json.load(f)
    assert (config["architecture"], config["num_classes"], config["label_names"]) == ("ghostnet_050", 4, CLASSES)


def test_the_model_card_names_the_data_the_recipe_and_the_val_top1(ghostnet_export):
    with open(os.path.join(ghostnet_export["folder"], "README.md")) as f:
        card = f.read()
    assert card.startswith("---\nlibrary_name: timm\n")
    for shown in ("/data/flowers", "62.500%", "`epochs`: 3", "`lr`: 0.1", "daisy, rose, tulip, sunflower"):
        assert shown in card


@pytest.mark.slow
def test_a_resnet18_state_dict_exports_to_timms_resnet18(tmp_path):
    weights = random_state_dict("resnet18", str(tmp_path / "r.pth"), 4, seed=1)
    folder = str(tmp_path / "r")
    result, _ = call_main("export.py", "--ckpt", weights, "-a", "resnet18", "--format", "timm", "--output", folder,
                          "--val-resize-size", "32", "--val-crop-size", "32", "-b", "2")
    assert result["timm_name"] == "resnet18" and result["agreement"] == 100.0
    ours = factory.create_model("resnet18", 4).eval()
    ours.load_state_dict(torch.load(weights, weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(x), ours(x),
                                   rtol=0, atol=1e-5)


def test_an_architecture_timm_lacks_is_refused_by_name_and_nothing_is_written(tmp_path):
    weights = random_state_dict("mobilenet_v3_small", str(tmp_path / "m.pth"), 4)
    export = load_script("export.py")
    args = export.get_args_parser().parse_args(["--ckpt", weights, "-a", "mobilenet_v3_small", "--format", "timm",
                                                "--output", str(tmp_path / "m"), "--val-crop-size", "32"])
    message = refusal(lambda: export.export(args, export.check_args(args)))
    assert "mobilenet_v3_small" in message and "--format onnx" in message
    assert sorted(os.listdir(tmp_path)) == ["m.pth"]


def test_a_failed_check_leaves_the_earlier_folder_as_it_was(ghostnet_export, tmp_path, monkeypatch):
    from common.models import timm_folder

    folder = str(tmp_path / "hub")
    shutil.copytree(ghostnet_export["folder"], folder)
    before = {n: open(os.path.join(folder, n), "rb").read() for n in os.listdir(folder)}
    monkeypatch.setattr(timm_folder, "load_with_timm", lambda path: (lambda x: torch.zeros(len(x), 4)))
    export = load_script("export.py")
    args = export.get_args_parser().parse_args(["--ckpt", ghostnet_export["ckpt"], "--format", "timm", "--output",
                                                folder, "-b", "2"])
    assert "was not written" in refusal(lambda: export.export(args, export.check_args(args)))
    assert {n: open(os.path.join(folder, n), "rb").read() for n in os.listdir(folder)} == before
    assert sorted(os.listdir(tmp_path)) == ["hub"]  # no temporary folder left beside it


def test_timm_output_flags_are_refused_in_one_line(ghostnet_export, tmp_path):
    export = load_script("export.py")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    for extra, expected in ((["--output", str(tmp_path / "notes")], "other files"),
                            (["--output", str(tmp_path / "x"), "--with-preprocess"], "--with-preprocess")):
        args = export.get_args_parser().parse_args(["--ckpt", ghostnet_export["ckpt"], "--format", "timm", *extra])
        assert expected in refusal(export.check_args, args)
    hub = ghostnet_export["folder"]  # a timm folder is also a checkpoint test.py reads: not its own output
    args = export.get_args_parser().parse_args(["--ckpt", hub, "-a", "ghostnet", "--format", "timm", "--output", hub])
    assert "which this run reads" in refusal(export.check_args, args)
