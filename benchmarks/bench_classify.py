"""Benchmark: classify_test_data.py (batched, DataLoader workers) against the original one-image-at-a-time loop.

The original loop opens each image with PIL, applies the eval transform, runs the model on a batch of one in fp32,
takes the argmax and copies the file into <true class>/right|wrong. classify_test_data.py is timed end to end
(model loading, inference, placing files, manifest and summary) in-process, once with -b 1 -j 0 (the same work as
the loop) and once with its defaults. Same images, same model, same device; one warm-up run of each on a few images.

    python benchmarks/bench_classify.py                          # 512 generated photo-like JPEGs, GhostNet, 224 px
    python benchmarks/bench_classify.py --images 2000 -a resnet50
    python benchmarks/bench_classify.py /data/flowers --ckpt runs/probe/model_best.pth.tar    # your folder and model

Prints one table and writes runs/benchmarks/bench_classify_<arch>_<device>.csv (``--out`` to change).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.errors import exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse
import contextlib
import shutil
import tempfile
import time

import torch
from PIL import Image

import classify_test_data
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
from common.cli import (
    defaults,
    options,
)
from common.data import imagefolder
from common.models import (
    loading,
    preprocess,
)
from common.parallel import distributed
from common.report.machine import Machine
from common.report.steadiness import LoadMeter

WARMUP_IMAGES = 16


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Images/s of classify_test_data.py versus the original one-image-at-a-time loop.",
        parents=[options.data_parser(training=False), options.model_parser("ghostnet", dropout=False),
                 options.inference_parser(onnx=False), options.device_parser()])
    parser.add_argument("--images", type=options.POSITIVE_INT, default=512, help="generated photos (default: 512)")
    # Not --classes: the inference group's --classes names a class-list file.
    parser.add_argument("--photo-classes", type=options.POSITIVE_INT, default=8,
                        help="classes of the generated photos (default: 8)")
    add_out_flag(parser, "bench_classify_<arch>_<device>.csv")
    return parser


def original_loop(ckpt: str, folder: str, out: str, device: torch.device) -> tuple[int, int, int]:
    """The original script: one image at a time, PIL + transform + model(batch of 1) + argmax + shutil.copy."""
    loaded = loading.load_model(loading.ModelSource(ckpt))
    model = loaded.model.to(device).eval()
    transform = loading.eval_preprocess(loaded, preprocess.EvalFlags()).transform(fast=False)
    dataset = imagefolder.image_folder(folder, None)
    with torch.no_grad():
        for path, target in dataset.samples:
            image = transform(Image.open(path).convert("RGB")).unsqueeze(0).to(device)
            pred = int(model(image).argmax(dim=1).item())
            verdict = "right" if pred == target else "wrong"
            dest = os.path.join(out, dataset.classes[target], verdict)
            os.makedirs(dest, exist_ok=True)
            shutil.copy(path, dest)
    return len(dataset.samples), 1, 0


def classify(ckpt: str, folder: str, out: str, flags: list[str]) -> tuple[int, int, int]:
    """classify_test_data.py's main(), in this process, its output discarded: (images, batch size, workers)."""
    args = classify_test_data.get_args_parser().parse_args(["--ckpt", ckpt, "--data", folder, "--out", out, *flags])
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        result = classify_test_data.main(args)
    return result["placed"], result["batch_size"], result["workers"]


def timed(method, ckpt: str, folder: str, warmup_folder: str, work: str, *extra) -> tuple[tuple, float]:
    """What one run returns and its seconds, after an untimed run on a few images (CUDA context, cuDNN, caches)."""
    method(ckpt, warmup_folder, tempfile.mkdtemp(dir=work), *extra)
    t0 = time.perf_counter()
    returned = method(ckpt, folder, tempfile.mkdtemp(dir=work), *extra)
    return returned, time.perf_counter() - t0


def warmup_folder(folder: str, work: str) -> str:
    """A few images of each class of ``folder``, symlinked, for the untimed warm-up runs."""
    dataset, warmup = imagefolder.image_folder(folder, None), os.path.join(work, "warmup")
    per_class = max(1, WARMUP_IMAGES // len(dataset.classes))
    for c, name in enumerate(dataset.classes):
        os.makedirs(os.path.join(warmup, name))
        for path in [p for p, t in dataset.samples if t == c][:per_class]:
            os.symlink(os.path.abspath(path), os.path.join(warmup, name, os.path.basename(path)))
    return warmup


def prepare_inputs(args: argparse.Namespace, work: str) -> tuple[str, str, str]:
    """(checkpoint, image folder, warm-up folder): the user's, or generated ones."""
    folder = imagefolder.eval_dir(args.data) if args.data else os.path.join(work, "photos")
    if not args.data:
        make_class_folder(folder, args.images, args.photo_classes)
    ckpt = args.ckpt or os.path.join(work, "random.pth.tar")
    if not args.ckpt:
        random_checkpoint(ckpt, args.arch, imagefolder.image_folder(folder, None).classes, args.width_mult)
    return ckpt, folder, warmup_folder(folder, work)


def run(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Time the original loop and classify_test_data.py (batch 1, then its defaults) on the same images."""
    on = (["--no-accel"] if args.no_accel else []) + (["--gpu", str(args.gpu)] if args.gpu is not None else [])
    batching = ((["-b", str(args.batch_size)] if args.batch_size else [])
                + (["-j", str(args.workers)] if args.workers is not None else []))
    methods = [("original loop: PIL, batch 1, fp32, shutil.copy", original_loop, (device,)),
               ("classify_test_data.py -b 1 -j 0 --mode copy", classify,
                ([*on, "-b", "1", "-j", "0", "--mode", "copy"],)),
               ("classify_test_data.py, default batching, --mode copy", classify,
                ([*on, *batching, "--mode", "copy"],)),
               ("classify_test_data.py, all defaults (hard links)", classify, ([*on, *batching],))]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_classify_") as work:
        ckpt, folder, warmup = prepare_inputs(args, work)
        arch = loading.load_model(loading.ModelSource(ckpt)).arch
        for name, method, extra in methods:
            (images, batch, workers), seconds = timed(method, ckpt, folder, warmup, work, *extra)
            rows.append({"method": name, "arch": arch, "device": device.type, "batch": batch,
                         "workers": workers, "images": images, "seconds": round(seconds, 3),
                         "images_per_s": round(images / seconds, 1)})
    for row in rows:
        row["speedup"] = round(row["images_per_s"] / rows[0]["images_per_s"], 2)
    return rows


def report(rows: list[dict], path: str, machine: Machine) -> None:
    width = max(len(r["method"]) for r in rows)
    print(f"{'method':<{width}} {'batch':>5} {'-j':>3} {'images':>6} {'seconds':>8} {'images/s':>9} {'speedup':>8}")
    for r in rows:
        print(f"{r['method']:<{width}} {r['batch']:>5} {r['workers']:>3} {r['images']:>6} {r['seconds']:>8.2f} "
              f"{r['images_per_s']:>9.1f} {r['speedup']:>7.2f}x")
    write_csv(rows, path, machine)
    print(f"=> {rows[0]['arch']} on {rows[0]['device']}: the default is {rows[-1]['speedup']:.1f}x the original "
          f"loop's images/s; written to {path}")


def main(args: argparse.Namespace) -> None:
    with exit_on_user_error():
        defaults.resolve_data_dir(args)
        device = distributed.single_process(args.gpu, args.no_accel).device
        machine = announce_machine([device])
        with LoadMeter() as meter:
            rows = run(args, device)
        rows = steady_rows(rows, meter.load, "bench_classify", ("method",))
        report(rows, out_path(args.out, f"bench_classify_{rows[0]['arch']}_{file_tag(machine)}.csv"), machine)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
