"""Benchmark: training-loader throughput and worker memory on the same JPEGs as a folder, as parquet and as shards.

1,000 photo-like JPEGs of ImageNet-like sizes (benchlib) are written as an ImageFolder, then converted with
``python -m common.convert`` to Hugging Face parquet and to WebDataset shards; every format is read by the loader that
training builds (``loaders.build_datasets`` + ``loaders.build_loaders``: uint8 pipeline, RandomResizedCrop 224 + flip,
per-image seeds), for a warm-up epoch and then a timed one. Reported per format: images/s of the timed epoch, and
the resident (RSS) and private memory of each loader worker, read in the middle of the epoch.

On a local disk the page cache holds all three after the warm-up, so this measures the per-sample CPU cost of each
reader. On network storage a folder pays one open() and metadata round trip per image (tens to hundreds of
microseconds each on NFS or Lustre, more under load), where parquet and shards read a few large files sequentially
or by row group; that difference is not visible here.

    python benchmarks/bench_formats.py                 # 1,000 images, -j 2, batch 64
    python benchmarks/bench_formats.py --images 200 -j 4

GPU throughput on real against synthetic input is what ``train_main.py --profile-input`` measures on a run's own
settings. Prints one table and writes runs/benchmarks/formats.csv (``--out`` to change).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.errors import exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse
import tempfile
import time

import torch

from benchmarks.benchlib import (
    add_out_flag,
    announce_machine,
    machine_line,
    make_dataset,
    out_path,
    require_smaps,
    smaps,
    steady_rows,
    write_csv,
)
from common.data import (
    convert,
    formats,
    loaders,
    unreadable,
)
from common.parallel import distributed
from common.report.machine import Machine
from common.report.steadiness import LoadMeter


def children() -> list[int]:
    """This process's child processes (the loader workers, while they run)."""
    pid = os.getpid()
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def epoch(loader) -> tuple[int, float, list[tuple[float, float]]]:
    """(images, seconds, per-worker (RSS, private) MB mid-epoch) of one pass over ``loader``."""
    loader.sampler.set_epoch(1)
    images, workers, steps = 0, [], len(loader)
    start = time.perf_counter()
    for i, (batch, _target, _keys) in enumerate(loader):
        images += len(batch)
        if i == steps // 2:  # mid-epoch: a shard worker that has delivered its quota is gone by the end
            workers = [(m["rss"], m["private"]) for m in map(smaps, children()) if m is not None]
    return images, time.perf_counter() - start, workers


def measure(name: str, root: str, args: argparse.Namespace) -> list[dict]:
    """Rows of one format: a warm-up epoch, then the timed one."""
    cfg = loaders.DataConfig(formats.resolve_source(root), train_crop_size=224, fast=True,
                             bad_log=unreadable.BadImageLog("skip"))
    train, val, _ = loaders.build_datasets(cfg)
    ctx = distributed.single_process(None, True)
    loader, _ = loaders.build_loaders(cfg.source, train, val, args.batch_size, args.workers, ctx, seed=0)
    epoch(loader)
    images, seconds, workers = epoch(loader)
    return [{"format": name, "images": images, "workers": args.workers, "batch": args.batch_size,
             "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 1), "worker": w,
             "rss_mb": round(rss, 1), "private_mb": round(private, 1)} for w, (rss, private) in enumerate(workers)]


def run(args: argparse.Namespace, work: str) -> list[dict]:
    folder = make_dataset(os.path.join(work, "folder"), args.images // 4, 1)
    sources = [("folder", folder)]
    for to in ("parquet", "shards"):
        out = os.path.join(work, to)
        convert.main(convert.get_args_parser().parse_args([folder, out, "--to", to, "--max-shard-mb", "16"]))
        sources.append((to, out))
    rows = []
    for name, root in sources:
        rows += measure(name, root, args)
    return rows


def report(rows: list[dict], path: str, machine: Machine) -> None:
    print(machine_line(machine))  # again: the converter's lines came after the header
    print(f"{rows[0]['images']} JPEGs per epoch, uint8 RandomResizedCrop 224 + flip, -j {rows[0]['workers']}, "
          f"batch {rows[0]['batch']}, {torch.get_num_threads()} torch threads")
    print(f"{'format':<8} {'images/s':>9} {'vs folder':>9} {'worker':>6} {'RSS MB':>7} {'private MB':>10}")
    base = next(r["images_per_s"] for r in rows if r["format"] == "folder")
    for r in rows:
        print(f"{r['format']:<8} {r['images_per_s']:>9.1f} {r['images_per_s'] / base:>8.2f}x {r['worker']:>6} "
              f"{r['rss_mb']:>7.1f} {r['private_mb']:>10.1f}")
    write_csv(rows, path, machine)
    print(f"=> written to {path}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Loader images/s and worker memory: folder vs parquet vs shards.")
    parser.add_argument("--images", type=int, default=1000, help="training JPEGs (default: 1000)")
    parser.add_argument("-j", "--workers", type=int, default=2, help="DataLoader workers (default: 2)")
    parser.add_argument("-b", "--batch-size", type=int, default=64, help="batch size (default: 64)")
    add_out_flag(parser, "formats.csv")
    return parser


def main(args: argparse.Namespace) -> None:
    require_smaps()
    if args.workers < 1 or args.images < 4 * args.batch_size:
        sys.exit("error: give -j 1 or more and --images of at least four batches.")
    machine = announce_machine()  # the loaders run on the CPU
    with tempfile.TemporaryDirectory(prefix="bench_formats_") as work, LoadMeter() as meter:
        rows = run(args, work)
    report(steady_rows(rows, meter.load, "bench_formats", ("format",)), out_path(args.out, "formats.csv"), machine)


if __name__ == "__main__":
    with exit_on_user_error():  # a Ctrl+C ends in one line
        main(get_args_parser().parse_args())
