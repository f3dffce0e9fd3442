"""Prediction over a labelled folder or a list of image files, for test.py and classify_test_data.py.

``prepare`` puts a loaded model (``model_loading``) on its device and turns a labelled folder or a list of image
files into this rank's loader, with targets that use the model's class indices; ``predict`` runs it (sharded under
torchrun) and ``gather`` puts every rank's rows together in dataset order. ``SpeedConfig`` picks the same fast path
as training (uint8 decoding in the workers, autocast by device, channels_last) plus BatchNorm folding, each with an
off switch. Nothing here imports the training engine.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from common import data, faults, models, options, transforms
from common.distributed import DistContext
from common.errors import UserError
from common.images import BadImage, load_rgb
from common.logger import Progress
from common.meters import AverageMeter
from common.model_loading import LoadedModel, ModelSource, class_names, display_names, eval_sizes, load_model
from common.onnx_model import OnnxModel
from common.precision import Precision, choose_precision

# What PIL raises for a file it cannot decode: unknown format (OSError), truncated data, bogus headers, huge images.
UNREADABLE = (BadImage, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def labelled_dir(root: str) -> str:
    """The folder whose subfolders are the classes: ``root/val`` when there is one, else ``root`` itself."""
    if not os.path.isdir(root):
        raise UserError(f"{root!r} is not a folder; pass a dataset root holding val/<class>/* or a folder of "
                        "class folders.")
    val = os.path.join(root, "val")
    return val if os.path.isdir(val) else root


def align_classes(dataset: data.ImageFolderWithPaths, loaded: LoadedModel) -> list[str]:
    """Renumber the folder's targets to the model's class indices (matched by name); return the model's classes.

    A model without class names takes the folder's, by position, when the counts agree.
    """
    classes = loaded.classes
    if classes is None:
        if len(dataset.classes) != loaded.num_classes:
            raise UserError(f"the model has {loaded.num_classes} outputs but no class names, and {dataset.root!r} "
                            f"has {len(dataset.classes)} class folders; evaluate on the folders it was trained on.")
        return list(dataset.classes)
    index = {name: i for i, name in enumerate(classes)}
    unknown = [c for c in dataset.classes if c not in index]
    if unknown:
        raise UserError(f"{dataset.root!r} has class folders the model does not know ({unknown[:5]}); its classes "
                        f"are {classes[:5]}{'...' if len(classes) > 5 else ''}; evaluate on folders named after them.")
    remap = [index[c] for c in dataset.classes]
    dataset.samples = [(path, remap[t]) for path, t in dataset.samples]
    dataset.imgs, dataset.targets = dataset.samples, [t for _, t in dataset.samples]
    dataset.classes, dataset.class_to_idx = list(classes), index
    return list(classes)


class ImageFiles(Dataset):
    """Loose image files, without labels: ``(image, -1, path)`` like ImageFolderWithPaths (``fast``: decoded by
    ``transforms.load_uint8``, else by ``images.load_rgb``)."""

    def __init__(self, paths: list[str], transform, fast: bool = False) -> None:
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"image {missing[0]!r} does not exist{more}; check the path.")
        self.samples, self.transform = [(p, -1) for p in paths], transform
        self.loader = transforms.load_uint8 if fast else load_rgb

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        path, target = self.samples[index]
        return self.transform(self.loader(path)), target, path


class Readable(Dataset):
    """``(image, target, path, ok)``: an unreadable file yields a blank image and ``ok=False`` instead of a crash.

    The blank image has the transform's output type: uint8 for the fast pipeline (``fast``), float otherwise.
    ``limit`` keeps only the first images, in the dataset's order.
    """

    def __init__(self, base: Dataset, crop_size: int, limit: int | None = None, fast: bool = False) -> None:
        self.base, self.crop_size = base, crop_size
        self.dtype = torch.uint8 if fast else torch.float32
        self.length = len(base) if limit is None else min(limit, len(base))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str, bool]:
        try:
            image, target, path = self.base[index]
            return image, target, path, True
        except UNREADABLE:
            path, target = self.base.samples[index]
            return torch.zeros(3, self.crop_size, self.crop_size, dtype=self.dtype), target, path, False


@dataclass(frozen=True)
class LoaderConfig:
    """Eval transform sizes (None: the checkpoint's) and batching."""

    resize: int | None = None
    crop: int | None = None
    batch_size: int | None = None  # None: options.INFER_BATCH_SIZE_GPU, or _CPU on the CPU
    workers: int | None = None
    limit: int | None = None


@dataclass(frozen=True)
class SpeedConfig:
    """The speed flags of test.py and the sorter, as in training (``options.speed_parser``).

    ``fast``: uint8 decoding and resizing in the workers, normalised per batch on the device; otherwise the classic
    PIL transforms. ``amp`` None: autocast where ``precision.amp_by_default`` says it pays.
    """

    fast: bool = True
    amp: bool | None = None
    amp_dtype: str = "auto"
    channels_last: bool = True
    compile: bool = False
    fold_bn: bool = True


def model_source(args) -> ModelSource:
    """The ModelSource of parsed ``options.model_parser`` and ``options.inference_parser`` flags."""
    onnx = getattr(args, "model", None)
    return ModelSource(onnx or args.ckpt or args.weights, args.arch, args.pretrained, args.width_mult,
                       args.unsafe_load, args.classes, onnx=bool(onnx))


def speed_config(args) -> SpeedConfig:
    """The SpeedConfig of parsed ``options.speed_parser`` and ``options.inference_parser`` flags."""
    return SpeedConfig(args.uint8_pipeline, args.amp, args.amp_dtype, args.channels_last, args.compile, args.fold_bn)


@dataclass
class Prepared:
    """A loaded model on its device, the data to run it on, and the names of its classes.

    ``model`` is what runs: ``loaded.model`` with its BatchNorms folded, in ``precision``'s memory format, compiled
    with ``--compile``; ``model_desc`` says which of these it is.
    """

    loaded: LoadedModel
    model: nn.Module
    precision: Precision
    model_desc: str
    fast: bool
    dataset: Readable
    loader: DataLoader
    classes: list[str]
    names: list[str]
    resize: int
    crop: int
    batch_size: int
    workers: int
    source_dir: str | None  # the labelled folder, or None for loose image files


def on_device(model: nn.Module, device: torch.device, speed: SpeedConfig) -> tuple[nn.Module, Precision, str]:
    """The model to run on ``device``, its numeric format and a description of both, as the speed flags and the
    device choose them (also evaluation/compare.py's way of running a model)."""
    if isinstance(model, OnnxModel):  # onnxruntime runs it, in fp32: torch's speed features do not apply
        return model.on(device), Precision(device.type), model.describe()
    precision = choose_precision(device, model, speed.amp, speed.amp_dtype, speed.channels_last)
    desc = [precision.describe()]
    folded = models.fold_batchnorm(model) if speed.fold_bn else None
    if folded is not None:
        model, desc = folded, [*desc, "BatchNorm folded"]
    model = precision.prepare_model(model.to(device))
    if speed.compile:  # freezing: weights become constants, so that inductor folds and prepacks them
        model, desc = torch.compile(model, options={"freezing": True}), [*desc, "torch.compile (frozen)"]
    return model, precision, " + ".join(desc)


def prepare(source: ModelSource, cfg: LoaderConfig, ctx: DistContext, root: str | None = None,
            images: list[str] | None = None, speed: SpeedConfig = SpeedConfig()) -> Prepared:
    """Load the model onto ``ctx.device`` and build this rank's share of a labelled folder or of image files."""
    loaded = load_model(source)
    resize, crop = eval_sizes(loaded.train_args, cfg.resize, cfg.crop)
    if isinstance(loaded.model, OnnxModel):
        loaded.model.check_size(crop)
    transform = transforms.eval_transform(resize, crop, speed.fast)
    fmt, root = data.resolve_source(root) if root else (None, None)
    if fmt == "shards":
        raise UserError(f"{root!r} holds WebDataset shards, which are read as a stream, and predictions are reported "
                        f"per image in order; convert them first: python -m common.convert {root} OUT --to parquet.")
    folder = labelled_dir(root) if fmt == "folder" else root
    if fmt in ("parquet", "arrow"):  # the validation split of a Hugging Face dataset
        base = data.table_split(root, "val", transform, speed.fast)
        classes = align_classes(base, loaded)
    elif folder:
        base = data.image_folder(folder, transform, fast=speed.fast)
        classes = align_classes(base, loaded)
    else:
        base = ImageFiles(images or [], transform, speed.fast)
        classes = class_names(loaded)
    dataset = Readable(base, crop, cfg.limit, speed.fast)
    cpu = ctx.device.type == "cpu"
    batch = cfg.batch_size or (options.INFER_BATCH_SIZE_CPU if cpu else options.INFER_BATCH_SIZE_GPU)
    workers = data.default_workers(ctx.local_world_size) if cfg.workers is None else cfg.workers
    workers = min(workers, math.ceil(len(dataset) / (batch * ctx.world_size)))  # no idle workers to start
    sampler = data.ShardSampler(len(dataset), ctx.world_size, ctx.rank)
    # One pass, so no persistent workers: they end with the pass's iterator, which ``predict`` holds and drops.
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                        pin_memory=ctx.device.type == "cuda")
    model, precision, model_desc = on_device(loaded.model, ctx.device, speed)
    return Prepared(loaded, model, precision, model_desc, speed.fast, dataset, loader, classes,
                    display_names(classes), resize, crop, batch, workers, folder)


def header(prep: Prepared, source: ModelSource, ctx: DistContext) -> str:
    """One line saying which model runs on what, at which size, with which batching."""
    what = source.path or f"ImageNet weights of {prep.loaded.arch}"
    note = f" ({prep.loaded.note})" if prep.loaded.note else ""
    data_desc = f"{len(prep.dataset)} image(s)" + (
        f" from {prep.source_dir} ({data.describe_source(prep.source_dir)})" if prep.source_dir else "")
    params = getattr(prep.loaded.model, "num_params", None) or models.count_params(prep.loaded.model)  # ONNX: its own
    return (f"=> {prep.loaded.arch} from {what}{note}: {params / 1e6:.2f} M params, "
            f"{len(prep.classes)} classes | {data_desc} | {transforms.describe_eval(prep.resize, prep.crop, prep.fast)}"
            f" | {prep.model_desc} | batch {prep.batch_size}, {prep.workers} workers | "
            f"{ctx.world_size} process(es) on {ctx.device.type}")


@dataclass
class Predictions:
    """One row per image, in dataset order once gathered; ``targets`` are -1 for images without a label."""

    indices: torch.Tensor  # (N,) position in the dataset
    paths: list[str]
    targets: torch.Tensor  # (N,) int64
    top_idx: torch.Tensor  # (N, k) class indices, most probable first
    top_prob: torch.Tensor  # (N, k) softmax probabilities
    loss: torch.Tensor  # (N,) cross-entropy of each labelled image (nan without label or when unreadable)
    readable: torch.Tensor  # (N,) bool
    seconds: float  # wall time of the pass, data loading included (slowest rank)
    model_seconds: float  # time in the forward pass only (slowest rank)

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, rows: list[int]) -> Predictions:
        """These rows, in this order."""
        return replace(self, indices=self.indices[rows], paths=[self.paths[i] for i in rows],
                       targets=self.targets[rows], top_idx=self.top_idx[rows], top_prob=self.top_prob[rows],
                       loss=self.loss[rows], readable=self.readable[rows])

    @property
    def ok(self) -> Predictions:
        """Only the readable images."""
        return self.select(self.readable.nonzero().flatten().tolist())


def concat(parts: list[Predictions], k: int, seconds: float = 0.0, model_seconds: float = 0.0) -> Predictions:
    """The rows of ``parts`` one after another (``k``: classes per row, for the shape of an empty result)."""
    empty = {"indices": torch.zeros(0, dtype=torch.long), "targets": torch.zeros(0, dtype=torch.long),
             "top_idx": torch.zeros(0, k, dtype=torch.long), "top_prob": torch.zeros(0, k),
             "loss": torch.zeros(0), "readable": torch.zeros(0, dtype=torch.bool)}
    cat = {name: torch.cat([getattr(p, name) for p in parts]) if parts else value for name, value in empty.items()}
    return Predictions(paths=[path for p in parts for path in p.paths], seconds=seconds, model_seconds=model_seconds,
                       **cat)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _score(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, k: int, device: torch.device,
           precision: Precision):
    """Top-k indices and probabilities (ranked by logit, as the training metrics are) and per-image loss.

    A uint8 batch is normalised on the device; the model runs under ``precision``'s autocast; scores are fp32.
    """
    images = transforms.to_model_input(images, device, precision.channels_last)
    with precision.autocast():
        logits = models.logits_of(model(images)).float()
    top_idx = logits.topk(k, dim=1).indices
    top_prob = logits.softmax(dim=1).gather(1, top_idx)
    targets = targets.to(device)
    loss = F.cross_entropy(logits, targets.clamp(min=0), reduction="none")
    loss = torch.where(targets >= 0, loss, torch.full_like(loss, float("nan")))
    return top_idx.cpu(), top_prob.cpu(), loss.cpu()


BatchHook = Callable[[Predictions], None]


def predict(prep: Prepared, ctx: DistContext, k: int, prefix: str = "Predict: ", show_progress: bool = True,
            on_batch: BatchHook | None = None) -> Predictions:
    """Run the model over this rank's share, ``k`` classes per image; unreadable images keep a row (not readable).

    ``on_batch`` receives each batch's rows as soon as they are scored. SIGTERM or Ctrl+C stops the pass once the
    batch in hand is done (and handed to ``on_batch``): ``faults.Interrupted`` says how far it got. A second Ctrl+C
    stops at once (KeyboardInterrupt).
    """
    model, order, k = prep.model.eval(), list(prep.loader.sampler), min(k, len(prep.classes))
    top1 = AverageMeter("Acc@1", ":6.2f")
    progress = Progress(len(prep.loader), [top1], prefix, max(1, len(prep.loader) // 10), ctx.is_main and show_progress)
    parts: list[Predictions] = []
    model_seconds, start, done = 0.0, time.perf_counter(), 0
    stop, batches = faults.StopRequest().install(), None
    try:
        with torch.inference_mode():
            batches = iter(prep.loader)
            for i, (images, targets, paths, ok) in enumerate(batches):
                _sync(ctx.device)
                t0 = time.perf_counter()
                top_idx, top_prob, loss = _score(model, images, targets, k, ctx.device, prep.precision)
                model_seconds += time.perf_counter() - t0
                labelled = ok & (targets >= 0)
                top1.add(100.0 * int((labelled & (top_idx[:, 0] == targets)).sum()), int(labelled.sum()))
                rows = torch.tensor(order[done:done + len(paths)], dtype=torch.long)
                parts.append(Predictions(rows, list(paths), targets, top_idx, top_prob, loss, ok, 0.0, 0.0))
                done += len(paths)
                if on_batch is not None:
                    on_batch(parts[-1])
                progress.step(i)
                if stop.signum:
                    break
    except Exception:  # after a stop request, a failure of the loader is the stop's doing
        if not stop.signum:
            raise
        # A signal sent to the whole process group (Ctrl+C in a terminal, a scheduler's SIGTERM) also ends the loader
        # workers, and torch then raises RuntimeError, or ConnectionResetError mid-transfer of a batch.
    finally:
        # The only reference to the iterator: dropping it shuts its workers down now rather than at exit, where torch
        # would report one that died of the stop's signal as a failure.
        del batches
        stop.uninstall()
        progress.close()
    if stop.signum:
        raise faults.Interrupted(stop.signum, f"after {done} of {len(order)} images")
    return concat(parts, k, time.perf_counter() - start, model_seconds)


def gather(preds: Predictions, ctx: DistContext) -> Predictions:
    """Every rank's rows on every rank, in dataset order (each image appears once: the shards do not overlap)."""
    if not ctx.distributed:
        return preds
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, preds)
    joined = concat(parts, preds.top_idx.shape[1], max(p.seconds for p in parts), max(p.model_seconds for p in parts))
    return joined.select(joined.indices.argsort().tolist())


def timing_line(preds: Predictions, prep: Prepared, device: torch.device) -> str:
    """Per-image time and throughput of a whole pass, data loading included, and of the model alone."""
    n = max(1, len(preds))
    return (f"=> {len(preds)} images in {preds.seconds:.2f} s: {1000 * preds.seconds / n:.2f} ms/image, "
            f"{len(preds) / max(preds.seconds, 1e-9):.1f} images/s (model alone {1000 * preds.model_seconds / n:.2f} "
            f"ms/image) | batch {prep.batch_size}, {prep.workers} workers, {device.type}")
