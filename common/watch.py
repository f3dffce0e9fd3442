"""What rank 0 records while a run goes: the per-epoch CSV, a per-step CSV (lr and loss every ``print_freq``
steps) and, with ``--tensorboard``, the same scalars as TensorBoard events. ``python -m common.report`` draws the
epoch CSV; ``tensorboard --logdir OUTPUT_DIR/tensorboard`` shows the events."""
from __future__ import annotations

import os

from common.logger import CsvLog

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
