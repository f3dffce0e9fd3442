"""Speed and memory of one model on one device, run one way (``Setup``): batch-1 latency, inference and training
throughput at a batch, and the peak memory of a training step.

Inference runs the model as test.py does (``inference.on_device``: the speed flags, BatchNorm folding, autocast,
channels_last, torch.compile); training runs ``train_step.TrainStep`` with the SGD of ``optim.build_optimizer``, as
``train_main.py`` does. Inputs are random tensors already on the device, so only the model is timed. CUDA work is
synchronised before each clock reading.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from common.models import factory
from common.parallel.precision import Precision, choose_precision, synchronize
from common.predict import inference
from common.report.steadiness import spread_pct
from common.train import optim
from common.train.step import TrainStep

RSS_SAMPLE_S = 0.002  # how often the CPU memory sampler reads the resident set size


@dataclass(frozen=True)
class Budget:
    """How long each figure is measured, at ``input_size`` pixels: ``warmup`` untimed then ``repeats`` timed batch-1
    runs for the latency; one untimed then ``steps`` timed batches of ``batch_size`` for each throughput."""

    input_size: int
    batch_size: int
    repeats: int
    steps: int
    warmup: int


@dataclass(frozen=True)
class Setup:
    """One way to run the models: ``speed`` as test.py and the trainers read their speed flags."""

    name: str
    speed: inference.SpeedConfig


FP32 = Setup("fp32", inference.SpeedConfig(amp=False, channels_last=False, compile=False, fold_bn=False))


@dataclass(frozen=True)
class Figures:
    """What ``measure`` found; ``inference``/``training`` describe the numeric format of each side;
    ``latency_spread_pct`` is the interquartile range of the batch-1 runs over their median (None for one run)."""

    latency_median_ms: float
    latency_p90_ms: float
    infer_img_s: float
    train_img_s: float
    peak_mib: float
    inference: str
    training: str
    latency_spread_pct: float | None = None


def _timed(run: Callable[[], object], device: torch.device, count: int) -> list[float]:
    """Seconds of each of ``count`` calls of ``run``, the device synchronised around each."""
    seconds = []
    for _ in range(count):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def _images(batch: int, size: int, device: torch.device, precision: Precision) -> torch.Tensor:
    x = torch.randn(batch, 3, size, size, device=device)
    return x.contiguous(memory_format=torch.channels_last) if precision.channels_last else x


def latencies(model: nn.Module, device: torch.device, precision: Precision, budget: Budget) -> list[float]:
    """Seconds of each of ``budget.repeats`` batch-1 inference runs of ``model`` after ``budget.warmup`` others."""
    one = _images(1, budget.input_size, device, precision)
    with torch.inference_mode(), precision.autocast():
        _timed(lambda: model(one), device, budget.warmup)
        return _timed(lambda: model(one), device, budget.repeats)


def infer_figures(base: nn.Module, device: torch.device, setup: Setup,
                  budget: Budget) -> tuple[list[float], float, str]:
    """(batch-1 latencies in seconds, images/s at ``budget.batch_size``, description) of ``setup``'s inference."""
    # Re-parameterisation is the model's deployed form (GhostNetV3), so both setups run it; BN folding is a setup's.
    deployed = factory.reparameterized(base) or copy.deepcopy(base)
    model, precision, desc = inference.on_device(deployed.eval(), device, setup.speed)
    one_each = latencies(model, device, precision, budget)
    batch = _images(budget.batch_size, budget.input_size, device, precision)
    with torch.inference_mode(), precision.autocast():
        _timed(lambda: model(batch), device, 1)
        seconds = sum(_timed(lambda: model(batch), device, budget.steps))
    return one_each, budget.batch_size * budget.steps / seconds, desc


def train_step(base: nn.Module, device: torch.device, speed: inference.SpeedConfig) -> TrainStep:
    """A TrainStep as ``train_main.py`` builds it (precision by the speed flags, channels_last, torch.compile, SGD
    with momentum and weight decay), on a copy of ``base``."""
    model = copy.deepcopy(base).to(device)
    precision = choose_precision(device, model, speed.amp, speed.amp_dtype, speed.channels_last)
    model = precision.prepare_model(model)
    if speed.compile:
        model = torch.compile(model)
    optimizer = optim.build_optimizer(model, optim.OptimConfig(lr=1e-3))  # small: random data must not diverge
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return TrainStep(model.train(), nn.CrossEntropyLoss(), optimizer, scheduler, precision)


def train_figures(base: nn.Module, device: torch.device, setup: Setup, budget: Budget) -> tuple[float, float, str]:
    """(images/s, peak MiB of the first step, description) of training steps at ``budget.batch_size``.

    The memory is read over the first (untimed) step, the one that also allocates gradients and momentum buffers.
    """
    step = train_step(base, device, setup.speed)
    images = _images(budget.batch_size, budget.input_size, device, step.precision)
    labels = torch.randint(0, factory.IMAGENET_CLASSES, (budget.batch_size,), device=device)

    def run() -> float:
        return step(images, labels)[1].item()  # reading the loss waits for the step, as the training loop does

    with peak_memory(device) as peak:
        run()
    seconds = sum(_timed(run, device, budget.steps))
    desc = step.precision.describe() + (" + torch.compile" if setup.speed.compile else "")
    return budget.batch_size * budget.steps / seconds, peak[0], desc


def measure(base: nn.Module, device: torch.device, setup: Setup, budget: Budget) -> Figures:
    """Every figure of ``base`` (an eval-ready model on the CPU, left unchanged) run ``setup``'s way on ``device``."""
    train_img_s, peak_mib, train_desc = train_figures(base, device, setup, budget)
    seconds, infer_img_s, infer_desc = infer_figures(base, device, setup, budget)
    ms = sorted(1000 * s for s in seconds)
    p90 = statistics.quantiles(ms, n=10, method="inclusive")[-1] if len(ms) > 1 else ms[0]
    return Figures(statistics.median(ms), p90, infer_img_s, train_img_s, peak_mib, infer_desc, train_desc,
                   spread_pct(ms))


# ------------------------------------------------------------------------------------------------------ memory

def _release_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim), so that the next RSS growth is all new."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[list[float]]:
    """Yields a one-item list that holds, on exit, the peak memory in MiB of the block: CUDA's max allocated
    memory, or on the CPU how far the process's resident set grew (sampled every 2 ms; NaN without /proc)."""
    result = [float("nan")]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        result[0] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    _release_freed_memory()
    start = _rss_bytes()
    if start is None:
        yield result
        return
    peak, done = [start], threading.Event()

    def sample() -> None:
        while not done.wait(RSS_SAMPLE_S):
            peak[0] = max(peak[0], _rss_bytes() or 0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
    result[0] = (max(peak[0], _rss_bytes() or 0) - start) / 2**20
