"""common.transforms and common.samples: the fast uint8 pipeline gives the classic pipeline's images and predictions,
refuses the same bad files, is reproducible per seed; the compact sample list equals the list it replaces.

All images are generated into ``tmp_path`` (photo-like JPEGs by benchmarks/benchlib.py).
"""
from __future__ import annotations

import builtins
import colorsys
import os
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as classic

import ghost_net
from benchmarks.benchlib import make_photos
from common.data import transforms as T
from common.data.images import BadImage, load_rgb
from common.data.samples import CompactSamples
from test_images import jpeg_bytes, make_mixed_files, noisy_rgb, write_bytes

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec's; they are what load_uint8 uses (pinned).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
CPU = torch.device("cpu")
STD_255 = 255 * torch.tensor(T.IMAGENET_STD).view(1, 3, 1, 1)  # one grey level, in normalised units, is 1 / this


def as_uint8(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def classic_input(pixels: torch.Tensor) -> torch.Tensor:
    """ToTensor + Normalize of a uint8 (3, H, W) image, as the classic pipeline does it."""
    normalize = classic.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)
    return normalize(classic.ToTensor()(pixels.permute(1, 2, 0).numpy()))


# ---------------------------------------------------------------- to_model_input

@pytest.mark.parametrize("channels_last", [False, True])
def test_to_model_input_equals_to_tensor_and_normalize(channels_last):
    batch = torch.randint(0, 256, (4, 3, 20, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch[0, :, 0, :2] = torch.tensor([0, 255], dtype=torch.uint8)  # both ends of the range
    out = T.to_model_input(batch, CPU, channels_last=channels_last)
    expected = torch.stack([classic_input(image) for image in batch])
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert torch.allclose(out, expected, rtol=0, atol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_to_model_input_of_one_cropped_image_is_a_dense_batch():
    image = T.eval_transform(32, 24)(torch.randint(0, 256, (40, 50, 3), dtype=torch.uint8).permute(2, 0, 1))
    out = T.to_model_input(image[None], CPU)  # a view with the strides of a crop
    assert out.is_contiguous() and torch.allclose(out[0], classic_input(image), rtol=0, atol=1e-6)


def test_to_model_input_only_moves_and_casts_a_float_batch():
    batch = torch.randn(2, 3, 8, 8)
    assert T.to_model_input(batch, CPU) is batch
    assert torch.equal(T.to_model_input(batch, CPU, dtype=torch.bfloat16), batch.to(torch.bfloat16))


# ---------------------------------------------------------------- load_uint8

def save_modes(tmp_path) -> dict[str, str]:
    """Files of every kind load_rgb converts, most of them decoded by PIL on the fast path too."""
    files = {name: str(tmp_path / name) for name in ("rgb.png", "gray.png", "rgba.png", "palette_trns.png",
                                                     "deep.png", "cmyk.jpg", "gray.jpg", "rgb.jpg", "progressive.jpg")}
    noisy_rgb((48, 40)).save(files["rgb.png"])
    noisy_rgb((48, 40)).convert("L").save(files["gray.png"])
    noisy_rgb((48, 40)).convert("RGBA").save(files["rgba.png"])
    palette = noisy_rgb((48, 40)).convert("P")
    palette.save(files["palette_trns.png"], transparency=0)
    Image.fromarray(np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) * 30).save(files["deep.png"])
    Image.new("CMYK", (48, 40), (30, 80, 160, 20)).save(files["cmyk.jpg"], quality=95)
    noisy_rgb((48, 40)).convert("L").save(files["gray.jpg"], quality=95)
    noisy_rgb((48, 40)).save(files["rgb.jpg"], quality=95)
    noisy_rgb((48, 40)).save(files["progressive.jpg"], quality=95, progressive=True)
    return files


def test_load_uint8_gives_load_rgbs_pixels_for_every_kind_of_image(tmp_path):
    for name, path in save_modes(tmp_path).items():
        out, expected = T.load_uint8(path), as_uint8(load_rgb(path))
        assert out.dtype == torch.uint8 and out.shape == expected.shape == (3, 40, 48), name
        # PNGs go through load_rgb itself; JPEGs are decoded by libjpeg-turbo in both, at most a level apart.
        assert (out.int() - expected.int()).abs().max() <= (0 if name.endswith(".png") else 1), name


def test_rgb_and_grayscale_jpegs_are_decoded_by_torchvision_not_pil(tmp_path, monkeypatch):
    files = save_modes(tmp_path)
    monkeypatch.setattr(T, "load_rgb", lambda path: pytest.fail(f"{path} went to PIL"))
    for name in ("rgb.jpg", "gray.jpg", "progressive.jpg"):
        assert T.load_uint8(files[name]).shape == (3, 40, 48)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_load_uint8_turns_exif_rotated_jpegs_as_load_rgb_does(tmp_path, orientation):
    stored = noisy_rgb((8, 6)).resize((64, 48), Image.NEAREST)  # blocks: any wrong turn shows
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    out, expected = T.load_uint8(str(tmp_path / "turned.jpg")), as_uint8(load_rgb(str(tmp_path / "turned.jpg")))
    assert out.shape == expected.shape == ((3, 48, 64) if orientation <= 4 else (3, 64, 48))
    assert (out.int() - expected.int()).abs().max() <= 1


def test_min_side_decodes_a_large_jpeg_smaller_but_not_below_it(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    noisy_rgb((1200, 900)).save(tmp_path / "large.jpg", exif=exif, quality=90)
    out = T.load_uint8(str(tmp_path / "large.jpg"), min_side=200)
    assert out.shape == (3, 300, 225)  # 1/4 scale (1/8 would be 112 px), turned upright
    assert T.load_uint8(str(tmp_path / "large.jpg"), min_side=500).shape == (3, 1200, 900)  # not halved: 450 < 500


def mixed_files(tmp_path) -> tuple[list[str], int]:
    """test_images.make_mixed_files and more kinds of file that load_rgb refuses: (paths, how many are bad)."""
    paths, bad = make_mixed_files(tmp_path)
    data = jpeg_bytes(tmp_path)
    extra = {"random.jpg": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
             "broken.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "tail_cut.jpg": data[:-10],
             "no_frame.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 8 + b"\xff\xd9"}
    paths += [write_bytes(tmp_path / name, content) for name, content in extra.items()]
    os.mkdir(tmp_path / "folder.jpg")
    return [*paths, str(tmp_path / "folder.jpg"), str(tmp_path / "missing.jpg")], len(bad) + len(extra) + 2


def reason(loader, path: str) -> str | None:
    try:
        loader(path)
    except BadImage as exc:
        assert exc.path == path
        return exc.reason
    return None


def test_load_uint8_refuses_the_files_load_rgb_refuses_with_the_same_reason(tmp_path):
    paths, bad = mixed_files(tmp_path)
    reasons = {path: reason(load_rgb, path) for path in paths}
    assert sum(r is not None for r in reasons.values()) == bad
    assert {path: reason(T.load_uint8, path) for path in paths} == reasons  # the good ones are read by both


@pytest.mark.parametrize("limit", [1500, 900], ids=["warning-range", "error-range"])
@pytest.mark.parametrize("name", ["big.jpg", "big.png"])
def test_images_over_the_decompression_bomb_limit_are_refused(tmp_path, monkeypatch, limit, name):
    noisy_rgb((48, 40)).save(tmp_path / name)  # 1920 pixels: PIL warns above 1500, raises above 2 x 900
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    assert reason(T.load_uint8, str(tmp_path / name)) == reason(load_rgb, str(tmp_path / name)) is not None


def test_unreadable_jpeg_is_permission_denied(tmp_path, monkeypatch):
    path = str(tmp_path / "secret.jpg")
    noisy_rgb().save(path)
    real_open = builtins.open  # root reads mode-000 files: fail open() as the kernel does for other users

    def denied(file, *args, **kwargs):
        if os.fspath(file) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denied)
    assert reason(T.load_uint8, path) == "permission denied"


# ---------------------------------------------------------------- training transform

def seeded(transform, image, seed: int) -> torch.Tensor:
    """``transform(image)`` after seeding torch and random as data.SeededSamples does (numpy is not seeded)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.random()  # moves numpy's generator on: were it drawn from, results would differ call to call
    return transform(image)


@pytest.mark.parametrize("cfg", [
    T.AugmentConfig(),
    T.AugmentConfig(crop_size=96, auto_augment="trivialaugment", random_erase=0.5),
    T.AugmentConfig(crop_size=64, auto_augment="autoaugment", color_jitter=0.4, interpolation="bicubic"),
    T.AugmentConfig(crop_size=64, auto_augment="randaugment", hflip=0.0),
    T.AugmentConfig(crop_size=64, auto_augment="augmix", scale=(0.5, 1.0), ratio=(1.0, 1.0)),
], ids=["default", "trivialaugment-erase", "autoaugment-jitter-bicubic", "randaugment-noflip", "augmix"])
def test_fast_train_transform_is_a_uint8_crop_fixed_by_the_seed(tmp_path, cfg):
    noisy_rgb((500, 375)).save(tmp_path / "photo.jpg", quality=90)
    image, transform = T.load_uint8(str(tmp_path / "photo.jpg")), T.train_transform(cfg)
    first = seeded(transform, image, 7)
    assert first.dtype == torch.uint8 and first.shape == (3, cfg.crop_size, cfg.crop_size)
    assert torch.equal(seeded(transform, image, 7), first)
    assert not all(torch.equal(seeded(transform, image, s), first) for s in (8, 9))
    reference = seeded(T.train_transform(cfg, fast=False), load_rgb(str(tmp_path / "photo.jpg")), 7)
    assert reference.dtype == torch.float32 and reference.shape == first.shape


def test_random_erasing_on_uint8_fills_with_what_normalises_to_zero():
    cfg = T.AugmentConfig(crop_size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, random_erase=1.0)
    image = torch.full((3, 32, 32), 7, dtype=torch.uint8)
    erased = seeded(T.train_transform(cfg), image, 0)
    filled = (erased != 7).any(dim=0)
    assert 0 < filled.sum() < 32 * 32
    normalised = T.to_model_input(erased[None], CPU)[0]
    assert normalised[:, filled].abs().max() <= 0.5 / STD_255.min()  # zero to within half a grey level
    classic_erased = seeded(T.train_transform(cfg, fast=False), Image.new("RGB", (32, 32), (7, 7, 7)), 0)
    assert (classic_erased == 0).all(dim=0).sum() == filled.sum()  # the same area, erased with exact zeros


def test_describe_names_the_pipeline_in_one_line():
    cfg = T.AugmentConfig(auto_augment="trivialaugment", random_erase=0.25)
    assert T.describe(cfg, fast=True) == ("train: uint8 RandomResizedCrop(224, scale=(0.08, 1.0), ratio=(0.75, 1.33), "
                                          "bilinear) + HFlip(0.5) + TrivialAugmentWide + RandomErasing(0.25); "
                                          "normalise on device")
    assert "ToTensor + Normalize" in T.describe(cfg, fast=False) and "\n" not in T.describe_eval(256, 224, True)


def test_augment_config_refuses_unknown_policies():
    with pytest.raises(ValueError, match="auto_augment"):
        T.AugmentConfig(auto_augment="autoaugmentation")


# ---------------------------------------------------------------- evaluation: fast vs classic

def hue_sector(images: torch.Tensor, sectors: int = 8) -> torch.Tensor:
    """Which of ``sectors`` hue sectors each normalised image's mean colour falls in: a label with a margin."""
    mean = torch.tensor(T.IMAGENET_MEAN).view(1, 3, 1, 1)
    rgb = (images * STD_255 / 255 + mean).mean(dim=(2, 3))
    return torch.tensor([int(colorsys.rgb_to_hsv(*c.tolist())[0] * sectors) % sectors for c in rgb])


def ghostnet_features(*batches: torch.Tensor) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """GhostNet (seed 0, eval mode, 8 classes) and its pooled (N, 1280) features of each batch."""
    torch.manual_seed(0)
    model = ghost_net.ghost_net(num_classes=8).eval().to(memory_format=torch.channels_last)
    with torch.inference_mode():
        return model, [model.forward_head(model.forward_features(b), pre_logits=True) for b in batches]


def fit_classifier(model: torch.nn.Module, feats: torch.Tensor, labels: torch.Tensor) -> None:
    """Fit ``model.classifier`` to ``labels`` by ridge regression on standardised ``feats`` ("trained briefly").

    A random classifier on random features is no test: its outputs barely depend on the image, and standardising
    them makes the argmax flip at the least noise. A fitted classifier, like a trained model, has real margins.
    """
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    x = (feats - mean) / std
    y = torch.nn.functional.one_hot(labels, model.classifier.out_features).float()
    w = torch.linalg.solve(x.T @ x + 0.1 * len(x) * torch.eye(x.shape[1]), x.T @ (y - y.mean(0))) / std[:, None]
    with torch.no_grad():
        model.classifier.weight.copy_(w.T)
        model.classifier.bias.copy_(y.mean(0) - mean @ w)


@pytest.mark.slow
def test_fast_eval_path_gives_the_classic_paths_predictions(tmp_path):
    """Measured: 100 of 100 agree here; with the same kind of model, 299 of 300 other generated photos (99.7%) and
    300 of 300 crops of real photos. The inputs differ by at most one grey level, on about 0.3% of the values."""
    paths = make_photos(str(tmp_path), 100)
    fast_tf, classic_tf = T.eval_transform(256, 224), T.eval_transform(256, 224, fast=False)
    fast = T.to_model_input(torch.stack([fast_tf(T.load_uint8(p)) for p in paths]), CPU, channels_last=True)
    reference = torch.stack([classic_tf(load_rgb(p)) for p in paths]).contiguous(memory_format=torch.channels_last)
    levels = (fast - reference).abs() * STD_255
    assert 0 < levels.mean() < 0.01 and levels.max() <= 1.001  # close, but another implementation
    model, (feats, feats_fast) = ghostnet_features(reference, fast)
    fit_classifier(model, feats[:50], hue_sector(reference[:50]))  # the first half fits, all are compared
    with torch.inference_mode():
        predicted, predicted_fast = model.classifier(feats).argmax(1), model.classifier(feats_fast).argmax(1)
    assert len(predicted.unique()) >= 4  # the model tells images apart
    assert (predicted == predicted_fast).float().mean() >= 0.99


# ---------------------------------------------------------------- CompactSamples

def test_compact_samples_equal_the_list_they_come_from_and_pickle_smaller():
    samples = [(f"/data/imagenet/train/n{c:08d}/n{c:08d}_{i}.JPEG", c) for c in range(100) for i in range(100)]
    samples.append((os.fsdecode(b"/data/imagenet/train/odd/caf\xe9.JPEG"), 7))  # not UTF-8
    compact = CompactSamples(samples)
    assert len(compact) == len(samples) and list(compact) == samples
    assert compact[0] == samples[0] and compact[-1] == samples[-1] and compact[5:8] == samples[5:8]
    assert os.fsencode(compact[-1][0]) == b"/data/imagenet/train/odd/caf\xe9.JPEG"
    assert list(compact.targets) == [t for _, t in samples]
    data = pickle.dumps(compact)
    assert list(pickle.loads(data)) == samples and len(data) < len(pickle.dumps(samples))
    with pytest.raises(IndexError):
        compact[len(samples)]


def test_compact_samples_of_an_empty_folder_is_empty():
    assert len(CompactSamples([])) == 0 and list(CompactSamples(iter([]))) == []
