"""Run an exported ONNX model (``export.py``) with onnxruntime as if it were a PyTorch classifier.

``load_onnx`` opens the file in an onnxruntime InferenceSession and returns an ``OnnxModel``: an nn.Module without
parameters whose forward takes the normalised float (N, 3, H, W) batch that ``transforms.to_model_input`` makes and
returns the (N, classes) logits, so that ``inference.predict`` and the reports run unchanged. The metadata that
``export.py`` writes into the file (``metadata_props``: class names, architecture, eval sizes, mean/std, source
checkpoint) comes back as a dict; a file without it still runs, with the sizes its input shape fixes.

onnx, onnxscript and onnxruntime are optional (requirements-extra.txt): they are imported only here and in
export.py, and their absence is one line naming what to install.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from common import schema
from common.errors import UserError, first_line

INSTALL_HINT = "pip install onnx onnxscript onnxruntime (they are in requirements-extra.txt)"
# metadata_props keys written by export.py; the JSON-encoded ones hold lists.
JSON_KEYS = ("classes", "mean", "std", "input_shape")
_RE_EXPORT = "re-export the model with export.py"
# What export.py writes under each JSON key; checked before the values are used (a mean of two numbers, a string).
# input_shape holds sizes and the names of dynamic axes ("batch").
_JSON_SCHEMA = {"classes": schema.Names(), "mean": [float], "std": [float], "input_shape": [schema.Dim()]}
INPUT_FLOAT, INPUT_UINT8 = "float32 NCHW RGB, normalised", "uint8 NCHW RGB 0-255, normalised inside the graph"


class OnnxMissing(UserError):
    """An ONNX feature was asked for and onnx/onnxscript/onnxruntime is not installed."""


def require(module: str, purpose: str):
    """Import ``module`` (onnx, onnxscript or onnxruntime) or raise OnnxMissing naming ``purpose`` and the fix."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise OnnxMissing(f"{purpose} needs {module}, which is not installed: {INSTALL_HINT}") from None


def encode_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """``meta`` as the string pairs of ONNX ``metadata_props`` (lists as JSON, None left out)."""
    return {k: json.dumps(v) if k in JSON_KEYS else str(v) for k, v in meta.items() if v is not None}


def decode_metadata(props: dict[str, str], path: str) -> dict[str, Any]:
    """The metadata dict of ``encode_metadata``, read back from a file's ``metadata_props``; a damaged value is a
    UserError naming the key."""
    meta: dict[str, Any] = dict(props)
    for key in JSON_KEYS:
        if key in props:
            where = f"{path}: its metadata entry {key!r}"
            value = schema.parse_json(props[key], where, _RE_EXPORT)
            meta[key] = schema.class_names(value, where, _RE_EXPORT) if key == "classes" else schema.check(
                value, _JSON_SCHEMA[key], where, _RE_EXPORT)
    for key in ("mean", "std"):
        if key in meta and (len(meta[key]) != 3 or (key == "std" and min(meta[key]) <= 0)):
            raise UserError(f"{path}: its metadata entry {key!r} is {meta[key]!r}, expected three "
                            f"{'positive ' if key == 'std' else ''}numbers, one per RGB channel; {_RE_EXPORT}.")
    for key in ("val_resize_size", "val_crop_size"):
        if key in props:
            if not props[key].isdigit() or not 0 < int(props[key]) <= 4096:
                raise UserError(f"{path}: its metadata entry {key!r} is {props[key]!r}, not a size in pixels; "
                                "re-export the model with export.py.")
            meta[key] = int(props[key])
    return meta


def providers_for(device: torch.device) -> list[str]:
    """onnxruntime execution providers for ``device``: CUDA first where the GPU build is installed, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider"] if device.type == "cuda" else []
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


def _session(model: bytes | str, providers: list[str], path: str):
    ort = require("onnxruntime", "running an ONNX model")
    try:
        return ort.InferenceSession(model, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not an ONNX model that onnxruntime can run ({reason}); pass a .onnx file "
                        "written by export.py (or torch.onnx.export).") from None


class OnnxModel(nn.Module):
    """An onnxruntime session behind the nn.Module interface: normalised float (N, 3, H, W) in, logits out.

    A graph exported with ``--with-preprocess`` takes uint8 pixels; the float batch is then turned back into the
    pixels it was made from (inverse normalisation, rounded), which recovers them exactly.
    """

    def __init__(self, session, path: str, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.session, self.path = session, path
        self.input = session.get_inputs()[0]
        self.uint8 = self.input.type == "tensor(uint8)"
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.num_params = 0  # set by load_onnx from the graph's initializers

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(H, W) that the graph is fixed to, or None where either is dynamic."""
        h, w = self.input.shape[2:4]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None

    def on(self, device: torch.device) -> OnnxModel:
        """Run on ``device``'s execution provider (CUDA where present and asked for, else the CPU)."""
        providers = providers_for(device)
        if self.session.get_providers()[0] != providers[0]:
            self.session.set_providers(providers)
        return self

    def describe(self) -> str:
        return f"onnxruntime {self.session.get_providers()[0]}, input {self.input.type[7:-1]}"

    def check_size(self, crop: int) -> None:
        """Refuse an eval crop that the graph's fixed input size cannot take."""
        size = self.input_size
        if size is not None and size != (crop, crop):
            raise UserError(f"{self.path} takes {size[0]}x{size[1]} px images, but the eval crop is {crop} px; drop "
                            f"--val-crop-size (or pass --val-crop-size {size[0]}), or export the model again at "
                            "this size.")

    @property
    def fixed_batch(self) -> int | None:
        """The batch size that the graph is fixed to, or None where it is dynamic."""
        n = self.input.shape[0]
        return n if isinstance(n, int) and n > 0 else None

    def check_run(self, crop: int) -> None:
        """Refuse, before the first batch, a model that cannot run on this run's images: a fixed input size other
        than the eval crop (``check_size``), or a graph that fails on a blank batch of that size."""
        self.check_size(crop)
        with torch.inference_mode():
            self(torch.zeros(self.fixed_batch or 1, 3, crop, crop))

    def _run(self, feed: np.ndarray) -> np.ndarray:
        try:
            (logits, *_) = self.session.run(None, {self.input.name: feed})
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types (InvalidArgument, Fail, ...)
            raise UserError(f"{self.path} cannot run on a batch of shape {tuple(feed.shape)} ({first_line(exc, 160)})"
                            "; pass the --val-crop-size it was exported at, or export it again with export.py, "
                            "whose graphs take any batch and size.") from None
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uint8:
            pixels = ((x.float() * self.std.to(x.device) + self.mean.to(x.device)) * 255).round().clamp(0, 255)
            feed = pixels.to(torch.uint8).cpu().numpy()
        else:
            feed = x.detach().float().contiguous().cpu().numpy()
        fixed = self.fixed_batch
        if fixed is None or len(feed) == fixed:
            logits = self._run(feed)
        else:  # a graph exported for batches of exactly ``fixed`` (often 1): run -b's batch in pieces, the last padded
            parts = []
            for start in range(0, len(feed), fixed):
                piece = feed[start:start + fixed]
                pad = np.zeros((fixed - len(piece), *piece.shape[1:]), piece.dtype)
                parts.append(self._run(np.concatenate([piece, pad]))[:len(piece)])
            logits = np.concatenate(parts)
        return torch.from_numpy(np.ascontiguousarray(logits)).to(x.device)


def _count_params(path: str) -> int:
    """Weights in the graph's initializers (with the onnx package; 0 without it)."""
    try:
        import onnx
    except ImportError:
        return 0
    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception:  # noqa: BLE001 - onnxruntime already accepted the file; the count is only for the header
        return 0
    return int(sum(np.prod(t.dims) for t in graph.initializer))


def _check_signature(session, path: str) -> None:
    """One image input of shape (N, 3, H, W), float or uint8, and a first output of shape (N, classes)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape if len(inputs) == 1 else []
    if len(inputs) != 1 or len(shape) != 4 or shape[1] != 3 or inputs[0].type not in ("tensor(float)",
                                                                                      "tensor(uint8)"):
        got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        raise UserError(f"{path} does not take one (N, 3, H, W) float or uint8 image batch (its inputs: {got}); "
                        "pass an image classifier exported by export.py.")
    if len(outputs[0].shape) != 2:
        raise UserError(f"{path}'s first output has shape {outputs[0].shape}, not (N, classes); pass an image "
                        "classifier exported by export.py.")


def _num_classes(model: OnnxModel, session) -> int:
    """The output width: from the graph when fixed, else from one run on a blank image."""
    width = session.get_outputs()[0].shape[1]
    if isinstance(width, int):
        return width
    h, w = model.input_size or (224, 224)
    with torch.inference_mode():
        return int(model(torch.zeros(1, 3, h, w)).shape[1])


def load_onnx(path: str, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[OnnxModel, dict[str, Any], int]:
    """The ONNX file at ``path`` on the CPU: (model, its export metadata ({} for a foreign file), classes).

    ``mean`` / ``std`` are the normalisation of the input batches, used where the file records none.
    """
    if not os.path.isfile(path):
        raise UserError(f"ONNX model {path!r} does not exist; check the path.")
    session = _session(path, ["CPUExecutionProvider"], path)
    _check_signature(session, path)
    meta = decode_metadata(dict(session.get_modelmeta().custom_metadata_map), path)
    model = OnnxModel(session, path, tuple(meta.get("mean", mean)), tuple(meta.get("std", std)))
    model.num_params = int(meta["params"]) if str(meta.get("params", "")).isdigit() else _count_params(path)
    return model.eval(), meta, _num_classes(model, session)
