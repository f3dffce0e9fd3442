"""int8 deployment (export.py --int8): ONNX Runtime static post-training quantization of an exported fp32 model.

``calibration_set`` draws a seeded sample across the classes of a labelled set and passes it through the model's
own eval transform (the checkpoint's resize, crop, interpolation, mean and std: calibrating with other preprocessing
costs accuracy). ``quantize`` runs ONNX Runtime's pre-processing (``quant_pre_process``: shape inference and graph
optimisation) and ``quantize_static`` with per-channel int8 weights, in QDQ format with uint8 activations unless
told otherwise: measured on this project's CPU (docs/deploy.md), signed activations (S8S8) ran 2-3x slower than
ONNX Runtime fp32, uint8 ones (U8S8) 1.7-2.3x faster. The outputs of fully connected layers (Gemm: the classifier)
are left in float: quantised to 256 levels over the calibrated range, the logits of a model whose classes score
close together tie, and a tie's top-1 is decided by which index an argmax takes first (``top1`` takes the one
test.py takes). ``evaluate`` measures fp32 and int8 top-1 and their agreement on a labelled set;
``sensitive_layers`` ranks the layers by the signal-to-quantisation-noise ratio of their outputs (ONNX Runtime's
``qdq_loss_debug``), which is what a refusal names for ``--keep-fp32``.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import math
import os
import random
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common.cli.options import CALIB_METHODS, INT8_FORMATS, INT8_TYPES
from common.data import formats, sampling, transforms
from common.errors import UserError
from common.models import onnx_model, preprocess
from common.models.loading import LoadedModel
from common.predict import inference

CALIB_BATCH = 16
SENSITIVITY_BATCHES = 2  # calibration batches that the per-layer comparison runs on
DEPTHWISE = "depthwise"
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Int8Settings:
    """How to quantise: ``fmt`` (one of INT8_FORMATS), ``types`` (INT8_TYPES), ``method`` (CALIB_METHODS) and the
    patterns of the layers kept in fp32."""

    fmt: str = INT8_FORMATS[0]
    types: str = INT8_TYPES[0]
    method: str = CALIB_METHODS[0]
    keep_fp32: tuple[str, ...] = ()

    def describe(self) -> str:
        acts = "uint8" if self.types == "u8s8" else "int8"
        return (f"{'QDQ' if self.fmt == 'qdq' else 'QOperator'} {self.types.upper()} ({acts} activations, int8 "
                f"per-channel weights), {self.method} calibration")


@dataclass(frozen=True)
class Calibration:
    """The calibration images: where they come from, the uint8 (N, 3, H, W) batches after the eval transform, the
    seed of the draw and the sha256 of the list of files drawn."""

    source: str
    batches: list[torch.Tensor]
    seed: int
    digest: str
    classes: int

    @property
    def count(self) -> int:
        return sum(len(b) for b in self.batches)


@dataclass
class Quantized:
    """The int8 model's bytes, the fp32 graph it was made from (after pre-processing), the node names kept in fp32
    and the statistics of the first calibration batch as fed to the model (per channel mean and std)."""

    blob: bytes
    fp32_pre: bytes
    kept: list[str]
    first_batch: dict[str, Any] = field(default_factory=dict)


def _targets(dataset: Dataset) -> list[int]:
    targets = getattr(dataset, "targets", None)
    return list(targets) if targets is not None else [t for _, t in dataset.samples]


def draw_across_classes(targets: list[int], n: int, seed: int) -> list[int]:
    """``n`` indices (all when fewer), dealt round-robin over the classes, each class's order shuffled with
    ``seed``; returned sorted, the order in which they are read."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(targets):
        by_class[t].append(i)
    for indices in by_class.values():
        rng.shuffle(indices)
    picked: list[int] = []
    for r in range(max((len(v) for v in by_class.values()), default=0)):
        picked += [by_class[c][r] for c in sorted(by_class) if r < len(by_class[c])]
        if len(picked) >= n:
            break
    return sorted(picked[:n])


def _split_of(root: str, default_split: bool, transform) -> tuple[Dataset, str]:
    """The labelled set to calibrate on: ``root`` read as test.py reads it, or (``default_split``) the training
    split of ``--data``."""
    if not default_split:
        dataset, folder, _ = inference.labelled_set(root, transform, True)
        return dataset, folder
    source = formats.resolve_source(root)
    try:
        dataset = source.reader.split(source.root, "train", transform, True)
    except (UserError, OSError) as exc:
        raise UserError(f"--data {root!r} has no training split to calibrate on ({str(exc).rstrip('.')}); give "
                        "--calib-data DIR.") from None
    return dataset, getattr(dataset, "root", os.path.join(source.root, "train"))


def calibration_set(root: str, default_split: bool, prep: preprocess.EvalPreprocess, n: int, seed: int,
                    workers: int | None) -> Calibration:
    """``n`` images of ``root`` drawn across classes with ``seed``, through ``prep``'s eval transform (uint8)."""
    dataset, folder = _split_of(root, default_split, prep.transform(fast=True))
    targets = _targets(dataset)
    if not targets:
        raise UserError(f"{folder!r} holds no images to calibrate on; give --calib-data DIR with images.")
    picked = draw_across_classes(targets, n, seed)
    names = "\n".join(str(dataset.samples[i][0]) for i in picked)
    blank = torch.zeros(3, prep.crop, prep.crop, dtype=torch.uint8)
    readable = inference.Readable(_Picked(dataset, picked), blank)
    loader = DataLoader(readable, batch_size=CALIB_BATCH, num_workers=min(
        sampling.default_workers() if workers is None else workers, math.ceil(len(picked) / CALIB_BATCH)))
    batches = [images[ok] for images, _, _, ok in loader if ok.any()]
    if not batches:
        raise UserError(f"none of the {len(picked)} calibration images of {folder!r} could be read; give "
                        "--calib-data DIR with readable images.")
    return Calibration(folder, batches, seed, hashlib.sha256(names.encode("utf-8", "surrogateescape")).hexdigest(),
                       len(set(targets)))


class _Picked(Dataset):
    """The ``indices`` of ``dataset``, keeping ``samples`` for Readable's rows of unreadable images."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices
        self.samples = [dataset.samples[i] for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]


Feed = Callable[[torch.Tensor], np.ndarray]


def feed_for(uint8: bool, norm: transforms.Normalization) -> Feed:
    """What the graph takes of a uint8 batch: the pixels themselves, or the normalised float32 batch."""
    if uint8:
        return lambda pixels: pixels.numpy()
    return lambda pixels: transforms.to_model_input(pixels, torch.device("cpu"), norm=norm).numpy()


def _reader(batches: list[torch.Tensor], feed: Feed, input_name: str):
    """An ONNX Runtime CalibrationDataReader over ``batches``."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[torch.Tensor] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: feed(batch)}

    return Reader()


def module_name(node) -> str:
    """The PyTorch module an exported node came from (``blocks.3.0.conv_dw``), from the exporter's name scopes;
    the node's own name where they are missing."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [s.strip(" '\"") for s in prop.value.strip("[]").split(",")]
            if len(scopes) >= 2:
                name = scopes[-2]
                return name[len("model."):] if name.startswith("model.") else name
    return node.name


def _is_depthwise(node, shapes: dict[str, list[int]]) -> bool:
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
    return node.op_type == "Conv" and group > 1 and weight is not None and weight[1] == 1


def kept_nodes(proto, patterns: tuple[str, ...]) -> list[str]:
    """The names of the nodes that ``patterns`` select (module or node names with wildcards, or ``depthwise``);
    a pattern that selects nothing is a UserError listing names it could match."""
    shapes = {t.name: list(t.dims) for t in proto.graph.initializer}
    kept: list[str] = []
    for pattern in patterns:
        hits = [n.name for n in proto.graph.node
                if (_is_depthwise(n, shapes) if pattern == DEPTHWISE
                    else fnmatch.fnmatchcase(module_name(n), pattern) or fnmatch.fnmatchcase(n.name, pattern))]
        if not hits:
            modules = sorted({module_name(n) for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")})
            raise UserError(f"--keep-fp32 {pattern!r} matches no layer of the model; its layers include "
                            f"{', '.join(modules[:6])}{' ...' if len(modules) > 6 else ''}.")
        kept += [h for h in hits if h not in kept]
    return kept


def _failure(stage: str, arch: str, exc: Exception, proto, method: str = CALIB_METHODS[0]) -> UserError:
    text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    ops = sorted({n.op_type for n in proto.graph.node if n.op_type in str(exc)}) if proto is not None else []
    op = f" at op {ops[0]}" if ops else ""
    # The histogram calibrators fail on a tensor of (almost) constant values ("Too many bins for data range").
    other = f", use --calib-method {CALIB_METHODS[0]}" if method != CALIB_METHODS[0] else ""
    return UserError(f"ONNX Runtime cannot {stage} {arch}{op} ({text}); keep that layer in fp32 with --keep-fp32 "
                     f"PATTERN{other}, try another --opset, or export fp32 without --int8.")


def _types(settings: Int8Settings):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[settings.method]
    fmt = QuantFormat.QDQ if settings.fmt == "qdq" else QuantFormat.QOperator
    acts = QuantType.QUInt8 if settings.types == "u8s8" else QuantType.QInt8
    return method, fmt, acts, QuantType.QInt8


def _pre_process(pre_process, src: str, out: str) -> None:
    """ONNX Runtime's pre-processing; where its symbolic shape inference fails (an op it does not know), again
    without it, as ONNX Runtime advises: the quantizer then names the op it cannot handle.

    It runs inside ``out``'s (temporary) folder: a failed symbolic shape inference saves
    ``sym_shape_infer_temp.onnx`` into the current folder, which is often the checkout."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            _working_folder(os.path.dirname(os.path.abspath(out))):
        try:
            pre_process(src, out)
        except Exception:  # noqa: BLE001 - whatever failed, the second try says it in its own words
            pre_process(src, out, skip_symbolic_shape=True)


@contextlib.contextmanager
def _working_folder(folder: str) -> Iterator[None]:
    """The current folder is ``folder`` inside the block (``contextlib.chdir`` from Python 3.11 on)."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def batch_stats(batch: np.ndarray) -> dict[str, Any]:
    """Per-channel mean and std of a (N, C, H, W) batch as the model receives it, and its shape and type."""
    x = batch.astype(np.float64)
    return {"shape": list(batch.shape), "dtype": str(batch.dtype), "mean": x.mean(axis=(0, 2, 3)).tolist(),
            "std": x.std(axis=(0, 2, 3)).tolist()}


def quantize(fp32: bytes, calib: Calibration, feed: Feed, settings: Int8Settings, arch: str) -> Quantized:
    """The int8 model of the fp32 ONNX bytes: ONNX Runtime's pre-processing, then static quantization calibrated
    on ``calib`` (fed as ``feed`` makes it), per-channel weights, the nodes ``settings.keep_fp32`` selects left
    in fp32. A model ONNX Runtime cannot quantise is a UserError naming the op where its message does."""
    import onnx
    from onnxruntime.quantization import quant_pre_process, quantize_static

    method, fmt, acts, weights = _types(settings)
    with tempfile.TemporaryDirectory(prefix="int8-") as work:
        src, pre, out = (os.path.join(work, f) for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        with open(src, "wb") as f:
            f.write(fp32)
        proto = onnx.load_from_string(fp32)
        try:
            _pre_process(quant_pre_process, src, pre)
        except Exception as exc:  # noqa: BLE001 - shape inference raises many types; one line names the model
            raise _failure("pre-process", arch, exc, proto) from None
        proto = onnx.load(pre)
        kept = kept_nodes(proto, settings.keep_fp32)
        input_name = proto.graph.input[0].name
        extra = {"ActivationSymmetric": False, "WeightSymmetric": True,
                 "OpTypesToExcludeOutputQuantization": ["Gemm"]}
        try:
            quantize_static(pre, out, _reader(calib.batches, feed, input_name), quant_format=fmt, per_channel=True,
                            activation_type=acts, weight_type=weights, calibrate_method=method,
                            nodes_to_exclude=kept or None, extra_options=extra)
        except Exception as exc:  # noqa: BLE001 - the quantizer raises many types; one line names the op
            raise _failure("quantise", arch, exc, proto, settings.method) from None
        with open(out, "rb") as f, open(pre, "rb") as g:
            blob, pre_blob = f.read(), g.read()
    return Quantized(blob, pre_blob, kept, batch_stats(feed(calib.batches[0])))


def with_metadata(blob: bytes, meta: dict[str, Any]) -> bytes:
    """``blob`` with its metadata_props replaced by ``meta`` (export.py's encoding)."""
    import onnx

    proto = onnx.load_from_string(blob)
    onnx.helper.set_model_props(proto, onnx_model.encode_metadata(meta))
    return proto.SerializeToString()


def count_quantized(blob: bytes) -> dict[str, int]:
    """What the graph holds: int8/uint8 initializers, Q/DQ nodes, QLinear*/integer ops, and float convolutions and
    matrix products left in float (those whose weight, their second input, no DequantizeLinear gives)."""
    import onnx

    graph = onnx.load_from_string(blob).graph
    ints = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    heavy = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    return {"int8_initializers": sum(t.data_type in ints for t in graph.initializer),
            "qdq_nodes": sum(n.op_type in QUANT_OPS for n in graph.node),
            "qlinear_nodes": sum(n.op_type.startswith(("QLinear", "ConvInteger", "MatMulInteger")) for n in graph.node),
            "float_layers": sum(len(n.input) > 1 and n.input[1] not in dq_out for n in heavy)}


def session(blob: bytes, threads: int | None = None):
    """An ONNX Runtime CPU session of ``blob``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


def run(sess, batch: np.ndarray) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: batch})[0]


def top1(logits: np.ndarray) -> np.ndarray:
    """The predicted class of each row, taken as test.py takes it (``torch.topk``): where logits tie, the same index
    wins in both, so the top-1 measured here is the one test.py reports on the written file."""
    return torch.from_numpy(np.ascontiguousarray(logits)).topk(1, dim=1).indices[:, 0].numpy()


def evaluate(root: str, loaded: LoadedModel, prep: preprocess.EvalPreprocess, blobs: tuple[bytes, bytes],
             feed: Feed, workers: int | None) -> dict[str, float]:
    """fp32 and int8 top-1 (percent) on the labelled set ``root`` (the images test.py reads, matched to the
    model's classes by name), the agreement of their predictions, and the image count."""
    dataset, _, _ = inference.labelled_set(root, prep.transform(fast=True), True)
    inference.align_classes(dataset, loaded)
    blank = torch.zeros(3, prep.crop, prep.crop, dtype=torch.uint8)
    loader = DataLoader(inference.Readable(dataset, blank), batch_size=CALIB_BATCH, num_workers=min(
        sampling.default_workers() if workers is None else workers, math.ceil(len(dataset) / CALIB_BATCH)))
    sessions = [session(b) for b in blobs]
    right, agree, n = [0, 0], 0, 0
    for images, targets, _, ok in loader:
        if not ok.any():
            continue
        x, y = feed(images[ok]), targets[ok].numpy()
        top = [top1(run(s, x)) for s in sessions]
        right = [r + int((t == y).sum()) for r, t in zip(right, top)]
        agree, n = agree + int((top[0] == top[1]).sum()), n + len(y)
    if n == 0:
        raise UserError(f"none of the images of {root!r} could be read to measure the int8 accuracy; check --data.")
    return {"fp32_top1": 100.0 * right[0] / n, "int8_top1": 100.0 * right[1] / n, "agreement": 100.0 * agree / n,
            "images": n}


def agreement(blobs: tuple[bytes, bytes], pixels: torch.Tensor, feed: Feed) -> float:
    """Share (percent) of ``pixels`` on which the fp32 and the int8 model predict the same class."""
    x = feed(pixels)
    top = [top1(run(session(b), x)) for b in blobs]
    return 100.0 * float((top[0] == top[1]).mean())


def sensitive_layers(q: Quantized, calib: Calibration, feed: Feed, top: int = 5) -> list[tuple[str, float]]:
    """The ``top`` layers whose quantised outputs are furthest from fp32 (lowest signal-to-quantisation-noise
    ratio in dB, on the first calibration batches), as (module name, SQNR). QDQ graphs only ([] otherwise)."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    with tempfile.TemporaryDirectory(prefix="int8-debug-") as work:
        paths = {k: os.path.join(work, f"{k}.onnx") for k in ("fp32", "int8", "fp32_aug", "int8_aug")}
        for key, blob in (("fp32", q.fp32_pre), ("int8", q.blob)):
            with open(paths[key], "wb") as f:
                f.write(blob)
        name = onnx.load(paths["fp32"]).graph.input[0].name
        acts = {}
        for key in ("fp32", "int8"):
            dbg.modify_model_output_intermediate_tensors(paths[key], paths[f"{key}_aug"])
            acts[key] = dbg.collect_activations(paths[f"{key}_aug"], _reader(calib.batches[:SENSITIVITY_BATCHES],
                                                                                feed, name))
        errors = dbg.compute_activation_error(dbg.create_activation_matching(acts["int8"], acts["fp32"]))
        producer = {o: module_name(n) for n in onnx.load(paths["fp32"]).graph.node for o in n.output}
    scored = [(producer.get(t, t), float(e["qdq_err"])) for t, e in errors.items()
              if "qdq_err" in e and math.isfinite(float(e["qdq_err"]))]
    best: dict[str, float] = {}
    for layer, sqnr in scored:
        best[layer] = min(sqnr, best.get(layer, math.inf))
    return sorted(best.items(), key=lambda kv: kv[1])[:top]
