"""Looking at a run's input: the loader against the model (``--profile-input``) and the augmented samples sheet
(``--save-samples``)."""
from __future__ import annotations

import itertools
import time

import torch
import torchvision
from torch.utils.data import DataLoader

from common.data import transforms
from common.parallel.distributed import DistContext
from common.parallel.precision import synchronize
from common.report import figures
from common.train.loop import Run


def profile_input(run: Run, ctx: DistContext, steps: int) -> dict:
    """``--profile-input``: images/s of the training loader alone (``steps`` batches after the first, which pays
    for the workers' start) against images/s of ``steps`` training steps on one synthetic batch of the same shape,
    on this rank; rank 0 prints both and which one bounds the run. Nothing is saved."""
    run.train_loader.sampler.set_epoch(0)
    batches = iter(run.train_loader)
    first, _target, _ = next(batches)
    seen, start = 0, time.perf_counter()
    for _, (images, _t, _k) in zip(range(steps), batches):
        seen += len(images)
    input_rate = seen / max(time.perf_counter() - start, 1e-9)
    del batches
    images = transforms.to_model_input(first, ctx.device, run.precision.channels_last, norm=run.norm)
    target = torch.randint(len(run.classes), (len(first),), device=ctx.device)
    run.model.train()
    run.step(images, target)  # warm-up: allocations, cudnn autotuning
    synchronize(ctx.device)
    start = time.perf_counter()
    for _ in range(steps):
        run.step(images, target)
    synchronize(ctx.device)
    model_rate = steps * len(first) / max(time.perf_counter() - start, 1e-9)
    bound = "input" if input_rate < model_rate else "model"
    if ctx.is_main:
        print(f"=> input alone: {input_rate:.1f} images/s ({seen} images, {run.train_loader.num_workers} workers); "
              f"model alone: {model_rate:.1f} images/s ({steps} steps on a synthetic batch of {len(first)}); "
              f"the {bound} bounds this run (per process)", flush=True)
    return {"input_images_per_s": input_rate, "model_images_per_s": model_rate, "bound": bound}


SAMPLES_NAME = "train_samples.png"


def save_samples(loader: DataLoader, epoch: int, path: str, count: int = 32,
                 norm: transforms.Normalization = transforms.IMAGENET, classes: list[str] | None = None) -> None:
    """The first training batch of ``epoch`` (at most ``count`` images), augmented exactly as training will see it
    before MixUp/CutMix, as a grid of 8 images per row, each with its class name under it (``classes``; without
    matplotlib, the bare grid)."""
    loader.sampler.set_epoch(epoch)
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):  # shards: the first batch of the stream
        batch = next(iter(loader))
        images, targets = batch[0][:count], [int(t) for t in batch[1][:count]]
        keys = range(len(images))
    else:
        keys = list(itertools.islice(iter(loader.sampler), min(count, loader.batch_size)))
        items = [loader.dataset[key] for key in keys]
        images, targets = torch.stack([item[0] for item in items]), [int(item[1]) for item in items]
    if images.dtype == torch.uint8:
        images = images.float() / 255
    else:  # normalised floats: undo the normalisation for display
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (norm.mean, norm.std))
        images = (images * std + mean).clamp(0, 1)
    captions = [classes[t] if classes and 0 <= t < len(classes) else str(t) for t in targets]
    try:
        figure = figures.captioned_grid(images, captions, f"augmented training images of epoch {epoch}")
    except figures.MatplotlibMissing:
        torchvision.utils.save_image(images, path, nrow=8, padding=2)
    else:
        figures.save_png(figure, path)
    print(f"=> {len(keys)} augmented training images of epoch {epoch} saved to {path}", flush=True)
