"""Image transforms: a fast uint8 pipeline, the classic PIL one it replaces, and normalisation once per batch.

The fast path (``fast=True``) decodes JPEG with torchvision.io (libjpeg-turbo), resizes and crops uint8 tensors with
torchvision.transforms.v2 (antialiased, as PIL is) and hands the DataLoader uint8 (3, H, W) images: 4x fewer bytes
to move between worker processes than float. ``to_model_input`` then converts and normalises the whole batch once,
on the target device. ``fast=False`` is the classic pipeline of the torchvision references (PIL transforms, ToTensor,
Normalize in every worker), kept as the baseline that the benchmarks and the equivalence tests compare against.

Every random choice is drawn from torch's global generator, so seeding it before a sample (``sampling.SeededSamples``)
fixes that sample's augmentation in either pipeline.

``load_uint8(path, min_side=...)`` can also decode a large JPEG at 1/2, 1/4 or 1/8 size (libjpeg's DCT scaling, PIL
``draft``). It is off by default: with the eval resize size as ``min_side``, decoding was 1.3x faster for 2000x1500
photos and 2.3x for 4000x3000, but the inputs moved by one grey level on average (up to 19), and a GhostNet
classifier fitted as in tests/test_transforms.py agreed with the classic path on 95 of 100 large generated photos
(98 with twice the resize size): below the 99% that evaluation must keep.
Without it, fast and classic evaluation inputs differ by at most one grey level, on about 0.3% of the values.
torchvision 0.29 deprecates its image decoders in favour of TorchCodec's; this module is where to switch.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image, ImageOps
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2.functional import pil_to_tensor

from common.data.images import decode_rgb, load_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std (of [0, 1] RGB values) that a model's inputs are normalised with."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))  # lists from a checkpoint's args
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))


IMAGENET = Normalization()
AUTO_AUGMENT = ("autoaugment", "randaugment", "trivialaugment", "augmix")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
# Start-of-frame markers that libjpeg-turbo decodes to 8-bit RGB: baseline, extended and progressive Huffman.
_SOF_FAST = (0xC0, 0xC1, 0xC2)
# Markers without a length field: TEM, RSTn, SOI.
_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation: RandomResizedCrop, horizontal flip and optional policy, colour jitter, random erasing.

    ``scale`` and ``ratio`` bound the crop's area fraction and aspect ratio; ``hflip`` and ``random_erase`` are
    probabilities; ``color_jitter`` is the brightness = contrast = saturation strength (0 turns it off);
    ``auto_augment`` names one of torchvision's policies (``AUTO_AUGMENT``) or is None.
    """

    crop_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    auto_augment: str | None = None
    color_jitter: float = 0.0
    random_erase: float = 0.0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(self.scale))  # argparse gives lists
        object.__setattr__(self, "ratio", tuple(self.ratio))
        if self.auto_augment is not None and self.auto_augment not in AUTO_AUGMENT:
            raise ValueError(f"auto_augment {self.auto_augment!r} is none of {AUTO_AUGMENT}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is none of {INTERPOLATIONS}")


def _policy(module, name: str, interpolation: InterpolationMode):
    """torchvision's ``name`` policy from ``module`` (``transforms`` for PIL, ``v2`` for uint8 tensors)."""
    if name == "autoaugment":
        return module.AutoAugment(module.AutoAugmentPolicy.IMAGENET, interpolation=interpolation)
    if name == "randaugment":
        return module.RandAugment(interpolation=interpolation)
    if name == "trivialaugment":
        return module.TrivialAugmentWide(interpolation=interpolation)
    return module.AugMix(interpolation=interpolation)


def _augment_steps(cfg: AugmentConfig, module) -> list:
    """The geometric and colour steps of ``cfg``, built from ``module`` (``transforms`` or ``v2``)."""
    interpolation = InterpolationMode(cfg.interpolation)
    steps = [module.RandomResizedCrop(cfg.crop_size, scale=cfg.scale, ratio=cfg.ratio, interpolation=interpolation,
                                      antialias=True)]
    if cfg.hflip > 0:
        steps.append(module.RandomHorizontalFlip(cfg.hflip))
    if cfg.auto_augment:
        steps.append(_policy(module, cfg.auto_augment, interpolation))
    if cfg.color_jitter > 0:
        steps.append(module.ColorJitter(cfg.color_jitter, cfg.color_jitter, cfg.color_jitter))
    return steps


def train_transform(cfg: AugmentConfig, fast: bool = True,
                    norm: Normalization = IMAGENET) -> Callable[..., torch.Tensor]:
    """The training transform of ``cfg``: uint8 tensor in, uint8 (3, crop, crop) out; or PIL in, normalised float out.

    The fast transform takes what ``load_uint8`` returns, the classic one what ``images.load_rgb`` returns. Random
    erasing comes last in both; on uint8 it fills with the uint8 colour nearest to ``norm``'s mean, which is what the
    classic RandomErasing writes after Normalize (zero, i.e. the mean), so the two agree to within half a grey level.
    """
    if fast:
        steps = _augment_steps(cfg, v2)
        if cfg.random_erase > 0:
            steps.append(v2.RandomErasing(cfg.random_erase, value=[round(255 * m) for m in norm.mean]))
        return v2.Compose(steps)
    steps = _augment_steps(cfg, transforms)
    steps += [transforms.ToTensor(), transforms.Normalize(norm.mean, norm.std)]
    if cfg.random_erase > 0:
        steps.append(transforms.RandomErasing(cfg.random_erase))
    return transforms.Compose(steps)


def eval_transform(resize_size: int, crop_size: int, fast: bool = True, interpolation: str = "bilinear",
                   norm: Normalization = IMAGENET, five_crop: bool = False) -> Callable[..., torch.Tensor]:
    """Resize the shorter side to ``resize_size`` (``interpolation``, antialiased) and centre-crop ``crop_size``.

    ``fast``: uint8 (3, H, W) tensor in, uint8 (3, crop, crop) out, normalised later by ``to_model_input`` with
    ``norm``. Otherwise the classic PIL Resize, CenterCrop, ToTensor and Normalize(``norm``): what torchvision's
    ``weights.transforms()`` does. The two resize implementations differ by about one grey level here and there; the
    predictions they lead to agree on 99% of images or more (tests/test_transforms.py measures it).
    ``five_crop``: FiveCrop instead of the centre crop, the four corners and the centre stacked as (5, 3, crop, crop).
    """
    mode = InterpolationMode(interpolation)
    if fast:
        crop = [v2.FiveCrop(crop_size), _stack] if five_crop else [v2.CenterCrop(crop_size)]
        return v2.Compose([v2.Resize(resize_size, interpolation=mode, antialias=True), *crop])
    resize = transforms.Resize(resize_size, interpolation=mode, antialias=True)
    if five_crop:
        return transforms.Compose([resize, transforms.FiveCrop(crop_size), _stack_tensors,
                                   transforms.Normalize(norm.mean, norm.std)])
    return transforms.Compose([resize, transforms.CenterCrop(crop_size), transforms.ToTensor(),
                               transforms.Normalize(norm.mean, norm.std)])


def _stack(crops: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.stack(crops)


def _stack_tensors(crops: tuple[Image.Image, ...]) -> torch.Tensor:
    return torch.stack([transforms.functional.to_tensor(c) for c in crops])


def _jpeg_frame(data: bytes) -> tuple[int, int, int, int] | None:
    """(marker, height, width, components) of a whole JPEG's start-of-frame; None if ``data`` is not one.

    "Whole" means that it starts with SOI and ends with EOI: a truncated file, or one with bytes after its end, is
    left to PIL, which decides whether it is readable. Only the marker segments before the frame are walked.
    """
    if not data.startswith(b"\xff\xd8\xff") or not data.endswith(b"\xff\xd9"):
        return None
    pos = 2
    while pos + 10 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF or marker in _STANDALONE:  # a fill byte, or a marker without a length
            pos += 1 if marker == 0xFF else 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn (not DHT, JPG, DAC)
            precision, height, width, components = struct.unpack(">BHHB", data[pos + 4:pos + 10])
            return (marker if precision == 8 else -1), height, width, components
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return None


def _decode_reduced(path: str, min_side: int) -> torch.Tensor:
    """Decode a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) whose shorter side stays >= ``min_side``."""
    with Image.open(path) as image:
        image.draft("RGB", (min_side, min_side))
        image.load()
        return pil_to_tensor(ImageOps.exif_transpose(image).convert("RGB"))


def _decode_jpeg(path: str, data: bytes, min_side: int | None) -> torch.Tensor | None:
    """The JPEG ``data`` decoded upright, or None where libjpeg-turbo should not or could not decode it."""
    frame = _jpeg_frame(data)
    if frame is None or frame[0] not in _SOF_FAST or frame[3] not in (1, 3):  # CMYK, 12-bit, lossless, ...
        return None
    if Image.MAX_IMAGE_PIXELS and frame[1] * frame[2] > Image.MAX_IMAGE_PIXELS:
        return None  # load_rgb refuses it as a decompression bomb
    try:
        if min_side and min(frame[1], frame[2]) >= 2 * min_side:
            return _decode_reduced(path, min_side)
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                           apply_exif_orientation=True)
    except Exception:  # noqa: BLE001 - load_rgb reads the file again and names the reason, if there is one
        return None


def load_uint8(path: str, min_side: int | None = None) -> torch.Tensor:
    """Decode ``path`` into a uint8 (3, H, W) RGB tensor, upright as its EXIF orientation says, or raise BadImage.

    A whole 8-bit RGB or greyscale JPEG within PIL's decompression-bomb limit is decoded by torchvision.io
    (libjpeg-turbo); every other file (PNG, CMYK JPEG, truncated, ...) goes through ``images.load_rgb``, which also
    judges what cannot be read, so the same files are refused with the same reasons. With ``min_side``, a JPEG whose
    shorter side is at least twice that is decoded at reduced size by libjpeg's DCT scaling (PIL ``draft``), its
    shorter side still >= ``min_side``: faster on large photos, but the pixels differ (see the module docstring).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        data = b""  # load_rgb tells why
    image = _decode_jpeg(path, data, min_side)
    return image if image is not None else pil_to_tensor(load_rgb(path))


def decode_uint8(data: bytes, name: str) -> torch.Tensor:
    """``load_uint8`` of an image held in memory (a parquet row, a tar member): the same decoders, the same refusals;
    ``name`` is what a BadImage names."""
    image = _decode_jpeg(name, data, None)
    return image if image is not None else pil_to_tensor(decode_rgb(data, name))


def to_model_input(batch: torch.Tensor, device: torch.device, channels_last: bool = False,
                   dtype: torch.dtype = torch.float32, norm: Normalization = IMAGENET) -> torch.Tensor:
    """A uint8 (N, 3, H, W) batch on ``device`` as normalised ``dtype``; a float batch is only moved and cast.

    The copy is non-blocking (from pinned memory it overlaps the previous step); conversion and normalisation run
    on the device, in float32, and equal ToTensor + Normalize(``norm``) of the same pixels to 1e-6. The mean and std are
    applied per channel as Python scalars, so no small tensor has to be copied to the device (a synchronising copy).
    """
    batch = batch.to(device, non_blocking=True)
    if batch.is_floating_point():
        out = batch
    else:
        out = batch.to(torch.float32)
        for c, (mean, std) in enumerate(zip(norm.mean, norm.std)):
            out[:, c].sub_(255 * mean).div_(255 * std)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    # .to() keeps the layout of a tensor whose dtype is already right; contiguous() then makes it dense.
    return out.to(dtype=dtype, memory_format=memory_format).contiguous(memory_format=memory_format)


def describe(cfg: AugmentConfig, fast: bool) -> str:
    """One line naming the training pipeline, for the header a run prints."""
    ratio = f"({cfg.ratio[0]:.2f}, {cfg.ratio[1]:.2f})"
    parts = [f"RandomResizedCrop({cfg.crop_size}, scale={cfg.scale}, ratio={ratio}, {cfg.interpolation})"]
    if cfg.hflip > 0:
        parts.append(f"HFlip({cfg.hflip:g})")
    if cfg.auto_augment:
        parts.append({"autoaugment": "AutoAugment(imagenet)", "randaugment": "RandAugment",
                      "trivialaugment": "TrivialAugmentWide", "augmix": "AugMix"}[cfg.auto_augment])
    if cfg.color_jitter > 0:
        parts.append(f"ColorJitter({cfg.color_jitter:g})")
    if cfg.random_erase > 0:
        parts.append(f"RandomErasing({cfg.random_erase:g})")
    if fast:
        return f"train: uint8 {' + '.join(parts)}; normalise on device"
    return f"train: PIL {' + '.join(parts)} + ToTensor + Normalize (classic)"


def describe_eval(resize_size: int, crop_size: int, fast: bool, interpolation: str = "bilinear",
                  norm: Normalization = IMAGENET) -> str:
    """One line naming the evaluation pipeline (the normalisation only when it is not ImageNet's)."""
    normalize = "" if norm == IMAGENET else f" mean {norm.mean} std {norm.std}"
    if fast:
        return (f"eval: uint8 Resize({resize_size}, {interpolation}, antialias) + CenterCrop({crop_size}); "
                f"normalise{normalize} on device")
    return (f"eval: PIL Resize({resize_size}, {interpolation}) + CenterCrop({crop_size}) + ToTensor + "
            f"Normalize{normalize} (classic)")


def decoder(fast: bool) -> Callable[[bytes, str], object]:
    """What decodes an image held in memory for the pipeline: uint8 tensor (``fast``) or PIL image."""
    return decode_uint8 if fast else decode_rgb
