"""test.py on folders whose classes are not the model's one for one: ImageNet-V2 (folders are class indices),
ImageNet-A/-R (200 synset folders: the logits restricted to them, as timm does), and the PyTorch ImageNet example's
1000-way head trained on fewer folders (folder i is output i, argmax over all outputs). Each top-1 is checked
against a hand computation from the model's own logits (random weights, tiny images).

    python -m pytest tests/test_eval_sets.py -q
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from common.data import transforms
from common.models import factory
from common.predict import evalsets
from conftest import refusal
from inprocess import call_main

FLAGS = ["-j", "0", "--no-amp", "--no-fold-bn", "-b", "50", "--val-resize-size", "32", "--val-crop-size", "32"]


def write_images(folder: str, n: int, seed: int) -> list[str]:
    """``n`` noisy 24x24 PNGs in ``folder``; their paths."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(os.path.join(folder, f"img{i}.png"))
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def logits_of(model: torch.nn.Module, paths: list[str]) -> torch.Tensor:
    """The model's logits on ``paths`` through the eval transform test.py uses (32 px): the hand computation."""
    transform = transforms.eval_transform(32, 32)
    pixels = torch.stack([transform(transforms.load_uint8(p)) for p in paths])
    with torch.inference_mode():
        return model.eval()(transforms.to_model_input(pixels, torch.device("cpu")))


@pytest.fixture(scope="module")
def imagenet_model(tmp_path_factory) -> tuple[str, torch.nn.Module]:
    """A random 1000-class GhostNet (width 0.25) saved as a bare state_dict, and the model."""
    torch.manual_seed(0)
    model = factory.create_model("ghostnet", 1000, width_mult=0.25).eval()
    path = str(tmp_path_factory.mktemp("in1k") / "ghostnet.pth")
    torch.save(model.state_dict(), path)
    return path, model


def model_flags(path: str) -> list[str]:
    return ["--ckpt", path, "-a", "ghostnet", "--width-mult", "0.25", *FLAGS]


def test_the_sets_are_recognised_from_their_folders(tmp_path):
    assert evalsets.recognise([str(i) for i in range(1000)], str(tmp_path), None) == "imagenet-v2"
    assert evalsets.recognise(sorted(evalsets.synsets("imagenet-r")), str(tmp_path), None) == "imagenet-r"
    assert evalsets.recognise(list(evalsets.synsets()), str(tmp_path / "imagenet-sketch"), None) == "imagenet-sketch"
    assert evalsets.recognise(list(evalsets.synsets()), str(tmp_path / "imagenet"), None) is None
    assert evalsets.recognise(["3", "17"], str(tmp_path), "imagenet-v2") == "imagenet-v2"


@pytest.mark.slow
def test_a_v2_style_folder_gives_the_hand_computed_top1(imagenet_model, tmp_path):
    path, model = imagenet_model
    staged = write_images(str(tmp_path / "staged"), 6, seed=1)
    predicted = logits_of(model, staged).argmax(dim=1).tolist()
    # the first three images in the folder of their predicted class index (right), the others one class further
    folders = [p if i < 3 else (p + 1) % 1000 for i, p in enumerate(predicted)]
    for i, (image, folder) in enumerate(zip(staged, folders)):
        os.makedirs(tmp_path / "v2" / str(folder), exist_ok=True)
        os.rename(image, tmp_path / "v2" / str(folder) / f"img{i}.png")
    expected = 100.0 * sum(int(f) == p for f, p in zip(folders, predicted)) / len(folders)
    result, out = call_main("test.py", *model_flags(path), "--data", str(tmp_path / "v2"), "--eval-set",
                            "imagenet-v2", "--output-dir", str(tmp_path / "out"))
    assert expected == 50.0 and result["top1"] == pytest.approx(expected) and result["eval_set"] == "imagenet-v2"
    assert "=> ImageNet-V2" in out


@pytest.mark.slow
def test_an_a_style_folder_restricts_the_logits_to_its_200_classes(imagenet_model, tmp_path):
    path, model = imagenet_model
    subset = list(evalsets.synsets("imagenet-a"))
    paths = [p for i, wnid in enumerate(subset) for p in write_images(str(tmp_path / "a" / wnid), 1, seed=i)]
    logits = logits_of(model, paths)
    outputs = [list(evalsets.synsets()).index(w) for w in subset]
    restricted = logits[:, outputs]
    targets = torch.arange(len(subset))
    expected = 100.0 * float((restricted.argmax(dim=1) == targets).float().mean())
    expected_loss = float(torch.nn.functional.cross_entropy(restricted, targets))
    result, out = call_main("test.py", *model_flags(path), "--data", str(tmp_path / "a"), "--output-dir",
                            str(tmp_path / "out"))
    assert result["eval_set"] == "imagenet-a" and result["images"] == 200
    assert result["top1"] == pytest.approx(expected) and result["loss"] == pytest.approx(expected_loss, rel=1e-4)
    assert expected > 100.0 * float((logits.argmax(dim=1) == torch.tensor(outputs)).float().mean())  # it matters
    assert "ImageNet-A: top-1, top-5 and loss over the logits of its 200 classes only" in out


@pytest.mark.slow
def test_a_1000_way_head_of_the_pytorch_example_is_evaluated_over_the_folders_classes(tmp_path):
    """The checkpoint as the example's main.py saves it under DDP: ``module.`` keys, ``best_acc1`` a tensor."""
    torch.manual_seed(0)
    model = factory.create_model("resnet18", 1000).eval()
    with torch.no_grad():  # outputs 0..3 compete, the others never win: output 3 is beyond the 3 folders
        model.fc.weight[4:].zero_()
        model.fc.bias[4:] = -50.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = str(tmp_path / "checkpoint.pth.tar")
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "best_acc1": torch.tensor(33.3), "optimizer": optimizer.state_dict(),
                "scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 30).state_dict()}, path)
    folders = ["cat", "dog", "fox"]
    paths = {c: write_images(str(tmp_path / "data" / "val" / c), 4, seed=i) for i, c in enumerate(folders)}
    logits = logits_of(model, [p for c in folders for p in paths[c]])
    targets = torch.arange(3).repeat_interleave(4)
    expected = 100.0 * float((logits.argmax(dim=1) == targets).float().mean())  # the example's accuracy()
    result, out = call_main("test.py", "--ckpt", path, *FLAGS, "--data", str(tmp_path / "data"), "--output-dir",
                            str(tmp_path / "out"))
    assert result["top1"] == pytest.approx(expected) and result["images"] == 12
    assert (logits.argmax(dim=1) == 3).any()  # some images go to an output no folder holds, and count as wrong
    assert "evaluated as the PyTorch ImageNet example does, class folder i is output i" in out


def test_a_folder_that_is_not_the_named_set_is_refused_in_one_line(imagenet_model, tmp_path):
    path, _ = imagenet_model
    write_images(str(tmp_path / "r" / "n99999999"), 1, seed=0)
    from inprocess import load_script

    script = load_script("test.py")
    args = script.get_args_parser().parse_args([*model_flags(path), "--data", str(tmp_path / "r"), "--eval-set",
                                                "imagenet-r", "--output-dir", str(tmp_path / "out")])
    assert "not among ImageNet-R's 200 synsets" in refusal(lambda: script.main(args))
