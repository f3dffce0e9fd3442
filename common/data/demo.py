"""A small photo-like dataset the project draws itself, for a quick start that visibly learns without a download.

Six classes of shapes (circle, cross, ring, square, star, triangle) are drawn at a random size, position and
rotation, shaded by a random light direction, on a textured background (1/f noise around a random colour), then
blurred, given sensor noise and saved as JPEGs of varied sizes and qualities. Each class's shapes have hues near
its own (brightness and saturation vary), as real classes have typical colours: a network picks that up within a
few epochs and the shape after it, so that a short run on a CPU visibly learns. Generation is seeded per image, so
the files are the same on every run. ``python train_main.py --demo`` (any training script) writes them once to
DEFAULT_DIR and trains with DEFAULTS; afterwards ``--data runs/data/demo`` serves network.py, test.py and the sorter.

The dataset is written into a temporary folder beside its root, a marker file last, and renamed to the root, so an
interrupted generation never leaves a half-written dataset: the next call starts again.
"""
from __future__ import annotations

import colorsys
import math
import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common.errors import UserError

DEFAULT_DIR = os.path.join("runs", "data", "demo")  # under runs/ (git-ignored), as every default output
CLASSES = ("circle", "cross", "ring", "square", "star", "triangle")
TRAIN_PER_CLASS = 100
VAL_PER_CLASS = 25
MARKER = ".demo-complete"
VERSION = "demo dataset v3"  # change when the images change, so that old copies are redrawn
SEED = 20261202
HUE_SPREAD = 0.06  # each class's shapes take hues within this of its own (as bananas are mostly yellow)
_SPLIT_IDS = {"train": 0, "val": 1}
_TMP_PREFIX = ".demo-tmp-"

# Flag values of the quick start, keyed by argparse dest; any flag given on the command line wins. ResNet-18 at 64 px
# reaches about 90% val top-1 in 12 epochs (about 45 s on 2 CPU cores); at lr 0.1 it diverged in the first epoch, and
# crops below 60% of the image often cut the shape off.
DEFAULTS: dict[str, object] = {
    "arch": "resnet18",
    "epochs": 12,
    "batch_size": 32,
    "lr": 0.02,
    "lr_schedule": "cosine",
    "warmup_epochs": 1.0,
    "weight_decay": 5e-4,
    "train_crop_size": 64,
    "val_resize_size": 64,
    "val_crop_size": 64,
    "rrc_scale": (0.6, 1.0),
    "output_dir": os.path.join("runs", "demo"),
}


def pink_noise(rng: np.random.Generator, h: int, w: int, exponent: float) -> np.ndarray:
    """(h, w) float32 noise with a 1/f**exponent amplitude spectrum (natural images: about 1); unit variance."""
    fy, fx = np.fft.fftfreq(h).astype(np.float32)[:, None], np.fft.rfftfreq(w).astype(np.float32)[None, :]
    amplitude = np.maximum(np.hypot(fx, fy), np.float32(1 / max(h, w))) ** np.float32(-exponent)
    amplitude[0, 0] = 0
    noise = rng.standard_normal((2, *amplitude.shape), dtype=np.float32)
    field = np.fft.irfft2((noise[0] + 1j * noise[1]) * amplitude, s=(h, w)).astype(np.float32)
    return field / field.std()


def _background(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, float]:
    """A scene behind the shape: coloured 1/f texture around a random base colour; returns (h, w, 3) float pixels
    and the base luminance, which the shape's colour keeps its distance from."""
    base = rng.uniform(40, 215, 3).astype(np.float32)
    lum = 18 * pink_noise(rng, h, w, 1.4)
    tint = 12 * np.stack([pink_noise(rng, h, w, 1.8) for _ in range(3)], -1)
    return lum[..., None] + tint + base, float(base.mean())


def _colour(rng: np.random.Generator, hue: float, away_from: float) -> np.ndarray:
    """A colour of about ``hue`` (0..1), of random saturation, whose mean is at least 70 levels from ``away_from``
    so that the shape's edge is visible on any background."""
    r, g, b = colorsys.hsv_to_rgb((hue + rng.uniform(-HUE_SPREAD, HUE_SPREAD)) % 1.0, rng.uniform(0.45, 1.0), 1.0)
    colour = np.array([r, g, b]) * rng.uniform(120, 255)
    shift = (70 + rng.uniform(0, 40)) * (1 if away_from < 128 else -1) - (colour.mean() - away_from)
    return np.clip(colour + shift, 0, 255).astype(np.float32)


def _star(rng: np.random.Generator) -> list[np.ndarray]:
    inner = rng.uniform(0.38, 0.5)
    angles = np.arange(10) * math.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    return [np.stack([radii * np.sin(angles), -radii * np.cos(angles)], 1)]


def _cross(rng: np.random.Generator) -> list[np.ndarray]:
    a = rng.uniform(0.25, 0.38)  # half the arm width, as a fraction of the radius
    pts = [(a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a), (-a, -1)]
    return [np.array(pts, dtype=np.float64)]


def _polygon(sides: int, rng: np.random.Generator) -> list[np.ndarray]:
    angles = np.arange(sides) * 2 * math.pi / sides + rng.normal(0, 0.06, sides)
    return [np.stack([np.sin(angles), -np.cos(angles)], 1)]


def _outline(name: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Unit-radius polygons of one shape, centred on 0; a ring or circle is a many-sided polygon, a ring two."""
    if name == "circle":
        return _polygon(48, rng)
    if name == "ring":
        return _polygon(48, rng) + [rng.uniform(0.45, 0.65) * _polygon(48, rng)[0]]
    if name == "square":
        return _polygon(4, rng)
    if name == "triangle":
        return _polygon(3, rng)
    return _star(rng) if name == "star" else _cross(rng)


def _shape_mask(name: str, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """An antialiased 'L' mask of one shape, placed so that it lies inside the image's centre square."""
    side = min(w, h)
    radius = rng.uniform(0.22, 0.42) * side
    slack = side / 2 - radius
    centre = np.array([w / 2, h / 2]) + rng.uniform(-slack, slack, 2)
    angle, stretch = rng.uniform(0, 2 * math.pi), rng.uniform(0.85, 1.15)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    scale = 4  # drawn at 4x and reduced: smooth edges
    mask = Image.new("L", (w * scale, h * scale), 0)
    draw = ImageDraw.Draw(mask)
    for k, poly in enumerate(_outline(name, rng)):
        pts = (poly * [stretch, 1 / stretch]) @ rot.T * radius + centre
        draw.polygon([tuple(p) for p in pts * scale], fill=0 if k else 255)  # a second polygon is a hole
    return mask.resize((w, h), Image.Resampling.BOX)


def _draw(name: str, rng: np.random.Generator) -> Image.Image:
    """One photo-like image of class ``name``: a shaded shape on texture, lit unevenly, blurred and noisy."""
    w, h = int(rng.integers(88, 177)), int(rng.integers(80, 161))
    scene, base = _background(rng, w, h)
    mask = np.asarray(_shape_mask(name, rng, w, h), dtype=np.float32)[..., None] / 255
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = math.cos(rng.uniform(0, 2 * math.pi)) * xx / w + math.sin(rng.uniform(0, 2 * math.pi)) * yy / h
    shade = (1 + rng.uniform(0.1, 0.3) * (light - light.mean()))[..., None]
    fill = _colour(rng, CLASSES.index(name) / len(CLASSES), base) * shade + 8 * pink_noise(rng, h, w, 1.5)[..., None]
    pixels = scene * (1 - mask) + fill * mask
    pixels *= (1 + rng.uniform(0.1, 0.3) * (light - light.mean()))[..., None]  # uneven light on the whole scene
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0))), dtype=np.float32)
    pixels += rng.uniform(2, 6) * rng.standard_normal(pixels.shape, dtype=np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _write_split(root: str, split: str, per_class: int) -> int:
    for c, name in enumerate(CLASSES):
        folder = os.path.join(root, split, name)
        os.makedirs(folder)
        for i in range(per_class):
            rng = np.random.default_rng([SEED, _SPLIT_IDS[split], c, i])  # per image: independent of order
            _draw(name, rng).save(os.path.join(folder, f"{name}_{split}_{i:03d}.jpg"),
                                  quality=int(rng.integers(75, 96)))
    return per_class * len(CLASSES)


def is_complete(root: str) -> bool:
    """Whether ``root`` holds a whole demo dataset of this version (its marker is written last)."""
    try:
        with open(os.path.join(root, MARKER)) as f:
            return f.read().strip() == VERSION
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2 ** 31
    return True


def _remove_stale_temps(parent: str) -> None:
    """Remove temporary folders left by generations whose process is gone (killed mid-way)."""
    for entry in os.listdir(parent):
        if entry.startswith(_TMP_PREFIX):
            pid = entry[len(_TMP_PREFIX):].split("-")[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _ours(root: str) -> bool:
    """Whether ``root`` holds nothing but what a generation writes, so that it may be removed and redrawn."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root).split(os.sep)
        allowed = ({"train", "val"} if rel == ["."] else set(CLASSES) if len(rel) == 1 and rel[0] in _SPLIT_IDS
                   else set())
        if set(dirnames) - allowed or any(not (f.endswith(".jpg") or f == MARKER) for f in filenames):
            return False
    return True


def ensure_dataset(root: str) -> str:
    """Write the demo dataset to ``root`` (``train/<class>/*.jpg``, ``val/<class>/*.jpg``) unless it is there.

    A complete copy (marker present, same version) is left untouched. A missing or incomplete one is drawn again
    (a few seconds): into a temporary folder beside ``root``, marker last, then renamed to ``root``. Several
    processes may call this at once; the first rename wins. Returns ``root``.
    """
    if is_complete(root):
        return root
    try:
        return _write_dataset(root)
    except OSError as exc:  # a read-only folder, a file where a folder belongs, a full disk: nothing half-written
        blocker = _file_in_the_way(os.path.realpath(root))
        if blocker:
            raise UserError(f"{blocker!r} is a file where the demo dataset's folder {root!r} goes; move the file "
                            "away or run from another folder.") from None
        raise UserError(f"cannot write the demo dataset to {os.path.abspath(root)!r} ({exc.strerror or exc}); run "
                        "from a writable folder with free space.") from None


def _file_in_the_way(path: str) -> str | None:
    """The first folder above ``path`` that exists as something other than a folder, or None."""
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        if os.path.exists(path) and not os.path.isdir(path):
            return path
    return None


def _write_dataset(root: str) -> str:
    """Draw the dataset into a temporary folder beside ``root`` (beside its target when ``root`` is a link to a
    folder, which stays a link) and rename it into place."""
    real = os.path.realpath(root)
    parent = os.path.dirname(real)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_temps(parent)
    if os.path.lexists(real):
        if not os.path.isdir(real) or not _ours(real):
            raise UserError(f"{root!r} exists and is not the demo dataset; remove it or choose another folder.")
        shutil.rmtree(real)
    tmp = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=parent)
    try:
        n_train = _write_split(tmp, "train", TRAIN_PER_CLASS)
        n_val = _write_split(tmp, "val", VAL_PER_CLASS)
        with open(os.path.join(tmp, MARKER), "w") as f:
            f.write(VERSION + "\n")
        try:
            os.rename(tmp, real)
        except OSError:
            if not is_complete(real):  # another process's rename won only if its copy is complete
                raise
            shutil.rmtree(tmp)
            return root
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"=> wrote the demo dataset: {n_train} train / {n_val} val images of {len(CLASSES)} classes to {root}")
    return root
