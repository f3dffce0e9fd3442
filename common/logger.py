"""What a run writes for people: the per-epoch CSV log and the progress display (tqdm on a terminal)."""
from __future__ import annotations

import csv
import os
import sys
import time

from tqdm import tqdm

from common.meters import AverageMeter, ProgressMeter

CSV_FIELDS = ("epoch", "start_time", "epoch_seconds", "images_per_s", "data_seconds", "lr",
              "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5", "val_images",
              "bad_images", "val_loss_ema", "val_top1_ema", "val_top5_ema")


class CsvLog:
    """Append one row per epoch to ``path``; the header is written when the file is new or empty."""

    def __init__(self, path: str, fields: tuple[str, ...] = CSV_FIELDS) -> None:
        self.path, self.fields = path, fields

    def write(self, row: dict) -> None:
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in self.fields})


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


class Progress:
    """A tqdm bar when stderr is a terminal, else ProgressMeter lines every ``print_freq`` batches."""

    def __init__(self, total: int, meters: list[AverageMeter], prefix: str, print_freq: int, enabled: bool) -> None:
        self.total, self.meters, self.print_freq = total, meters, max(1, print_freq)
        tty = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=prefix.strip(), dynamic_ncols=True, leave=False) if tty else None
        self.plain = ProgressMeter(total, meters, prefix) if enabled and not tty else None

    def step(self, i: int) -> None:
        last = i == self.total - 1
        if self.bar is not None:
            self.bar.update(1)
            if i % self.print_freq == 0 or last:
                self.bar.set_postfix_str(" ".join(f"{m.name} {m.avg:.3f}" for m in self.meters[-3:]))
        elif self.plain is not None and (i % self.print_freq == 0 or last):
            print(self.plain.line(i), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def epoch_row(epoch: int, started: float, lr: float, train, val, bad_images: int = 0, val_ema=None) -> dict:
    """The CSV_FIELDS row of one epoch; ``train``, ``val`` (and the EMA weights' ``val_ema``) are
    engine.EpochStats, ``started`` a time.time().

    ``bad_images`` counts the unreadable files met (and skipped) during the epoch, over all ranks.
    """
    ema = {} if val_ema is None else {"val_loss_ema": val_ema.loss, "val_top1_ema": val_ema.top1,
                                      "val_top5_ema": val_ema.top5}
    return {**ema, "epoch": epoch, "start_time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "epoch_seconds": time.time() - started, "images_per_s": train.images_per_s,
            "data_seconds": train.data_seconds, "lr": lr, "train_loss": train.loss, "train_top1": train.top1,
            "train_top5": train.top5, "val_loss": val.loss, "val_top1": val.top1, "val_top5": val.top5,
            "val_images": val.images, "bad_images": bad_images}
