"""Photo-like test images for the benchmarks: no real photo set can be downloaded here, so images with the
statistics that matter to decoders and resizers (1/f texture, soft-edged objects, sensor noise, JPEG quality 90,
ImageNet-like sizes) are generated instead. Any ImageFolder of real photos can replace them (``--data``)."""
from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from common import limits
from common.data.demo import pink_noise
from common.models import factory
from common.report import steadiness
from common.report.machine import Machine, this_machine
from common.report.steadiness import Load

# Where a benchmark writes its CSV unless --out says otherwise: beside the training runs, never over the recorded
# results in benchmarks/results/ (those are documentation, replaced deliberately by copying a run's CSV there).
OUT_DIR = os.path.join("runs", "benchmarks")

# ImageNet's photos are mostly 500 px on the longer side, landscape 4:3 most often.
PHOTO_SIZES = ((500, 375), (500, 375), (500, 375), (375, 500), (500, 333), (500, 400), (640, 480), (400, 300))


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """An RGB 'photo': 1/f luminance texture, smoother colour, a few flat objects with soft edges, sensor noise."""
    lum = 50 * pink_noise(rng, height, width, 1.2)
    red_green, blue_yellow = 18 * pink_noise(rng, height, width, 1.6), 18 * pink_noise(rng, height, width, 1.6)
    rgb = np.stack([lum + red_green, lum - 0.5 * (red_green + blue_yellow), lum + blue_yellow], -1)
    image = Image.fromarray(np.clip(rgb + rng.uniform(60, 190, 3).astype(np.float32), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 7)):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = [x, y, x + int(rng.integers(20, width // 2)), y + int(rng.integers(20, height // 2))]
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape(box, fill=tuple(int(c) for c in rng.integers(20, 236, 3)))
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)
    pixels += 0.3 * lum[..., None] + 2.5 * rng.standard_normal(pixels.shape, dtype=np.float32)  # texture, noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_photos(root: str, count: int, classes: int = 4, sizes=PHOTO_SIZES, seed: int = 0) -> list[str]:
    """Write ``count`` photo-like JPEGs (quality 90) as ``root/class<k>/photo<i>.jpg``; return their paths."""
    rng, paths = np.random.default_rng(seed), []
    for i in range(count):
        folder = os.path.join(root, f"class{i % classes}")
        os.makedirs(folder, exist_ok=True)
        paths.append(os.path.join(folder, f"photo{i}.jpg"))
        photo_like(rng, *sizes[i % len(sizes)]).save(paths[-1], quality=90)
    return paths


def tinted(rng: np.random.Generator, label: int, classes: int, size: tuple[int, int]) -> Image.Image:
    """A photo-like image with a colour cast that depends on its class, so that a model can learn the labels."""
    hue = 2 * np.pi * label / classes
    cast = 35 * np.array([np.cos(hue), np.cos(hue - 2.1), np.cos(hue + 2.1)], dtype=np.float32)
    pixels = np.asarray(photo_like(rng, *size), dtype=np.float32) + cast
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_class_folder(root: str, count: int, classes: int = 4, seed: int = 0) -> str:
    """``root/class<k>/photo<i>.jpg``: ``count`` tinted photo-like JPEGs (quality 90), classes in turn."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = os.path.join(root, f"class{i % classes}")
        os.makedirs(folder, exist_ok=True)
        size = PHOTO_SIZES[(i // classes) % len(PHOTO_SIZES)]
        tinted(rng, i % classes, classes, size).save(os.path.join(folder, f"photo{i}.jpg"), quality=90)
    return root


def make_dataset(root: str, train_per_class: int, val_per_class: int, classes: int = 4, seed: int = 0) -> str:
    """``root/{train,val}/class<k>/photo<i>.jpg``: tinted photo-like JPEGs of ImageNet-like sizes."""
    make_class_folder(os.path.join(root, "train"), train_per_class * classes, classes, seed)
    make_class_folder(os.path.join(root, "val"), val_per_class * classes, classes, seed + 1)
    return root


def add_out_flag(parser, name: str) -> None:
    """``--out CSV``: where the benchmark writes its table; the help names the default, ``runs/benchmarks/<name>``."""
    parser.add_argument("--out", default=None, metavar="CSV",
                        help=f"CSV to write (default: {os.path.join(OUT_DIR, name)})")


def out_path(out: str | None, name: str) -> str:
    """The CSV path: ``out`` where the user gave one, else ``runs/benchmarks/<name>`` under the current folder."""
    return out or os.path.join(OUT_DIR, name)


def machine_line(machine: Machine) -> str:
    """The line naming the machine: every benchmark's first header line, printed again above a table that other
    output has pushed away from it."""
    return f"machine: {machine.describe()}"


def announce_machine(devices: Iterable[torch.device | str] = ()) -> Machine:
    """The machine (``this_machine(devices)``, ``devices`` those the benchmark measures on), its line printed as the
    first line of the benchmark's header."""
    machine = this_machine(devices)
    print(machine_line(machine), flush=True)
    return machine


def file_tag(machine: Machine) -> str:
    """``cpu``, or the GPU's name as a file-name part (``nvidia_h100_80gb_hbm3``), for a CSV named after the device."""
    return re.sub(r"[^A-Za-z0-9]+", "_", machine.gpus[0]).strip("_").lower() if machine.gpus else "cpu"


def random_checkpoint(path: str, arch: str, classes: list[str], width_mult: float) -> None:
    """A checkpoint in this project's format with random weights (the speed does not depend on them)."""
    torch.manual_seed(0)
    model = factory.create_model(arch, len(classes), width_mult=width_mult)
    torch.save({"epoch": 0, "arch": arch, "state_dict": model.state_dict(), "best_acc1": 0.0, "classes": classes,
                "args": {"val_resize_size": limits.VAL_RESIZE_SIZE, "val_crop_size": limits.VAL_CROP_SIZE,
                         "width_mult": width_mult}}, path)


def require_smaps() -> None:
    """Exit in one line where /proc/<pid>/smaps_rollup, which the memory benchmarks read, does not exist."""
    if not os.path.exists("/proc/self/smaps_rollup"):
        raise SystemExit("error: this benchmark reads /proc/<pid>/smaps_rollup, which only Linux 4.14 or later has.")


def smaps(pid: int) -> dict[str, float] | None:
    """MB of ``rss``, ``pss`` and ``private`` (Private_Clean + Private_Dirty) memory of process ``pid``, from
    /proc/<pid>/smaps_rollup; None if the process has just ended."""
    fields = {}
    try:
        f = open(f"/proc/{pid}/smaps_rollup")
    except OSError:
        return None
    with f:
        for line in f:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0]) / 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"], "private": fields["Private_Clean"] + fields["Private_Dirty"]}


def write_csv(rows: list[dict], path: str, machine: Machine) -> None:
    """The rows under the union of their keys, in first-seen order, then ``machine``'s fields in every row
    (``Machine.csv_fields``: cpu, cores, cpu_flags, torch_cpu, gpu)."""
    fields = machine.csv_fields()
    columns = [*dict.fromkeys(k for r in rows for k in r if k not in fields), *fields]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({**row, **fields} for row in rows)


def spread_fields(laps: dict[str, Sequence[float]]) -> dict[str, float]:
    """``<name>_spread_pct`` of each named list of timed repeats (interquartile range over the median, percent,
    rounded to 0.1); a name with a single repeat gets no column."""
    spreads = {name: steadiness.spread_pct(values) for name, values in laps.items()}
    return {f"{name}_spread_pct": round(s, 1) for name, s in spreads.items() if s is not None}


def steady_rows(rows: list[dict], load: Load, name: str, keys: Sequence[str]) -> list[dict]:
    """``rows`` with ``other_cores`` (the cores other processes used on average while the benchmark measured:
    ``load``, from a ``steadiness.LoadMeter`` around the measuring) and ``reliable`` (yes, no or unknown: the row's
    worst ``*_spread_pct`` and ``load`` against the limits of common/report/steadiness.py). Prints the one warning
    line of each unreliable row, naming it by ``name`` and its ``keys`` columns, then one line for the whole run."""
    checked = []
    for row in rows:
        judged, warning = steadiness.judge_row(row, load, " ".join([name, *(str(row[k]) for k in keys if k in row)]))
        if warning:
            print(warning, flush=True)
        checked.append({**row, **judged})
    failed = sum(row["reliable"] == "no" for row in checked)
    verdict = f"{failed} of {len(checked)} rows unreliable" if failed else "every row passed the steadiness check"
    print(f"=> steadiness: {verdict}; {load.describe()} while it measured", flush=True)
    return checked
