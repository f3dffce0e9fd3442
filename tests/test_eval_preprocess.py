"""Each weight's own preprocessing: torchvision's weights.transforms(), GhostNet's release, checkpoints, flags.

    python -m pytest tests/test_eval_preprocess.py -q
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from common.data import transforms
from common.models import factory, loading, preprocess
from conftest import refusal
from inprocess import call_main, load_script
from tests.conftest import fill_and_check

DEFAULT_WEIGHTS = sorted({str(torchvision.models.get_model_weights(a).DEFAULT): a
                          for a in torchvision.models.list_models(module=torchvision.models)}.items())


def loaded_as_pretrained(arch: str, train_args: dict | None = None) -> loading.LoadedModel:
    """What load_model returns for --pretrained -a arch, without building the model (only its metadata matters)."""
    return loading.LoadedModel(torch.nn.Identity(), arch, 1000, None, train_args or {}, "ImageNet weights",
                                     preprocess.weights_preprocess(arch))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8))


@pytest.mark.parametrize("name,arch", DEFAULT_WEIGHTS, ids=[n for n, _ in DEFAULT_WEIGHTS])
def test_pretrained_eval_transform_is_the_weights_own(name, arch, photo):
    reference = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    prep = loading.eval_preprocess(loaded_as_pretrained(arch), preprocess.EvalFlags())
    assert (prep.resize, prep.crop, prep.interpolation) == (reference.resize_size[0], reference.crop_size[0],
                                                            reference.interpolation.value)
    assert (prep.mean, prep.std) == (tuple(reference.mean), tuple(reference.std)) and prep.source == name
    expected = reference(photo)
    classic = prep.transform(fast=False)(photo)
    uint8 = torchvision.transforms.functional.pil_to_tensor(photo)
    fast = transforms.to_model_input(prep.transform(fast=True)(uint8)[None], torch.device("cpu"), norm=prep.norm)[0]
    assert classic.shape == expected.shape == fast.shape
    assert torch.allclose(classic, expected, atol=1e-5)
    # The uint8 resize rounds its output: against the weights' own transform of the PIL image (how published numbers
    # are measured), at most two grey levels apart (bicubic), on a few percent of the values of this noise image.
    off = (fast - expected).abs() * 255 * torch.tensor(prep.std).view(3, 1, 1)
    assert off.max() <= 2.01 and (off > 0.5).float().mean() < 0.03


@pytest.mark.slow
def test_ghostnet_pretrained_uses_256_224_bilinear_and_imagenet_normalisation(tmp_path, monkeypatch, photo):
    prep = loading.eval_preprocess(loaded_as_pretrained("ghostnet"), preprocess.EvalFlags())
    assert (prep.resize, prep.crop, prep.interpolation, prep.norm) == (256, 224, "bilinear", transforms.IMAGENET)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cached = factory.cache_path(factory.weights_url("ghostnet"))
    os.makedirs(os.path.dirname(cached))
    torch.save(factory.create_model("ghostnet", 1000).state_dict(), cached)  # random stand-in for the release
    photo.save(tmp_path / "a.png")
    _, printed = call_main("test.py", "--pretrained", "-a", "ghostnet", str(tmp_path / "a.png"), "-j", "0",
                           "--output-dir", str(tmp_path / "out"))
    assert "Resize(256, bilinear, antialias) + CenterCrop(224); normalise on device (from GhostNet's" in printed


def test_flags_win_over_the_weights_and_the_source_names_them():
    prep = loading.eval_preprocess(loaded_as_pretrained("efficientnet_b3"),
                                         preprocess.EvalFlags(resize=350, interpolation="bilinear"))
    assert (prep.resize, prep.crop, prep.interpolation) == (350, 300, "bilinear")
    assert prep.source == ("EfficientNet_B3_Weights.IMAGENET1K_V1; resize from --val-resize-size; "
                           "interpolation from --interpolation")


def test_a_checkpoint_keeps_the_preprocessing_of_the_weights_it_started_from():
    recorded = {"val_resize_size": 255, "val_crop_size": 240, "interpolation": "bicubic", "mean": [0.5] * 3,
                "std": [0.25] * 3, "start_weights": "EfficientNet_B1_Weights.IMAGENET1K_V2"}
    loaded = loading.LoadedModel(torch.nn.Identity(), "efficientnet_b1", 4, None, recorded)
    prep = loading.eval_preprocess(loaded, preprocess.EvalFlags(crop=224), "ft.pth")
    assert (prep.resize, prep.crop, prep.interpolation, prep.mean, prep.std) == (255, 224, "bicubic", (0.5,) * 3,
                                                                                (0.25,) * 3)
    assert prep.source == "ft.pth, trained from EfficientNet_B1_Weights.IMAGENET1K_V2; crop from --val-crop-size"


def test_a_damaged_recorded_interpolation_is_one_line():
    loaded = loading.LoadedModel(torch.nn.Identity(), "resnet18", 4, None, {"interpolation": "lanczos9"})
    message = refusal(lambda: loading.eval_preprocess(loaded, preprocess.EvalFlags(), "x.pth"))
    assert "x.pth records interpolation='lanczos9'" in message


def train_args(*argv: str):
    args = load_script("train_main.py").get_args_parser().parse_args(["--dummy", *argv])
    fill_and_check(args, factory.available_archs())
    return args


def test_training_from_weights_takes_their_sizes_and_records_them():
    args = train_args("--pretrained", "-a", "efficientnet_b1")
    assert (args.train_crop_size, args.val_resize_size, args.val_crop_size, args.interpolation) == (240, 255, 240,
                                                                                                  "bilinear")
    assert args.start_weights == "EfficientNet_B1_Weights.IMAGENET1K_V2" and args.mean == [0.485, 0.456, 0.406]
    flags = train_args("--pretrained", "-a", "efficientnet_v2_l", "--train-crop-size", "128", "--val-crop-size", "400")
    assert (flags.train_crop_size, flags.val_resize_size, flags.val_crop_size) == (128, 480, 400)
    assert flags.mean == [0.5] * 3 and flags.interpolation == "bicubic"
    plain = train_args("-a", "resnet18")
    assert (plain.train_crop_size, plain.val_resize_size, plain.val_crop_size, plain.start_weights) == (224, 256, 224,
                                                                                                      None)


@pytest.mark.slow
def test_pretrained_test_py_matches_torchvision_reference_on_a_photo(tmp_path, monkeypatch, photo):
    """End to end with random weights at the hub-cache path: --pretrained -a mobilenet_v2 (DEFAULT: V2, resize 232)
    prints the weights' sizes and gives the probabilities of weights.transforms() + the same model."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cached = factory.cache_path(factory.weights_url("mobilenet_v2"))
    os.makedirs(os.path.dirname(cached))
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2().eval()
    torch.save(reference.state_dict(), cached)
    big = photo.resize((300, 260))
    big.save(tmp_path / "a.png")
    result, printed = call_main("test.py", "--pretrained", "-a", "mobilenet_v2", str(tmp_path / "a.png"), "-j", "0",
                                "--no-amp", "--no-fold-bn", "--topk", "3", "--output-dir", str(tmp_path / "out"))
    assert "Resize(232, bilinear, antialias) + CenterCrop(224)" in printed
    assert "from MobileNet_V2_Weights.IMAGENET1K_V2" in printed
    weights = torchvision.models.MobileNet_V2_Weights.DEFAULT
    with torch.no_grad():
        probs = reference(weights.transforms()(big)[None]).softmax(1)[0]
    top = probs.topk(3)
    assert [t["probability"] for t in result[0]["top"]] == pytest.approx(top.values.tolist(), rel=1e-3)
