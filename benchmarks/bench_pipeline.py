"""Benchmark: the input pipeline, images/s per DataLoader worker, project fast path against the reference way.

Reference: torchvision ImageFolder with its PIL loader and the classic transforms (RandomResizedCrop, flip, ToTensor,
Normalize for training; Resize, CenterCrop, ToTensor, Normalize for evaluation), float batches. Project: the same
ImageFolder with ``transforms.load_uint8`` and the fast uint8 transforms, uint8 batches, converted and normalised
per batch by ``transforms.to_model_input`` in the main process (timed too). Same images, same DataLoader settings,
same run: each loader keeps its workers, runs one untimed epoch, then the timed epochs alternate between the
pipelines and the best of ``--repeats`` is kept (other work on the machine only ever slows an epoch down).

    python benchmarks/bench_pipeline.py                          # 400 generated photo-like JPEGs, mostly 500x375
    python benchmarks/bench_pipeline.py --images 1000 --workers 2
    python benchmarks/bench_pipeline.py --data /data/imagenet/val --images 2000   # real photos (any ImageFolder)

Prints one table and writes runs/benchmarks/pipeline.csv (``--out`` to change).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.errors import exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse
import functools
import multiprocessing
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision import datasets

from benchmarks.benchlib import (
    add_out_flag,
    announce_machine,
    make_photos,
    out_path,
    spread_fields,
    steady_rows,
    write_csv,
)
from common.data import transforms
from common.report.machine import Machine
from common.report.steadiness import LoadMeter


def pipelines(crop: int, resize: int) -> list[tuple[str, str, dict]]:
    """(transform, pipeline, ImageFolder keyword arguments) of the four loaders compared."""
    cfg = transforms.AugmentConfig(crop_size=crop)
    fast_loader = {"loader": transforms.load_uint8}
    return [("train", "reference", {"transform": transforms.train_transform(cfg, fast=False)}),
            ("train", "project", {"transform": transforms.train_transform(cfg, fast=True), **fast_loader}),
            ("eval", "reference", {"transform": transforms.eval_transform(resize, crop, fast=False)}),
            ("eval", "project", {"transform": transforms.eval_transform(resize, crop, fast=True), **fast_loader})]


def record_pid(pids, worker_id: int) -> None:
    """worker_init_fn: note this worker's pid in the shared array, so that its CPU time can be read."""
    pids[worker_id] = os.getpid()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds that process ``pid`` has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_epoch(loader: DataLoader, pids, normalise: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds of workers and main process) for one pass over ``loader``.

    uint8 batches are made model input (normalised) in the main process, as training would. CPU time does not
    count the time other programs take the cores away, so it is the steadier measure on a busy machine.
    """
    cpu, workers = torch.device("cpu"), list(pids)
    t0, main0, worker0 = time.perf_counter(), time.process_time(), sum(map(cpu_seconds, workers))
    for images, _targets in loader:
        if normalise:
            transforms.to_model_input(images, cpu)
    wall, main = time.perf_counter() - t0, time.process_time() - main0
    return wall, main + sum(map(cpu_seconds, workers)) - worker0


def make_loader(root: str, kwargs: dict, args: argparse.Namespace) -> tuple[DataLoader, multiprocessing.Array]:
    """A DataLoader over ``args.images`` images of ``root`` whose workers persist and report their pids."""
    dataset = datasets.ImageFolder(root, **kwargs)
    # Spread over the folder, so that a large one is sampled across its classes.
    dataset = Subset(dataset, np.unique(np.linspace(0, len(dataset) - 1, args.images).astype(int)).tolist())
    pids = multiprocessing.Array("i", args.workers, lock=False)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, shuffle=False,
                        persistent_workers=True, worker_init_fn=functools.partial(record_pid, pids))
    return loader, pids


def run(args: argparse.Namespace, root: str) -> list[dict]:
    """Time every pipeline of ``pipelines`` over the same images, alternating, best of ``args.repeats``."""
    loaders = []
    for kind, pipeline, kwargs in pipelines(args.crop_size, args.resize_size):
        loader, pids = make_loader(root, kwargs, args)
        for _batch in loader:  # warm-up: workers started (and their pids known), files in the page cache
            pass
        loaders.append((kind, pipeline, loader, pids))
    timings: list[list[tuple[float, float]]] = [[] for _ in loaders]  # (wall, cpu) seconds of each repeat
    for _ in range(args.repeats):
        for i, (_kind, pipeline, loader, pids) in enumerate(loaders):
            timings[i].append(timed_epoch(loader, pids, pipeline == "project"))
    rows = []
    for (kind, pipeline, loader, _pids), times in zip(loaders, timings):
        laps = [wall for wall, _ in times]
        wall, cpu, count = min(laps), min(c for _, c in times), len(loader.dataset)  # the best: least disturbed
        rows.append({"transform": kind, "pipeline": pipeline, "workers": args.workers, "batch": args.batch_size,
                     "images": count, "seconds": round(wall, 3), "images_per_s": round(count / wall, 1),
                     "per_worker": round(count / wall / args.workers, 1),
                     "cpu_ms_per_image": round(1e3 * cpu / count, 2), "repeats": args.repeats,
                     **spread_fields({"seconds": laps})})
    for row in rows:
        reference = next(r for r in rows if r["transform"] == row["transform"] and r["pipeline"] == "reference")
        row["speedup"] = round(row["images_per_s"] / reference["images_per_s"], 2)
        row["cpu_speedup"] = round(reference["cpu_ms_per_image"] / row["cpu_ms_per_image"], 2)
    return rows


def describe_images(root: str, generated: bool, count: int) -> str:
    """What the images were, for the table's header and the CSV."""
    samples = datasets.ImageFolder(root).samples
    paths = [samples[i][0] for i in np.unique(np.linspace(0, len(samples) - 1, count).astype(int))]
    kb = np.mean([os.path.getsize(p) for p in paths]) / 1024
    with Image.open(paths[0]) as first:
        size = f"{first.width}x{first.height}"
    if generated:
        return (f"{len(paths)} generated photo-like JPEGs (1/f texture, objects, noise; quality 90; mostly 500x375, "
                f"some portrait and 640x480; mean {kb:.0f} KB; no real photo set on this machine)")
    return f"{len(paths)} images of {root} (first {size}, mean {kb:.0f} KB)"


def report(rows: list[dict], images: str, path: str, machine: Machine) -> None:
    """Print the table and write it as CSV to ``path``, each row with the machine's fields."""
    print(f"images: {images}\ntorch threads in the main process: {torch.get_num_threads()}")
    print(f"{'transform':<9} {'pipeline':<9} {'-j':>2} {'images':>6} {'seconds':>7} {'images/s':>8} {'per worker':>10} "
          f"{'speedup':>7} {'CPU ms/image':>12} {'CPU speedup':>11}")
    for r in rows:
        print(f"{r['transform']:<9} {r['pipeline']:<9} {r['workers']:>2} {r['images']:>6} {r['seconds']:>7.2f} "
              f"{r['images_per_s']:>8.1f} {r['per_worker']:>10.1f} {r['speedup']:>6.2f}x "
              f"{r['cpu_ms_per_image']:>12.2f} {r['cpu_speedup']:>10.2f}x")
    write_csv([{**row, "images_source": images} for row in rows], path, machine)
    wall = {r["transform"]: r["speedup"] for r in rows if r["pipeline"] == "project"}
    cpu = {r["transform"]: r["cpu_speedup"] for r in rows if r["pipeline"] == "project"}
    print(f"=> project vs reference, images/s per worker (per CPU-second): train {wall['train']:.2f}x "
          f"({cpu['train']:.2f}x), target 1.5x; eval {wall['eval']:.2f}x ({cpu['eval']:.2f}x), target 2.0x; "
          f"written to {path}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Input pipeline images/s per worker: project vs reference.")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="an ImageFolder of your images (default: generate photo-like JPEGs)")
    parser.add_argument("--images", type=int, default=400, help="images per epoch (default: 400)")
    parser.add_argument("-j", "--workers", type=int, default=1,
                        help="DataLoader workers per pipeline, 1 or more (default: 1)")
    parser.add_argument("-b", "--batch-size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per pipeline, best kept (default: 3)")
    parser.add_argument("--crop-size", type=int, default=224, help="train and eval crop (default: 224)")
    parser.add_argument("--resize-size", type=int, default=256, help="eval resize of the shorter side (default: 256)")
    add_out_flag(parser, "pipeline.csv")
    return parser


def main(args: argparse.Namespace) -> None:
    if args.workers < 1 or args.images < 1 or args.repeats < 1:
        sys.exit("error: give -j, --images and --repeats of 1 or more.")
    # The main process only receives and normalises batches; one thread keeps it off the workers' cores.
    torch.set_num_threads(1)
    machine = announce_machine()  # CPU only
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as work:
        root = args.data or os.path.join(work, "photos")
        if not args.data:
            make_photos(root, args.images)
        with LoadMeter() as meter:
            rows = run(args, root)
        rows = steady_rows(rows, meter.load, "bench_pipeline", ("transform", "pipeline"))
        images = describe_images(root, not args.data, rows[0]["images"])
        report(rows, images, out_path(args.out, "pipeline.csv"), machine)


if __name__ == "__main__":
    with exit_on_user_error():  # a Ctrl+C ends in one line
        main(get_args_parser().parse_args())
