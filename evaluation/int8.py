"""compare.py --int8: each model exported to ONNX and quantised to int8 as export.py --int8 does (ONNX Runtime static
quantization, QDQ, uint8 activations, int8 per-channel weights), then both files timed side by side by onnxruntime on
the CPU in the same run: batch-1 latency, throughput at the comparison's batch, and file size.

The weights are random and the calibration images are generated noise, so the figures are speed and size only.
"""
from __future__ import annotations

import contextlib
import io
import statistics
import time
import warnings

import torch
import torch.nn as nn

from common.data import transforms
from common.models import factory
from common.predict import quantize
from common.report.steadiness import spread_pct

COLUMNS = ["ort_fp32_latency_ms", "ort_int8_latency_ms", "ort_fp32_latency_spread_pct", "ort_int8_latency_spread_pct",
           "ort_fp32_img_s", "ort_int8_img_s", "onnx_fp32_mib", "onnx_int8_mib", "int8_error"]
CALIB_IMAGES = 8
OPSET = 18


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return factory.logits_of(self.model(x))


def onnx_bytes(model: nn.Module, size: int) -> bytes:
    """The fp32 ONNX file of ``model`` (BatchNorm folded, as export.py writes it) with a dynamic batch dimension."""
    net = _Logits(factory.fold_batchnorm(model) or model).eval()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (torch.randn(2, 3, size, size),), dynamo=True, input_names=["input"],
                                    output_names=["logits"], dynamic_shapes=({0: "batch"},), opset_version=OPSET)
    return program.model_proto.SerializeToString()


def _laps(sess, batch: torch.Tensor, runs: int) -> list[float]:
    """Seconds of each of ``runs`` timed runs of ``sess`` on ``batch``, after one untimed run."""
    feed = batch.numpy()
    quantize.run(sess, feed)
    laps = []
    for _ in range(runs):
        t0 = time.perf_counter()
        quantize.run(sess, feed)
        laps.append(time.perf_counter() - t0)
    return laps


def columns(model: nn.Module, arch: str, size: int, batch: int, repeats: int, threads: int | None) -> dict:
    """The int8 columns of one model: ONNX Runtime fp32 and int8 latency (batch 1, median of ``repeats`` runs) and
    throughput (batch ``batch``), the spread of the latency runs, and both file sizes; what fails is named in
    ``int8_error``."""
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (CALIB_IMAGES, 3, size, size), generator=gen, dtype=torch.uint8)
    calib = quantize.Calibration("generated noise", [pixels], 0, "", 0)
    try:
        fp32 = onnx_bytes(model, size)
        int8 = quantize.quantize(fp32, calib, quantize.feed_for(False, transforms.IMAGENET), quantize.Int8Settings(),
                                 arch).blob
    except Exception as exc:  # noqa: BLE001 - the exporter and the quantizer raise many types; the row stays
        return {"int8_error": str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__}
    row = {"onnx_fp32_mib": round(len(fp32) / 2**20, 2), "onnx_int8_mib": round(len(int8) / 2**20, 2)}
    one, many = torch.randn(1, 3, size, size), torch.randn(batch, 3, size, size)
    steps = max(1, repeats // 25)
    for name, blob in (("fp32", fp32), ("int8", int8)):
        sess = quantize.session(blob, threads)
        laps = _laps(sess, one, repeats)
        row[f"ort_{name}_latency_ms"] = round(1000 * statistics.median(laps), 3)
        if spread_pct(laps) is not None:
            row[f"ort_{name}_latency_spread_pct"] = round(spread_pct(laps), 1)
        row[f"ort_{name}_img_s"] = round(batch / statistics.median(_laps(sess, many, steps)), 1)
    return row


def markdown(rows: list[dict], rounded) -> str:
    """The int8 table of compare.md: ONNX Runtime fp32 against int8 per model, with the int8 speed-ups."""
    head = ["model", "ORT latency ms (fp32 / int8)", "int8 speed-up", "ORT img/s (fp32 / int8)", "int8 speed-up",
            "file MiB (fp32 / int8)"]
    lines = ["", "ONNX Runtime fp32 against int8 (compare.py --int8; random weights: speed and size only).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("int8_error") or r.get("ort_int8_latency_ms") is None:
            lines.append(f"| {r['model']} | failed: {r.get('int8_error', '')} | | | | |")
            continue
        lat = r["ort_fp32_latency_ms"] / r["ort_int8_latency_ms"]
        thr = r["ort_int8_img_s"] / r["ort_fp32_img_s"]
        cells = [r["model"], f"{rounded(r['ort_fp32_latency_ms'])} / {rounded(r['ort_int8_latency_ms'])}",
                 f"{lat:.2f}x", f"{rounded(r['ort_fp32_img_s'])} / {rounded(r['ort_int8_img_s'])}", f"{thr:.2f}x",
                 f"{r['onnx_fp32_mib']:.1f} / {r['onnx_int8_mib']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
