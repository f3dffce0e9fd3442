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

from common.cli import options
from common.data import formats, imagefolder, sampling, transforms, valprep
from common.data.images import BadImage, load_rgb
from common.errors import UserError
from common.models import factory, memory, preprocess
from common.models.loading import (
    LoadedModel,
    ModelSource,
    class_names,
    display_names,
    eval_preprocess,
    load_model,
)
from common.models.onnx_model import OnnxModel
from common.parallel import faults
from common.parallel.distributed import DistContext
from common.parallel.precision import Precision, choose_precision, synchronize
from common.predict import evalsets
from common.predict.labels import ClassMap
from common.report.progress import AverageMeter, Progress

# What PIL raises for a file it cannot decode: unknown format (OSError), truncated data, bogus headers, huge images.
UNREADABLE = (BadImage, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def align_classes(dataset: imagefolder.ImageFolderWithPaths, loaded: LoadedModel,
                  class_map: ClassMap | None = None) -> list[str]:
    """Renumber the folder's targets to the model's class indices (matched by name); return the model's classes.

    ``class_map`` first renames class folders (e.g. ImageNet-V2's ``0``..``999``) to the model's class names. A model
    without class names takes the folder's, by position, when the counts agree.
    """
    classes = loaded.classes
    if class_map is not None:
        classes = class_names(loaded)
        folders = [class_map.class_of(c, classes) for c in dataset.classes]
        missing = [c for c, f in zip(dataset.classes, folders) if f is None]
        if missing:
            raise UserError(f"the class map names no class for the folder(s) {missing[:5]} of {dataset.root!r}; "
                            "add them to it.")
    elif classes is None:
        if len(dataset.classes) != loaded.num_classes:
            raise UserError(f"the model has {loaded.num_classes} outputs but no class names, and {dataset.root!r} "
                            f"has {len(dataset.classes)} class folders; evaluate on the folders it was trained on.")
        return list(dataset.classes)
    else:
        folders = list(dataset.classes)
    index = {name: i for i, name in enumerate(classes)}
    unknown = [c for c in folders if c not in index]
    if unknown:
        what = "the class map names classes" if class_map is not None else f"{dataset.root!r} has class folders"
        raise UserError(f"{what} the model does not know ({unknown[:5]}); its classes are {classes[:5]}"
                        f"{'...' if len(classes) > 5 else ''}; " + ("fix the class map." if class_map is not None
                                                                    else "evaluate on folders named after them."))
    remap = [index[c] for c in folders]
    dataset.samples = [(path, remap[t]) for path, t in dataset.samples]
    dataset.imgs, dataset.targets = dataset.samples, [t for _, t in dataset.samples]
    dataset.classes, dataset.class_to_idx = list(classes), index
    return list(classes)


def match_classes(dataset: imagefolder.ImageFolderWithPaths, loaded: LoadedModel, class_map: ClassMap | None,
                  eval_set: str | None) -> tuple[list[str], evalsets.Matching | None, str | None]:
    """The report's classes, how the folder meets the model's outputs where not one for one by name (ImageNet-A/-R,
    a larger unnamed head: ``evalsets``), and the robustness set recognised (``eval_set``: --eval-set)."""
    matching, name = evalsets.match(list(dataset.classes), dataset.root, loaded.classes, loaded.num_classes, eval_set)
    if matching is not None:
        if matching.targets is not None:
            dataset.samples = [(path, matching.targets[t]) for path, t in dataset.samples]
            dataset.imgs, dataset.targets = dataset.samples, [t for _, t in dataset.samples]
        return matching.classes, matching, name
    if name == "imagenet-v2" and class_map is None:
        class_map = ClassMap(True, {})
    synsets = evalsets.model_synsets(None, loaded.num_classes) if loaded.classes is None else None
    if synsets and class_map is None and set(dataset.classes) <= set(synsets):
        loaded = replace(loaded, classes=synsets)  # 1000 unnamed outputs: ImageNet's synsets, in index order
    return align_classes(dataset, loaded, class_map), None, name


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

    ``blank`` is what an unreadable file yields: zeros shaped and typed as the transform's output (uint8 for the
    fast pipeline, float otherwise; a tuple of them when the transform gives one image per resolution). ``limit``
    keeps only the first images, in the dataset's order.
    """

    def __init__(self, base: Dataset, blank: torch.Tensor | tuple[torch.Tensor, ...], limit: int | None = None) -> None:
        self.base, self.blank = base, blank
        self.length = len(base) if limit is None else min(limit, len(base))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str, bool]:
        try:
            image, target, path = self.base[index]
            return image, target, path, True
        except UNREADABLE:
            path, target = self.base.samples[index]
            return self.blank, target, path, False


TTA_MODES = ("none", "flip", "five-crop", "ten-crop")


class MultiView:
    """The eval transforms of several resolutions applied to one decoded image: a tuple, one image per resolution.

    With ``five_crop`` each resolution gives (5, 3, crop, crop): the four corners and the centre of the resized
    image, as torchvision's FiveCrop.
    """

    def __init__(self, preps: list[preprocess.EvalPreprocess], fast: bool, five_crop: bool = False) -> None:
        self.steps = [p.transform(fast, five_crop) for p in preps]

    def __call__(self, image) -> tuple[torch.Tensor, ...]:
        return tuple(step(image) for step in self.steps)


@dataclass(frozen=True)
class LoaderConfig:
    """Eval transform sizes (None: the checkpoint's, else the weights'), batching, resolutions and test-time views.

    ``resize`` / ``crop`` may list several sizes: one pass over the files evaluates each resolution (``crop`` with
    one ``resize`` each, or with the resize that ``crop_pct`` gives: crop / crop_pct, rounded down; without either,
    the crop-to-resize ratio of the model's own preprocessing). ``tta``: one of ``TTA_MODES``.
    """

    resize: int | tuple[int, ...] | None = None
    crop: int | tuple[int, ...] | None = None
    batch_size: int | None = None  # None: options.INFER_BATCH_SIZE_GPU, or _CPU on the CPU
    workers: int | None = None
    limit: int | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    tta: str = "none"


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
                       args.unsafe_load, args.classes, onnx=bool(onnx), ema=getattr(args, "ema", None))


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
    preps: list[preprocess.EvalPreprocess]  # one per resolution, evaluated in the same pass
    batch_size: int
    workers: int
    source_dir: str | None  # the folder read (labelled, or the root of unlabelled images), None for loose files
    data_source: formats.DataSource | None  # what the labelled folder holds, resolved once; None: no labels
    tta: str = "none"
    matching: evalsets.Matching | None = None  # folders not matched one for one with the outputs (evalsets)
    eval_set: str | None = None  # the robustness set the folder holds, when recognised or named

    @property
    def resize(self) -> int:
        return self.preps[0].resize

    @property
    def crop(self) -> int:
        return self.preps[0].crop


def on_device(model: nn.Module, device: torch.device, speed: SpeedConfig) -> tuple[nn.Module, Precision, str]:
    """The model to run on ``device``, its numeric format and a description of both, as the speed flags and the
    device choose them (also evaluation/compare.py's way of running a model)."""
    if isinstance(model, OnnxModel):  # onnxruntime runs it, in fp32: torch's speed features do not apply
        return model.on(device), Precision(device.type), model.describe()
    precision = choose_precision(device, model, speed.amp, speed.amp_dtype, speed.channels_last)
    desc = [precision.describe()]
    folded = factory.fold_batchnorm(model) if speed.fold_bn else None
    if folded is not None:
        model, desc = folded, [*desc, "BatchNorm folded"]
    model = precision.prepare_model(model.to(device))
    if speed.compile:  # freezing: weights become constants, so that inductor folds and prepacks them
        model, desc = torch.compile(model, options={"freezing": True}), [*desc, "torch.compile (frozen)"]
    return model, precision, " + ".join(desc)


def _as_tuple(sizes: int | tuple[int, ...] | None) -> tuple[int, ...]:
    return () if sizes is None else (sizes,) if isinstance(sizes, int) else tuple(sizes)


def check_sizes(cfg: LoaderConfig) -> None:
    """Refuse size flags whose combination is ambiguous, before any work (one sentence each)."""
    crops, resizes = _as_tuple(cfg.crop), _as_tuple(cfg.resize)
    if cfg.crop_pct is not None and resizes:
        raise UserError("--crop-pct and --val-resize-size both set the resize size; give one of them.")
    if len(resizes) > 1 and len(resizes) != len(crops):
        raise UserError(f"--val-resize-size lists {len(resizes)} sizes for {len(crops)} --val-crop-size value(s); "
                        "give one resize per crop, or none and --crop-pct.")
    if len(crops) > 1 and len(resizes) == 1:
        raise UserError(f"one --val-resize-size {resizes[0]} for {len(crops)} crop sizes is ambiguous; give one "
                        "resize per crop (--val-resize-size A B C), or --crop-pct to scale it with each crop.")


def eval_preprocesses(loaded: LoadedModel, cfg: LoaderConfig, path: str | None) -> list[preprocess.EvalPreprocess]:
    """The preprocessing of each resolution that ``cfg`` asks for (``check_sizes`` has passed)."""
    check_sizes(cfg)
    crops, resizes = _as_tuple(cfg.crop), _as_tuple(cfg.resize)
    base = eval_preprocess(loaded, preprocess.EvalFlags(interpolation=cfg.interpolation), path)
    if cfg.crop_pct is None and len(crops) <= 1:
        flags = preprocess.EvalFlags(resizes[0] if resizes else None, crops[0] if crops else None, cfg.interpolation)
        return [eval_preprocess(loaded, flags, path)]
    pct = cfg.crop_pct or base.crop / base.resize
    rule = f"--crop-pct {cfg.crop_pct:g}" if cfg.crop_pct else f"the crop ratio {base.crop}/{base.resize}"
    preps = []
    for i, crop in enumerate(crops or (base.crop,)):
        resize = resizes[i] if resizes else math.floor(crop / pct + 1e-6)
        flags = preprocess.EvalFlags(resize, crop, cfg.interpolation, None if resizes else rule)
        preps.append(eval_preprocess(loaded, flags, path))
    return preps


def labelled_set(root: str, transform, fast: bool) -> tuple[Dataset, str, formats.DataSource]:
    """The labelled images at ``root`` (the validation split of its format, read by random access: for a folder, its
    class folders, ``imagefolder.eval_dir``), the folder they are read from, and the resolved source."""
    source = formats.resolve_source(root)
    dataset = source.reader.split(source.root, "val", transform, fast)
    return dataset, dataset.root, source


UNLABELLED_FLAG = "--unlabelled"


def unlabelled_images(data: str, forced: bool) -> tuple[str, list[str]] | None:
    """The folder and image files that ``--data`` gives without labels, or None for a labelled dataset.

    Without ``forced``, a folder (or its val/) of images with no class folders is read without labels, except a
    folder of ImageNet val images, which is refused naming valprep (its labels exist). ``forced``
    (``--unlabelled``): every image under the folder and its subfolders, whatever they are named."""
    source = formats.resolve_source(data)
    if source.format != "folder":
        if forced:
            raise UserError(f"{UNLABELLED_FLAG} reads a folder of image files, and {data!r} holds a "
                            f"{source.describe()} dataset; drop {UNLABELLED_FLAG}.")
        return None
    folder = source.root if forced else imagefolder.eval_dir(source.root)
    if not forced:
        if not imagefolder.is_flat(folder):
            return None
        refused = valprep.unsorted_val_error(folder, f"or pass {UNLABELLED_FLAG} to predict them without labels.")
        if refused:
            raise UserError(refused)
    found = imagefolder.loose_images(folder)
    if not found:
        raise UserError(f"{folder!r} holds no image files ({', '.join(imagefolder.IMAGE_EXTENSIONS)}); check the "
                        "path.")
    return folder, found


def prepare(source: ModelSource, cfg: LoaderConfig, ctx: DistContext, root: str | None = None,
            images: list[str] | None = None, speed: SpeedConfig = SpeedConfig(),
            class_map: ClassMap | None = None, eval_set: str | None = None, image_root: str | None = None) -> Prepared:
    """Load the model onto ``ctx.device`` and build this rank's share of a labelled folder or of image files.

    ``class_map`` renames the folder's class folders to the model's classes (``align_classes``); ``eval_set`` names
    the robustness set the folder holds (``evalsets``; else it is recognised from the folders). ``image_root``: the
    folder that ``images`` come from (``unlabelled_images``), if any."""
    loaded = load_model(source)
    preps = eval_preprocesses(loaded, cfg, source.path)
    check_memory(loaded.model, cfg, preps, ctx)
    if isinstance(loaded.model, OnnxModel):
        for prep in preps:
            loaded.model.check_run(prep.crop)
    five = cfg.tta in ("five-crop", "ten-crop")
    transform = MultiView(preps, speed.fast, five)
    if root:
        base, folder, data_source = labelled_set(root, transform, speed.fast)
        classes, matching, eval_set = match_classes(base, loaded, class_map, eval_set)
    else:
        base, folder, data_source = ImageFiles(images or [], transform, speed.fast), image_root, None
        classes, matching = class_names(loaded), None
    dtype = torch.uint8 if speed.fast else torch.float32
    blank = tuple(torch.zeros(*((5,) if five else ()), 3, p.crop, p.crop, dtype=dtype) for p in preps)
    dataset = Readable(base, blank, cfg.limit)
    cpu = ctx.device.type == "cpu"
    batch = cfg.batch_size or (options.INFER_BATCH_SIZE_CPU if cpu else options.INFER_BATCH_SIZE_GPU)
    workers = sampling.default_workers(ctx.local_world_size) if cfg.workers is None else cfg.workers
    workers = min(workers, math.ceil(len(dataset) / (batch * ctx.world_size)))  # no idle workers to start
    sampler = sampling.ShardSampler(len(dataset), ctx.world_size, ctx.rank)
    # One pass, so no persistent workers: they end with the pass's iterator, which ``predict`` holds and drops.
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                        pin_memory=ctx.device.type == "cuda")
    model, precision, model_desc = on_device(loaded.model, ctx.device, speed)
    return Prepared(loaded, model, precision, model_desc, speed.fast, dataset, loader, classes,
                    display_names(classes), preps, batch, workers, folder, data_source, cfg.tta, matching, eval_set)


def check_memory(model: nn.Module | OnnxModel, cfg: LoaderConfig, preps: list[preprocess.EvalPreprocess],
                 ctx: DistContext) -> None:
    """Refuse a -b (with the test-time views) or eval crop that needs more memory than the device has free, in one
    line before the first batch (``memory.check_fits``; the CPU's processes share one memory). ONNX models are
    not measured."""
    if not isinstance(model, nn.Module):
        return
    cpu = ctx.device.type == "cpu"
    batch = cfg.batch_size or (options.INFER_BATCH_SIZE_CPU if cpu else options.INFER_BATCH_SIZE_GPU)
    views = {"flip": 2, "five-crop": 5, "ten-crop": 10}.get(cfg.tta, 1)
    processes = ctx.local_world_size if cpu else 1
    size = memory.RunSize(batch, max(p.crop for p in preps), training=False, size_flag="--val-crop-size")
    memory.check_fits(model, size, batch * views * processes, ctx.device, processes,
                      forward_device=next(model.parameters(), torch.empty(0)).device)


def header(prep: Prepared, source: ModelSource, ctx: DistContext) -> str:
    """One line saying which model runs on what, at which size(s) and from where they come, with which batching."""
    what = source.path or f"ImageNet weights of {prep.loaded.arch}"
    note = f" ({prep.loaded.note})" if prep.loaded.note else ""
    held = prep.data_source.describe() if prep.data_source else "no labels"
    data_desc = f"{len(prep.dataset)} image(s)" + (f" from {prep.source_dir} ({held})" if prep.source_dir else "")
    pipeline = prep.preps[0].describe(prep.fast)
    if len(prep.preps) > 1:
        pipeline += "; also " + ", ".join(f"{p.resize}/{p.crop}" for p in prep.preps[1:]) + " (resize/crop)"
    if prep.tta != "none":
        pipeline += f"; test-time augmentation: {prep.tta} (mean of the views' logits)"
    params = getattr(prep.loaded.model, "num_params", None) or factory.count_params(prep.loaded.model)  # ONNX: its own
    return (f"=> {prep.loaded.arch} from {what}{note}: {params / 1e6:.2f} M params, "
            f"{len(prep.classes)} classes | {data_desc} | {pipeline}"
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


def _logits(prep: Prepared, images: torch.Tensor, device: torch.device, norm: transforms.Normalization
            ) -> torch.Tensor:
    """fp32 logits of one resolution's batch, averaged over its test-time views: a (N, 5, 3, H, W) batch holds five
    crops per image; ``flip`` and ``ten-crop`` add each view's mirror image."""
    n, five = images.shape[0], images.dim() == 5
    x = transforms.to_model_input(images.flatten(0, 1) if five else images, device, prep.precision.channels_last,
                                  norm=norm)
    with prep.precision.autocast():
        logits = factory.logits_of(prep.model(x)).float()
        if prep.tta in ("flip", "ten-crop"):
            logits = (logits + factory.logits_of(prep.model(x.flip(-1))).float()) / 2
    if prep.matching is not None and prep.matching.outputs is not None:  # ImageNet-A/-R: only the set's classes
        logits = logits[:, prep.matching.outputs.to(logits.device)]
    return logits.view(n, 5, -1).mean(dim=1) if five else logits


def _score(logits: torch.Tensor, targets: torch.Tensor, k: int, other_from: int | None = None):
    """Top-k indices and probabilities (ranked by logit, as the training metrics are) and per-image loss; outputs at
    or beyond ``other_from`` are shown as that one index (``evalsets.other_output``)."""
    top_idx = logits.topk(k, dim=1).indices
    top_prob = logits.softmax(dim=1).gather(1, top_idx)
    top_idx = evalsets.other_output(top_idx, other_from)
    targets = targets.to(logits.device)
    loss = F.cross_entropy(logits, targets.clamp(min=0), reduction="none")
    loss = torch.where(targets >= 0, loss, torch.full_like(loss, float("nan")))
    return top_idx.cpu(), top_prob.cpu(), loss.cpu()


BatchHook = Callable[[Predictions], None]


def predict(prep: Prepared, ctx: DistContext, k: int, prefix: str = "Predict: ", show_progress: bool = True,
            on_batch: BatchHook | None = None) -> Predictions:
    """The predictions of the first (or only) resolution of ``prep``; see ``predict_all``."""
    return predict_all(prep, ctx, k, prefix, show_progress, on_batch)[0]


def predict_all(prep: Prepared, ctx: DistContext, k: int, prefix: str = "Predict: ", show_progress: bool = True,
                on_batch: BatchHook | None = None) -> list[Predictions]:
    """Run the model over this rank's share, ``k`` classes per image, once per resolution of ``prep`` (each file
    is decoded once); unreadable images keep a row (not readable).

    ``on_batch`` receives each batch's rows (of the first resolution) as soon as they are scored. SIGTERM or Ctrl+C
    stops the pass once the batch in hand is done (and handed to ``on_batch``): ``faults.Interrupted`` says how far
    it got. A second Ctrl+C stops at once (KeyboardInterrupt).
    """
    prep.model.eval()
    order, k = list(prep.loader.sampler), min(k, len(prep.classes))
    top1 = AverageMeter("Acc@1", ":6.2f")
    meters = [top1] if prep.data_source is not None else []  # images without labels: no accuracy to show
    progress = Progress(len(prep.loader), meters, prefix, max(1, len(prep.loader) // 10), ctx.is_main and show_progress)
    parts: list[list[Predictions]] = [[] for _ in prep.preps]
    model_seconds, start, done = 0.0, time.perf_counter(), 0
    stop, batches = faults.StopRequest().install(), None
    try:
        with torch.inference_mode():
            batches = iter(prep.loader)
            for i, (views, targets, paths, ok) in enumerate(batches):
                synchronize(ctx.device)
                t0 = time.perf_counter()
                other = prep.matching.other_from if prep.matching is not None else None
                scores = [_score(_logits(prep, view, ctx.device, p.norm), targets, k, other)
                          for view, p in zip(views, prep.preps)]
                model_seconds += time.perf_counter() - t0
                rows = torch.tensor(order[done:done + len(paths)], dtype=torch.long)
                for part, (top_idx, top_prob, loss) in zip(parts, scores):
                    part.append(Predictions(rows, list(paths), targets, top_idx, top_prob, loss, ok, 0.0, 0.0))
                labelled = ok & (targets >= 0)
                top1.add(100.0 * int((labelled & (scores[0][0][:, 0] == targets)).sum()), int(labelled.sum()))
                done += len(paths)
                if on_batch is not None:
                    on_batch(parts[0][-1])
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
    seconds = time.perf_counter() - start
    return [concat(part, k, seconds, model_seconds) for part in parts]


def count_rows(preds: Predictions, classes: list[str], names: list[str]) -> list[dict]:
    """Per predicted class (those predicted at least once, most first): images, share of all (percent) and mean
    confidence, over the readable images of ``preds``."""
    top1, confidence = preds.top_idx[:, 0], preds.top_prob[:, 0]
    counts = torch.bincount(top1, minlength=len(classes))
    sums = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, top1, confidence.double())
    order = sorted(counts.nonzero().flatten().tolist(), key=lambda c: (-int(counts[c]), classes[c]))
    return [{"class": classes[c], "name": names[c], "images": int(counts[c]),
             "share": round(100.0 * int(counts[c]) / len(preds), 3),
             "mean_confidence": round(float(sums[c] / counts[c]), 6)} for c in order]


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


def data_folder(data: str) -> str:
    """The folder that a ``--data`` value names, without its format prefix (``hf:``, ``wds:``, ``folder:``): what
    an output folder is checked against (``files.check_apart``)."""
    return next((data[len(prefix):] for prefix in formats.PREFIXES if data.startswith(prefix)), data)
