"""Benchmark: test.py's evaluation of a folder with the checkpoint (PyTorch, the project's defaults) against the same
model exported by export.py and run by onnxruntime (``test.py --model model.onnx``).

Both sides are test.py's main() in this process on the same generated photo-like JPEGs, at batch 1 and at the
default batch; the figure is test.py's own images/s of the pass (decoding, resizing and the model; model loading
excluded), after one untimed run on a few images. PyTorch runs with the project's CPU defaults (channels_last,
BatchNorm folded, bf16 autocast where the CPU has native bf16 and the model no depthwise convolutions); onnxruntime
runs the fp32 export with its default graph optimisations (CUDA execution provider where onnxruntime-gpu and a GPU
are present).

    python benchmarks/bench_export.py                                  # GhostNet 1.0 and ResNet-50, 224 px
    python benchmarks/bench_export.py --archs ghostnet --images 512 -j 2
    python benchmarks/bench_export.py --quick                          # a few images at 64 px: proves it runs

Prints one table with the ONNX / PyTorch ratio per model and batch, and writes
runs/benchmarks/bench_export_<device>.csv (``--out`` to change).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.errors import exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse
import contextlib
import io
import re
import tempfile

import torch

import export
from benchmarks.benchlib import (
    add_out_flag,
    announce_machine,
    file_tag,
    make_class_folder,
    out_path,
    random_checkpoint,
    steady_rows,
    write_csv,
)
from common import limits
from common.cli import options
from common.data import imagefolder
from common.parallel import distributed
from common.report.machine import Machine
from common.report.steadiness import LoadMeter
from tests.inprocess import load_script

WARMUP_IMAGES = 8
ARCHS = ("ghostnet", "resnet50")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Images/s of test.py with the checkpoint versus its ONNX export.",
                                     parents=[options.device_parser()])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), metavar="ARCH",
                        help=f"models to compare (default: {' '.join(ARCHS)})")
    parser.add_argument("--images", type=options.POSITIVE_INT, default=256, help="generated photos (default: 256)")
    parser.add_argument("--size", type=options.PIXELS, default=limits.VAL_CROP_SIZE, metavar="PX",
                        help=f"eval crop size; the resize is 256/224 of it (default: {limits.VAL_CROP_SIZE})")
    parser.add_argument("-j", "--workers", type=options.WORKERS, default=None, metavar="N",
                        help="test.py's data loading workers (default: test.py's)")
    parser.add_argument("--quick", action="store_true",
                        help="16 images at 64 px, to check that the benchmark runs (its figures mean little; no CSV is "
                             "written)")
    add_out_flag(parser, "bench_export_<device>.csv")
    return parser


def evaluate(test, flags: list[str]) -> tuple[float, int]:
    """test.py's main() with ``flags``: (images/s of the pass as it prints it, batch size)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        test.main(test.get_args_parser().parse_args(flags))
    line = [ln for ln in out.getvalue().splitlines() if " images/s " in ln][-1]
    return float(re.search(r"([\d.]+) images/s", line).group(1)), int(re.search(r"batch (\d+)", line).group(1))


def compare(arch: str, crop: int, folder: str, warmup: str, work: str, common_flags: list[str]) -> list[dict]:
    """PyTorch and ONNX images/s of one model at batch 1 and at the default batch."""
    resize = round(crop * limits.VAL_RESIZE_SIZE / limits.VAL_CROP_SIZE)
    size = ["--val-resize-size", str(resize), "--val-crop-size", str(crop)]
    classes = imagefolder.image_folder(folder, None).classes
    ckpt, onnx = os.path.join(work, f"{arch}.pth.tar"), os.path.join(work, f"{arch}.onnx")
    random_checkpoint(ckpt, arch, classes, 1.0)
    with contextlib.redirect_stdout(io.StringIO()):
        export.main(export.get_args_parser().parse_args(["--ckpt", ckpt, *size, "--output", onnx]))
    test, rows = load_script("test.py"), []
    for batch in (["-b", "1"], []):
        speeds = {}
        for name, model in (("pytorch", ["--ckpt", ckpt]), ("onnxruntime", ["--model", onnx])):
            base = [*model, *size, *batch, *common_flags, "--output-dir", os.path.join(work, "eval")]
            evaluate(test, [*base, "--data", warmup])
            speeds[name], used = evaluate(test, [*base, "--data", folder])
        rows.append({"arch": arch, "batch": used, "pytorch_images_per_s": speeds["pytorch"],
                     "onnx_images_per_s": speeds["onnxruntime"],
                     "ratio": round(speeds["onnxruntime"] / speeds["pytorch"], 2)})
    return rows


def run(args: argparse.Namespace, device: torch.device) -> list[dict]:
    images, crop = (16, 64) if args.quick else (args.images, args.size)
    flags = (["--no-accel"] if args.no_accel else []) + (["--gpu", str(args.gpu)] if args.gpu is not None else [])
    flags += ["-j", str(args.workers)] if args.workers is not None else []
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_export_") as work:
        folder = make_class_folder(os.path.join(work, "photos"), images, 4)
        warmup = make_class_folder(os.path.join(work, "warmup"), WARMUP_IMAGES, 4, seed=1)
        for arch in args.archs:
            for row in compare(arch, crop, folder, warmup, work, flags):
                rows.append({**row, "device": device.type, "crop": crop, "images": images})
    return rows


def report(rows: list[dict], path: str | None, machine: Machine) -> None:
    print(f"{'model':<10} {'batch':>5} {'PyTorch img/s':>14} {'ONNX img/s':>11} {'ONNX/PyTorch':>13}")
    for r in rows:
        print(f"{r['arch']:<10} {r['batch']:>5} {r['pytorch_images_per_s']:>14.1f} {r['onnx_images_per_s']:>11.1f} "
              f"{r['ratio']:>12.2f}x")
    if path:
        write_csv(rows, path, machine)
    print(f"=> {rows[0]['images']} images at {rows[0]['crop']} px on {rows[0]['device']}"
          + (f"; written to {path}" if path else " (--quick: not written)"))


def main(args: argparse.Namespace) -> None:
    with exit_on_user_error():
        device = distributed.single_process(args.gpu, args.no_accel).device
        machine = announce_machine([device])
        with LoadMeter() as meter:
            rows = run(args, device)
        rows = steady_rows(rows, meter.load, "bench_export", ("arch", "batch"))
        report(rows, None if args.quick else out_path(args.out, f"bench_export_{file_tag(machine)}.csv"), machine)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
