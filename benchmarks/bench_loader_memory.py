"""Benchmark: DataLoader worker memory over one epoch of an ImageNet-sized file list, list of tuples vs CompactSamples.

The list is what torchvision's ImageFolder builds: one (path, target) tuple per file, 1,281,167 of them by default
(ImageNet's training set), paths such as ``<root>/n00000042/n00000042_00007.JPEG`` over 1000 class folders. Each
class folder holds 16 symbolic links to a pool of 16 small real JPEGs, so every path opens; a sample reads its file's
bytes and nothing more (decoding 1.28 M images would take an hour on two cores, and decoding does not touch the
list). One shuffled epoch runs with ``-j`` workers (forked, as on Linux by default), first over the list, then over
``CompactSamples`` built from it (the list is deleted first). For each worker, /proc/<pid>/smaps_rollup is read
when its first batch arrives and again after the last batch: its private memory (Private_Clean + Private_Dirty,
pages no other process shares) grows as reading the list writes reference counts into the shared pages and so
copies them into the worker. Target: at most 50 MB growth per worker.

    python benchmarks/bench_loader_memory.py                     # 1.28 M entries, 2 workers (about 2 minutes)
    python benchmarks/bench_loader_memory.py --entries 200000 -j 4

Prints one table and writes runs/benchmarks/loader_memory.csv (``--out`` to change).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.errors import exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse
import gc
import multiprocessing
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.benchlib import add_out_flag, announce_machine, out_path, require_smaps, smaps, write_csv
from common.data.samples import CompactSamples
from common.report.machine import Machine

IMAGENET_TRAIN_FILES = 1_281_167
CLASSES = 1000
POOL = 16
MB = 2**20


class ReadBytes(Dataset):
    """``samples[i]`` opened and read: what a loader does before decoding, and all of its use of the list."""

    def __init__(self, samples) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[int, int]:
        path, target = self.samples[index]
        with open(path, "rb") as f:
            return len(f.read()), target


def worker_collate(batch: list[tuple[int, int]]) -> tuple[int, int]:
    """(this worker's pid, bytes read): runs in the worker, so the main process learns whose batch it is."""
    return os.getpid(), sum(size for size, _ in batch)


def make_tree(root: str) -> list[str]:
    """1000 class folders of ``POOL`` symbolic links to ``POOL`` small real JPEGs; return the class folders."""
    rng = np.random.default_rng(0)
    pool = []
    for i in range(POOL):
        pool.append(os.path.join(root, f"pool{i}.jpg"))
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(pool[-1], quality=90)
    folders = []
    for c in range(CLASSES):
        folders.append(os.path.join(root, f"n{c:08d}"))
        os.makedirs(folders[-1])
        for i in range(POOL):
            os.symlink(pool[i], os.path.join(folders[-1], f"n{c:08d}_{i:05d}.JPEG"))
    return folders


def file_list(folders: list[str], entries: int) -> list[tuple[str, int]]:
    """``entries`` ImageFolder-style (path, target) tuples, each path a new string as os.path.join makes it."""
    per_class = -(-entries // len(folders))
    samples = []
    for target, folder in enumerate(folders):
        name = os.path.basename(folder)
        samples.extend((os.path.join(folder, f"{name}_{k % POOL:05d}.JPEG"), target) for k in range(per_class))
    return samples[:entries]


def epoch(samples, workers: int, batch_size: int) -> tuple[dict[int, dict], dict[int, dict], float]:
    """One shuffled epoch: each worker's memory at its first batch and at the end, and the seconds taken."""
    loader = DataLoader(ReadBytes(samples), batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=True, collate_fn=worker_collate,
                        generator=torch.Generator().manual_seed(0))
    first: dict[int, dict] = {}
    t0 = time.perf_counter()
    for pid, _size in loader:
        if pid not in first:
            first[pid] = smaps(pid)
    seconds = time.perf_counter() - t0
    last = {pid: smaps(pid) for pid in first}  # the workers persist, idle, after the epoch
    del loader  # ends the workers
    return first, last, seconds


def run_one(name: str, samples, workers: int, batch_size: int, held_mb: float) -> list[dict]:
    """Table rows, one per worker, for an epoch over ``samples``."""
    first, last, seconds = epoch(samples, workers, batch_size)
    return [{"storage": name, "entries": len(samples), "held_mb": round(held_mb, 1), "worker": i,
             "private_first_mb": round(first[pid]["private"], 1), "private_end_mb": round(last[pid]["private"], 1),
             "growth_mb": round(last[pid]["private"] - first[pid]["private"], 1),
             "pss_end_mb": round(last[pid]["pss"], 1), "rss_end_mb": round(last[pid]["rss"], 1),
             "epoch_s": round(seconds, 1)} for i, pid in enumerate(sorted(first))]


def run(args: argparse.Namespace, root: str) -> list[dict]:
    """The list-of-tuples epoch, then the CompactSamples epoch, on the same generated list."""
    folders = make_tree(root)
    before = smaps(os.getpid())["private"]
    samples = file_list(folders, args.entries)
    list_mb = smaps(os.getpid())["private"] - before
    rows = run_one("list of tuples", samples, args.workers, args.batch_size, list_mb)
    compact = CompactSamples(samples)
    assert compact[len(compact) - 1] == samples[-1]
    del samples
    gc.collect()
    rows += run_one("CompactSamples", compact, args.workers, args.batch_size, compact.nbytes / MB)
    return rows


def report(rows: list[dict], path: str, machine: Machine) -> None:
    """Print the table and write it as CSV to ``path``, each row with the machine's fields."""
    print(f"{rows[0]['entries']:,} entries over {CLASSES} classes; each sample reads its file's bytes (no decoding); "
          f"start method {multiprocessing.get_start_method()}")
    print(f"{'storage':<15} {'held MB':>8} {'worker':>6} {'private MB first':>16} {'at end':>7} {'growth':>7} "
          f"{'PSS end':>8} {'RSS end':>8} {'epoch s':>8}")
    for r in rows:
        print(f"{r['storage']:<15} {r['held_mb']:>8.1f} {r['worker']:>6} {r['private_first_mb']:>16.1f} "
              f"{r['private_end_mb']:>7.1f} {r['growth_mb']:>7.1f} {r['pss_end_mb']:>8.1f} {r['rss_end_mb']:>8.1f} "
              f"{r['epoch_s']:>8.1f}")
    write_csv(rows, path, machine)
    worst = {name: max(r["growth_mb"] for r in rows if r["storage"] == name) for name in ("list of tuples",
                                                                                           "CompactSamples")}
    print(f"=> worst growth per worker: list of tuples {worst['list of tuples']:.1f} MB, CompactSamples "
          f"{worst['CompactSamples']:.1f} MB (target <= 50 MB); written to {path}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="DataLoader worker memory growth: list of tuples vs CompactSamples.")
    parser.add_argument("--entries", type=int, default=IMAGENET_TRAIN_FILES,
                        help=f"(path, target) entries in the list (default: {IMAGENET_TRAIN_FILES:,}, ImageNet's)")
    parser.add_argument("-j", "--workers", type=int, default=2, help="DataLoader workers (default: 2)")
    parser.add_argument("-b", "--batch-size", type=int, default=256, help="batch size (default: 256)")
    add_out_flag(parser, "loader_memory.csv")
    return parser


def main(args: argparse.Namespace) -> None:
    require_smaps()
    if args.workers < 1 or args.entries < CLASSES:
        sys.exit(f"error: give -j 1 or more and --entries {CLASSES} or more.")
    machine = announce_machine()  # CPU only
    with tempfile.TemporaryDirectory(prefix="bench_loader_memory_") as root:
        report(run(args, root), out_path(args.out, "loader_memory.csv"), machine)


if __name__ == "__main__":
    with exit_on_user_error():  # a Ctrl+C ends in one line
        main(get_args_parser().parse_args())
