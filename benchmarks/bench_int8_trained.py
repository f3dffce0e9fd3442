"""Benchmark (accuracy and end-to-end speed): what export.py --int8 costs on models that have learned something.

bench_int8.py times random-weight models, whose top-1 means nothing. Here GhostNet 1.0, MobileNetV3-Large and
ResNet-50 are first trained (train_main.py in this process, the demo's 64 px settings) on each of two data sets: the
demo data (common/data/demo.py: six shapes) and generated tinted photo-like JPEGs (benchlib.make_dataset, six
colour casts). Each trained checkpoint is exported to fp32 ONNX and to int8 (export.py --int8, calibrated on the
set's train split, evaluated on its val split), and test.py then runs the val split end to end (decoding and
resizing included) three ways: the checkpoint in PyTorch (the project's CPU defaults), the fp32 file and the int8
file in ONNX Runtime, each the fastest of --repeats passes. Each pass reads every val image --speed-copies times
(hard links), so that it lasts seconds: a pass over 150 small images is over in half a second, and its start-up
alone moves it by 10-25%, which would fail the steadiness check on an idle machine. Top-1 is unchanged by the copies.

    python benchmarks/bench_int8_trained.py                          # 3 models x 2 data sets, about 13 min on 2 cores
    python benchmarks/bench_int8_trained.py --archs ghostnet --epochs 4 --repeats 1 --speed-copies 1

Prints one table (top-1 fp32 and int8, the drop in points, the agreement, test.py images/s of the three runtimes)
and writes runs/benchmarks/bench_int8_trained_cpu.csv (``--out`` to change; the recorded figures are in
benchmarks/results/).
"""
import argparse
import contextlib
import io
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import export
import test as test_script
import train_main
from benchmarks.benchlib import (
    add_out_flag,
    announce_machine,
    machine_line,
    make_dataset,
    out_path,
    spread_fields,
    steady_rows,
    write_csv,
)
from common.cli import options
from common.data import demo
from common.errors import exit_on_user_error
from common.report.steadiness import LoadMeter
from common.train import launch

ARCHS = ("ghostnet", "mobilenet_v3_large", "resnet50")
SIZE = ["--val-resize-size", "64", "--val-crop-size", "64"]
SPEED = re.compile(r"([\d.]+) images/s")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Top-1 drop and test.py images/s of int8 against fp32 on trained "
                                                 "models.")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), metavar="ARCH",
                        help=f"models (default: {' '.join(ARCHS)})")
    parser.add_argument("--epochs", type=options.POSITIVE_INT, default=15, metavar="N",
                        help="training epochs per model and data set (default: 15)")
    parser.add_argument("--repeats", type=options.POSITIVE_INT, default=5, metavar="N",
                        help="test.py passes per runtime; the fastest is reported (default: 5)")
    parser.add_argument("--speed-copies", type=options.POSITIVE_INT, default=4, metavar="N",
                        help="times each val image is read in one timed pass (hard links; default: 4)")
    parser.add_argument("--calib-images", type=options.POSITIVE_INT, default=256, metavar="N",
                        help="calibration images drawn from the train split (default: 256, export.py's)")
    parser.add_argument("--sets", nargs="+", choices=("demo", "generated"), default=["demo", "generated"],
                        help="data sets to train and measure on (default: demo generated)")
    parser.add_argument("--generated-per-class", type=options.POSITIVE_INT, default=100, metavar="N",
                        help="train images per class of the generated set, a quarter as many val (default: 100)")
    add_out_flag(parser, "bench_int8_trained_cpu.csv")
    return parser


def trained(arch: str, data: str, out: str, epochs: int) -> str:
    """train_main.py with the demo's settings on ``data`` (its output hidden); the best checkpoint's path."""
    flags = [data, "-a", arch, "--output-dir", out, "--epochs", str(epochs), "--seed", "0", "-j", "0",
             "-b", "32", "--lr", "0.02", "--lr-schedule", "cosine", "--warmup-epochs", "1", "--wd", "5e-4",
             "--train-crop-size", "64", *SIZE, "--rrc-scale", "0.6", "1", "-p", "1000"]
    args = train_main.get_args_parser().parse_args(flags)
    with contextlib.redirect_stdout(io.StringIO()):
        launch.prepare(args)
        launch.run_single(args, lambda model, ctx: model, "bench.csv")
    return os.path.join(out, "model_best.pth.tar")


def exported(ckpt: str, data: str, out: str, calib_images: int) -> dict:
    """export.py's fp32 file (``out``.onnx) and int8 file (``out``_int8.onnx, its accuracy measured on --data)."""
    with contextlib.redirect_stdout(io.StringIO()):
        export.main(export.get_args_parser().parse_args(["--ckpt", ckpt, *SIZE, "--output", f"{out}.onnx",
                                                         "-j", "0"]))
        return export.main(export.get_args_parser().parse_args([
            "--ckpt", ckpt, *SIZE, "--output", f"{out}_int8.onnx", "-j", "0", "--int8", "--data", data,
            "--calib-data", os.path.join(data, "train"), "--calib-images", str(calib_images), "--max-drop", "100"]))


def speed_set(data: str, out: str, copies: int) -> str:
    """A dataset root whose val split holds each of ``data``'s val images ``copies`` times (hard links, or copies
    where the file system has none), in the same class folders."""
    val = os.path.join(data, "val")
    for cls in sorted(os.listdir(val)):
        os.makedirs(os.path.join(out, "val", cls))
        for name in sorted(os.listdir(os.path.join(val, cls))):
            for k in range(copies):
                source, target = os.path.join(val, cls, name), os.path.join(out, "val", cls, f"{k}_{name}")
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copyfile(source, target)
    return out


def images_per_s(source: list[str], data: str, repeats: int, out: str) -> tuple[list[float], float]:
    """test.py on ``data``'s val split, end to end: the images/s of each pass and the top-1."""
    speeds, top1 = [], 0.0
    for _ in range(repeats):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            result = test_script.main(test_script.get_args_parser().parse_args(
                [*source, "--data", data, "-b", "16", "--output-dir", os.path.join(out, "test")]))
        speeds.append(float(SPEED.findall(printed.getvalue())[-1]))
        top1 = result["top1"]
    return speeds, top1


def measure(arch: str, name: str, data: str, timed: str, work: str, cfg: argparse.Namespace) -> dict:
    """One row: the trained model's fp32 and int8 top-1, the drop, the agreement and test.py images/s (on
    ``timed``, the speed set of ``data``)."""
    runs = os.path.join(work, "runs", name)  # outputs apart from the data set, as export.py requires
    ckpt = trained(arch, data, os.path.join(runs, arch), cfg.epochs)
    base = os.path.join(runs, f"{arch}_export")
    result = exported(ckpt, data, base, cfg.calib_images)
    speed = {runtime: images_per_s(source, timed, cfg.repeats, runs) for runtime, source in (
        ("pytorch", ["--ckpt", ckpt]), ("ort_fp32", ["--model", f"{base}.onnx"]),
        ("ort_int8", ["--model", f"{base}_int8.onnx"]))}
    row = {"data": name, "arch": arch, "epochs": cfg.epochs, "images": result["images"],
           "fp32_top1": round(result["fp32_top1"], 2), "int8_top1": round(result["int8_top1"], 2),
           "drop": round(result["drop"], 2), "agreement": round(result["agreement"], 1),
           "test_py_int8_top1": round(speed["ort_int8"][1], 2),
           **{f"{runtime}_images_per_s": round(max(ips), 1) for runtime, (ips, _) in speed.items()},  # the fastest
           "repeats": cfg.repeats, **spread_fields({runtime: ips for runtime, (ips, _) in speed.items()})}
    print(f"=> {name} {arch}: top-1 fp32 {row['fp32_top1']} int8 {row['int8_top1']} (drop {row['drop']}), "
          f"agreement {row['agreement']}%, images/s {row['pytorch_images_per_s']} / {row['ort_fp32_images_per_s']} "
          f"/ {row['ort_int8_images_per_s']}", flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| data | model | val images | top-1 fp32 | top-1 int8 | drop (points) | agreement % | test.py "
             "images/s PyTorch / ORT fp32 / ORT int8 |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['data']} | {r['arch']} | {r['images']} | {r['fp32_top1']:.2f} | {r['int8_top1']:.2f} | "
              f"{r['drop']:+.2f} | {r['agreement']:.1f} | {r['pytorch_images_per_s']:.0f} / "
              f"{r['ort_fp32_images_per_s']:.0f} / {r['ort_int8_images_per_s']:.0f} |" for r in rows]
    return "\n".join(lines)


def main(cfg: argparse.Namespace) -> None:
    machine = announce_machine()
    rows = []
    with exit_on_user_error(), tempfile.TemporaryDirectory(prefix="bench_int8_trained_") as work, LoadMeter() as meter:
        for name in cfg.sets:
            data = (demo.ensure_dataset(os.path.join(work, "demo")) if name == "demo" else
                    make_dataset(os.path.join(work, "generated"), cfg.generated_per_class,
                                 max(1, cfg.generated_per_class // 4), classes=6, seed=3))
            timed = speed_set(data, os.path.join(work, "speed", name), cfg.speed_copies)
            rows += [measure(arch, name, data, timed, work, cfg) for arch in cfg.archs]
    print(machine_line(machine))
    print(table(rows))
    rows = steady_rows(rows, meter.load, "bench_int8_trained", ("data", "arch"))
    write_csv(rows, out_path(cfg.out, "bench_int8_trained_cpu.csv"), machine)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
