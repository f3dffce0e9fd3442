"""What happens to an image file that cannot be decoded: skipped and reported (or a stop), in every
map-style reader alike."""
from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable
from typing import Any

import torch

from common.data.images import BadImage
from common.errors import UserError

MAX_SUBSTITUTES = 50


class BadImageLog:
    """Where loading code, in DataLoader workers too, reports unreadable files; the main process drains it.

    ``policy`` is ``skip`` (report and go on) or ``fail`` (stop at the first one). A multiprocessing queue is used
    because workers are separate processes; its feeder thread means reporting never blocks a worker.
    """

    def __init__(self, policy: str = "skip") -> None:
        self.policy = policy
        self.queue: multiprocessing.Queue = multiprocessing.Queue()

    def report(self, exc: BadImage) -> None:
        self.queue.put((exc.path, exc.reason))

    def drain(self) -> list[tuple[str, str]]:
        """Every (path, reason) reported since the last call, in arrival order."""
        items = []
        while True:
            try:
                items.append(self.queue.get(timeout=0.05))
            except queue.Empty:
                return items


def load_or_skip(dataset, index: int, load: Callable[[int, str], Any]):
    """``(image, target, key)`` of ``dataset[index]``, with unreadable images handled as ``dataset.bad_log`` says.

    ``dataset`` has ``samples`` (``(key, target)`` per index), ``transform``, ``bad_log`` and ``substitute``;
    ``load(i, key)`` decodes sample ``i`` or raises BadImage. Every map-style dataset of this module (folder,
    parquet, Arrow) goes through here, so that all of them skip, substitute and report alike.
    """
    samples = dataset.samples
    for attempt in range(MAX_SUBSTITUTES):
        i = (index + attempt) % len(samples)
        key, target = samples[i]
        try:
            image = load(i, key)
        except BadImage as exc:
            if dataset.bad_log is None:
                raise
            if dataset.bad_log.policy == "fail":
                raise UserError(f"unreadable image {exc}; remove or replace it, "
                                "or pass --bad-images skip.") from None
            dataset.bad_log.report(exc)
            if not dataset.substitute:
                return None
            continue
        return (dataset.transform(image) if dataset.transform is not None else image), target, key
    raise UserError(f"{MAX_SUBSTITUTES} images in a row are unreadable from {samples[index][0]} on; "
                    "list them with --check-data.")


def skip_none_collate(batch: list):
    """default_collate without the samples that were dropped as unreadable (None); None if none is left."""
    kept = [sample for sample in batch if sample is not None]
    return torch.utils.data.default_collate(kept) if kept else None
