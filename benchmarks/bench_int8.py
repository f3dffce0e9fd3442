"""Benchmark: int8 models of export.py --int8 (ONNX Runtime static quantization) against ONNX Runtime fp32 and
PyTorch, model alone, at batch 1 and batch 16; and what int8 changes in the predictions.

Each model is a checkpoint with random weights (1000 classes; no pretrained weights can be downloaded here), exported
by export.py in this process to fp32 ONNX and to int8 (calibrated on generated photo-like JPEGs, evaluated on a
second generated set: top-1 of random weights means nothing, so the agreement of int8 with fp32 is what is
reported). Latency is the fastest of --repeats timed repeats of the same batch (on a CPU shared with other work the
fastest is the least disturbed one), one runtime after the other (interleaved, onnxruntime's spin-waiting
threads would slow the next one). A repeat runs the batch as often as fills --min-repeat-ms (at least once) and
counts the mean: a single run of a few milliseconds varies by tens of percent, which would fail the steadiness
check on an idle machine. PyTorch runs with the project's CPU
defaults (channels_last, BatchNorm folded, bf16 autocast where it pays), onnxruntime with its default graph
optimisations and threads (the cores).

    python benchmarks/bench_int8.py                                    # GhostNet 1.0, MobileNetV3-Large, ResNet-50
    python benchmarks/bench_int8.py --archs ghostnet --methods minmax entropy percentile
    python benchmarks/bench_int8.py --quick                            # GhostNet at 64 px: proves it runs

Prints one table (ms per batch and the int8 / fp32 ratios) and writes runs/benchmarks/bench_int8_cpu.csv
(``--out`` to change).
"""
import argparse
import contextlib
import io
import math
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import export
from benchmarks.benchlib import (
    add_out_flag,
    announce_machine,
    make_dataset,
    out_path,
    random_checkpoint,
    spread_fields,
    steady_rows,
    write_csv,
)
from common import limits
from common.cli import options
from common.errors import exit_on_user_error
from common.models import factory
from common.predict import inference, quantize
from common.report.machine import Machine
from common.report.steadiness import LoadMeter

ARCHS = ("ghostnet", "mobilenet_v3_large", "resnet50")
BATCHES = (1, 16)
MIN_REPEAT_MS = 250


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Latency of int8 ONNX models against fp32 ONNX and PyTorch.")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), metavar="ARCH",
                        help=f"models to compare (default: {' '.join(ARCHS)})")
    parser.add_argument("--repeats", type=options.POSITIVE_INT, default=7, metavar="N",
                        help="timed repeats per runtime and batch; the fastest is reported (default: 7)")
    parser.add_argument("--min-repeat-ms", type=options.POSITIVE_INT, default=MIN_REPEAT_MS, metavar="MS",
                        help="each timed repeat runs the batch as often as fills this many milliseconds and counts "
                             f"the mean (default: {MIN_REPEAT_MS})")
    parser.add_argument("--calib-images", type=options.POSITIVE_INT, default=32, metavar="N",
                        help="generated calibration images (default: 32)")
    parser.add_argument("--methods", nargs="+", choices=options.CALIB_METHODS, default=[options.CALIB_METHODS[0]],
                        help="calibration methods whose agreement is measured; the first one is timed (default: "
                             f"{options.CALIB_METHODS[0]})")
    parser.add_argument("--types", nargs="+", choices=options.INT8_TYPES, default=list(options.INT8_TYPES),
                        help="activation/weight types timed (default: both)")
    parser.add_argument("--quick", action="store_true",
                        help="the first --archs model (GhostNet by default) at 64 px with 2 repeats of one run, to "
                             "check that the benchmark runs (no CSV is written)")
    add_out_flag(parser, "bench_int8_cpu.csv")
    return parser


def exported(arch: str, work: str, data: str, crop: int, extra: list[str]) -> tuple[bytes, dict]:
    """export.py's file bytes and result for the random checkpoint of ``arch`` (``extra``: the int8 flags)."""
    ckpt = os.path.join(work, f"{arch}.pth.tar")
    if not os.path.exists(ckpt):
        # 1000 classes, the photos' 4 folders (class0..class3) among them
        random_checkpoint(ckpt, arch, [f"class{i}" for i in range(1000)], 1.0)
    out = os.path.join(work, f"{arch}{'_int8' if extra else ''}.onnx")
    size = ["--val-resize-size", str(round(crop * limits.VAL_RESIZE_SIZE / limits.VAL_CROP_SIZE)),
            "--val-crop-size", str(crop)]
    flags = ["--ckpt", ckpt, *size, "--output", out, "-j", "0", *extra]
    with contextlib.redirect_stdout(io.StringIO()):
        result = export.main(export.get_args_parser().parse_args(flags))
    with open(out, "rb") as f:
        return f.read(), result


def runs_per_repeat(run, min_seconds: float) -> int:
    """How many calls of ``run`` fill ``min_seconds``, judged from one timed call (at least 1)."""
    t0 = time.perf_counter()
    run()
    return max(1, math.ceil(min_seconds / max(time.perf_counter() - t0, 1e-6)))


def time_each(runners: dict, repeats: int, min_seconds: float) -> dict[str, list[float]]:
    """The seconds per call of ``repeats`` timed repeats of each runner, one runner after the other (interleaved,
    onnxruntime's threads, which spin-wait a while after each run, would slow the next runner). A repeat is the mean
    of as many calls as fill ``min_seconds``; one untimed call first, which also sets that count."""
    times: dict[str, list[float]] = {}
    for name, run in runners.items():
        run()
        calls = runs_per_repeat(run, min_seconds)
        laps = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                run()
            laps.append((time.perf_counter() - t0) / calls)
        times[name] = laps
    return times


def pytorch_runner(arch: str, batch: torch.Tensor):
    """The model as test.py runs it on the CPU with the project's defaults."""
    torch.manual_seed(0)
    model = factory.create_model(arch, 1000).eval()
    model, precision, _ = inference.on_device(model, torch.device("cpu"), inference.SpeedConfig())
    x = batch.contiguous(memory_format=torch.channels_last) if precision.channels_last else batch

    def run() -> None:
        with torch.inference_mode(), precision.autocast():
            model(x)
    return run


def measure(arch: str, args: argparse.Namespace, work: str, data: str, crop: int) -> list[dict]:
    """One row per batch size: ms per batch of PyTorch, ORT fp32 and ORT int8 of each type, file sizes, agreement."""
    fp32, _ = exported(arch, work, data, crop, [])
    calib = ["--int8", "--calib-data", os.path.join(data, "train"), "--calib-images", str(args.calib_images),
             "--data", data, "--max-drop", "100"]
    int8, agreement = {}, {}
    for types in args.types:
        int8[types], result = exported(arch, work, data, crop, [*calib, "--int8-types", types,
                                                                "--calib-method", args.methods[0]])
        agreement[f"{types}_{args.methods[0]}"] = result["agreement"]
    for method in args.methods[1:]:
        try:
            agreement[f"{args.types[0]}_{method}"] = exported(arch, work, data, crop, [
                *calib, "--int8-types", args.types[0], "--calib-method", method])[1]["agreement"]
        except SystemExit:  # export.py printed the one line saying why; the row keeps the other figures
            agreement[f"{args.types[0]}_{method}"] = float("nan")
    rows = []
    for batch in BATCHES:
        x = torch.randn(batch, 3, crop, crop)
        sessions = {"ort_fp32": quantize.session(fp32), **{f"ort_int8_{t}": quantize.session(b) for t, b in
                                                          int8.items()}}
        feed = x.numpy()
        runners = {"pytorch": pytorch_runner(arch, x),
                   **{name: (lambda s=s, feed=feed: quantize.run(s, feed)) for name, s in sessions.items()}}
        repeats = 2 if args.quick else args.repeats
        laps = time_each(runners, repeats, 0 if args.quick else args.min_repeat_ms / 1000)
        ms = {name: 1000 * min(s) for name, s in laps.items()}  # the fastest repeat: the least disturbed
        row = {"arch": arch, "batch": batch, "crop": crop, **{f"{k}_ms": round(v, 2) for k, v in ms.items()},
               "repeats": repeats, **spread_fields(laps)}
        for t in int8:
            row[f"int8_{t}_vs_fp32"] = round(ms["ort_fp32"] / ms[f"ort_int8_{t}"], 2)
            row[f"int8_{t}_vs_pytorch"] = round(ms["pytorch"] / ms[f"ort_int8_{t}"], 2)
        row.update(fp32_mib=round(len(fp32) / 2**20, 1), **{f"int8_{t}_mib": round(len(b) / 2**20, 1)
                                                           for t, b in int8.items()},
                   **{f"agreement_{k}": round(v, 1) for k, v in agreement.items()})
        rows.append(row)
    return rows


def report(rows: list[dict], path: str | None, machine: Machine, types: list[str]) -> None:
    print(f"machine: {machine.describe()}")
    head = "".join(f" {'int8 ' + t:>11} {'/fp32':>6}" for t in types)
    print(f"{'model':<19} {'batch':>5} {'PyTorch':>9} {'ORT fp32':>9}{head} {'MiB fp32/int8':>14}  agreement %")
    for r in rows:
        cells = "".join(f" {r[f'ort_int8_{t}_ms']:>11.1f} {r[f'int8_{t}_vs_fp32']:>5.2f}x" for t in types)
        agree = ", ".join(f"{k[10:]} {v}" for k, v in r.items() if k.startswith("agreement_"))
        print(f"{r['arch']:<19} {r['batch']:>5} {r['pytorch_ms']:>9.1f} {r['ort_fp32_ms']:>9.1f}{cells} "
              f"{r['fp32_mib']:>7.1f}/{r[f'int8_{types[0]}_mib']:<6.1f}  {agree}")
    if path:
        write_csv(rows, path, machine)
    print("=> ms per batch, the fastest timed repeat" + (f"; written to {path}" if path else " (--quick: not "
                                                                                              "written)"))


def main(args: argparse.Namespace) -> None:
    with exit_on_user_error():
        machine = announce_machine([torch.device("cpu")])
        archs, crop = (args.archs[:1], 64) if args.quick else (args.archs, limits.VAL_CROP_SIZE)
        rows = []
        with tempfile.TemporaryDirectory(prefix="bench_int8_") as work, LoadMeter() as meter:
            data = make_dataset(os.path.join(work, "photos"), max(1, args.calib_images // 4), 8, 4)
            for arch in archs:
                rows += measure(arch, args, work, data, crop)
                print(f"=> {arch} done", flush=True)
        rows = steady_rows(rows, meter.load, "bench_int8", ("arch", "batch"))
        report(rows, None if args.quick else out_path(args.out, "bench_int8_cpu.csv"), machine, args.types)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
