"""The run record, what rank 0 writes while a run goes: the per-epoch CSV, a per-step CSV (lr and loss every
``print_freq`` steps) and, with ``--tensorboard``, the same scalars as TensorBoard events. ``python -m common.report``
draws the epoch CSV; ``tensorboard --logdir OUTPUT_DIR/tensorboard`` shows the events."""
from __future__ import annotations

import csv
import os
import time

CSV_FIELDS = ("epoch", "start_time", "epoch_seconds", "images_per_s", "data_seconds", "lr",
              "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5", "val_images",
              "bad_images", "val_loss_ema", "val_top1_ema", "val_top5_ema", "resumed_at_step")


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


def epoch_row(epoch: int, started: float, lr: float, train, val, bad_images: int = 0, val_ema=None,
              resumed_at_step: int | None = None) -> dict:
    """The CSV_FIELDS row of one epoch; ``train``, ``val`` (and the EMA weights' ``val_ema``) are
    engine.EpochStats, ``started`` a time.time().

    ``bad_images`` counts the unreadable files met (and skipped) during the epoch, over all ranks.
    ``resumed_at_step`` is set on the first epoch of a resumed run: the step within the epoch at which it continued
    (0: at the epoch's start; more: the row's train figures and time cover only the steps from there on).
    """
    ema = {} if val_ema is None else {"val_loss_ema": val_ema.loss, "val_top1_ema": val_ema.top1,
                                      "val_top5_ema": val_ema.top5}
    return {**ema, "epoch": epoch, "start_time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "epoch_seconds": time.time() - started, "images_per_s": train.images_per_s,
            "data_seconds": train.data_seconds, "lr": lr, "train_loss": train.loss, "train_top1": train.top1,
            "train_top5": train.top5, "val_loss": val.loss, "val_top1": val.top1, "val_top5": val.top5,
            "val_images": val.images, "bad_images": bad_images, "resumed_at_step": resumed_at_step}


STEP_FIELDS = ("epoch", "step", "iteration", "lr", "loss")
_EPOCH_SCALARS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_top1": "top1/train",
                  "val_top1": "top1/val", "val_top5": "top5/val", "val_top1_ema": "top1/val_ema", "lr": "lr/epoch",
                  "images_per_s": "speed/images_per_s", "data_seconds": "speed/data_wait_s"}


def tensorboard_writer(log_dir: str):
    """A SummaryWriter, or None with a one-line notice when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("=> --tensorboard: the tensorboard package is not installed (pip install -r requirements-extra.txt); "
              "the CSV logs are still written", flush=True)
        return None
    return SummaryWriter(log_dir=log_dir)


class TrainingLog:
    """The writer of a training run's records: epoch rows to ``<name>.csv``, step rows to ``<name>_steps.csv``
    (unless ``steps`` is False), both to TensorBoard when enabled."""

    def __init__(self, epoch_path: str, tensorboard: bool = False, steps: bool = True) -> None:
        stem, _ = os.path.splitext(epoch_path)
        self.epochs = CsvLog(epoch_path)
        self.steps = CsvLog(stem + "_steps.csv", STEP_FIELDS) if steps else None
        self.tb = tensorboard_writer(os.path.join(os.path.dirname(epoch_path), "tensorboard")) if tensorboard else None

    def write(self, row: dict) -> None:
        """One epoch's row (logger.CSV_FIELDS)."""
        self.epochs.write(row)
        if self.tb is not None:
            for key, tag in _EPOCH_SCALARS.items():
                if row.get(key) is not None:
                    self.tb.add_scalar(tag, row[key], row["epoch"])
            self.tb.flush()

    def step(self, epoch: int, step: int, iteration: int, lr: float, loss: float) -> None:
        """One training step: ``iteration`` counts optimizer steps over the run, ``lr`` is the one it used."""
        if self.steps is not None:
            self.steps.write({"epoch": epoch, "step": step, "iteration": iteration, "lr": lr, "loss": loss})
        if self.tb is not None:
            self.tb.add_scalar("lr/step", lr, iteration)
            self.tb.add_scalar("loss/train_step", loss, iteration)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
