"""Export a model of this project for deployment: ONNX (onnxruntime and other runtimes), torch.export (.pt2), or a
timm Hub folder.

Any model that test.py reads: a checkpoint of train_*.py or network.py (its EMA weights when the checkpoint marks
them as the better ones, as test.py does; --ema / --no-ema choose), a state_dict with -a, or ImageNet weights with
--pretrained -a ARCH. The model is exported in eval mode with its BatchNorms folded into the convolutions, for the
checkpoint's eval crop (--val-crop-size to change it), with a dynamic batch dimension:

    python export.py --ckpt runs/probe/model_best.pth.tar --output runs/export/model.onnx
    python export.py --ckpt runs/probe/model_best.pth.tar --output runs/export/model_uint8.onnx --with-preprocess
    python export.py --ckpt runs/probe/model_best.pth.tar --output runs/export/model.pt2        # --format torch-export
    python export.py --ckpt state_dict.pth -a resnet18 --classes classes.txt --output runs/export/model.onnx
    python export.py --pretrained -a ghostnet --output runs/export/ghostnet.onnx --data /data/imagenet/val -b 32

Then ``python test.py --model model.onnx --data DIR`` evaluates the ONNX file with onnxruntime, and
``torch.export.load("model.pt2").module()`` runs the program without this project's code.

ONNX: the dynamo exporter (torch.onnx.export(dynamo=True)) at --opset (default 18). The input is the float32 batch
(N, 3, H, W) normalised with the metadata's mean/std; --with-preprocess makes it uint8 RGB pixels (N, 3, H, W) and
puts the conversion and normalisation into the graph. Decoding, resizing and centre-cropping stay outside: they work
on images of any size (a fixed-shape graph cannot take them), their antialiased resize is implemented differently
by every runtime (so the same image would not give the same pixels), and a deployer's decoder usually resizes
better and cheaper itself; the metadata says exactly what to do (``preprocess_outside``). The file's metadata_props
hold the class names, architecture, input shape and format, mean/std, eval resize/crop/interpolation, the source
file and its sha256; a .pt2 carries the same JSON as its extra file ``metadata.json``.

Before anything is written, the exported model and the PyTorch model (unfolded, fp32) run on the same batch: the
first -b images of --data, or generated ones. The largest logit difference must stay within --tolerance times
max(1, largest |logit|) and the top-1 classes must agree on every image (where the PyTorch logits of the two
classes tie within the tolerance, either counts); otherwise the exit status is 2 and no file is written.
--no-check skips it. The file is written whole (temporary file, then rename) or not at all.

--format timm writes a folder as timm's Hub has them (config.json with the class names and eval preprocessing,
model.safetensors, a model card README.md), for GhostNets at timm's widths and the torchvision models timm has under the
same name and layout; timm builds the model from it and must give the same logits before the folder is put in place:

    python export.py --ckpt runs/probe/model_best.pth.tar --format timm --output runs/probe/timm

--int8 quantises the checked ONNX model with ONNX Runtime (common/predict/quantize.py), calibrated on --calib-data
(default: --data's training split) through the checkpoint's eval transform; with --data it measures fp32 and int8
top-1 and writes nothing above --max-drop points (docs/deploy.md#int8):

    python export.py --ckpt runs/probe/model_best.pth.tar --data /imagenet --int8 --output runs/export/model_int8.onnx
"""
from common.errors import UserError, exit_on_user_error, first_line, quiet_ctrl_c, sigterm_raises

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse
import contextlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from common import files, limits
from common.cli import defaults, options
from common.data import sampling, transforms
from common.models import checkpoint, factory, loading, onnx_model, preprocess, timm_folder
from common.predict import inference, quantize

FORMATS = {".onnx": "onnx", ".pt2": "torch-export"}
TIMM = "timm"  # a folder, not a file: config.json, model.safetensors and README.md, as timm's Hub has them
DEFAULT_OPSET, MAX_OPSET = 18, 23  # 18: torchlib's own opset, run by onnxruntime >= 1.14; 23: onnxruntime 1.22+
CHECK_IMAGES = 16
INPUT_NAME, UINT8_INPUT_NAME, OUTPUT_NAME = "input", "pixels", "logits"
MAX_CHECK_IMAGES = 256  # the check runs them as one batch through both models
CHECK_HELP = (f"images the export is checked on: the first N of --data, or generated ones (default: {CHECK_IMAGES}, "
              f"at most {MAX_CHECK_IMAGES})")
METADATA_FILE = "metadata.json"  # the metadata's name among a .pt2's extra files


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a model to ONNX or torch.export, checked against PyTorch before it is written.",
        parents=[options.data_parser(training=False), options.model_parser(default_arch=None, dropout=False),
                 options.inference_parser(onnx=False, batch_help=CHECK_HELP), options.int8_parser()])
    parser.add_argument("--output", required=True, metavar="PATH",
                        help="the file to write: *.onnx (ONNX) or *.pt2 (torch.export); with --format timm, a folder")
    parser.add_argument("--format", choices=sorted({*FORMATS.values(), TIMM}), default=None,
                        help="onnx or torch-export (default: from the --output extension), or timm: a folder that "
                             "timm.create_model('local-dir:PATH', pretrained=True) loads, ready for the Hub")
    parser.add_argument("--with-preprocess", action="store_true",
                        help="the exported model takes uint8 RGB pixels (N, 3, H, W), already resized and "
                             "centre-cropped, and normalises them itself (default: normalised float32 input)")
    parser.add_argument("--opset", type=limits.Number(int, DEFAULT_OPSET, MAX_OPSET), default=DEFAULT_OPSET,
                        help=f"ONNX opset, {DEFAULT_OPSET} to {MAX_OPSET} (default: {DEFAULT_OPSET})")
    parser.add_argument("--no-check", action="store_true",
                        help="write the file without running it against the PyTorch model first")
    parser.add_argument("--tolerance", type=limits.Number(float, 0, 1, low_open=True), default=1e-3,
                        help="largest logit difference accepted, times max(1, largest |logit|) (default: 1e-3)")
    return parser


@dataclass(frozen=True)
class Target:
    """What to write: the format, the path, whether the graph takes uint8 pixels, and the ONNX opset."""

    fmt: str
    path: str
    uint8: bool
    opset: int


def check_args(args: argparse.Namespace) -> Target:
    """Check the flags; return what to write."""
    options.check_inference_args(args)
    given = args.ckpt or args.weights
    if given and given.lower().endswith(".onnx"):
        raise UserError(f"{given} is already an ONNX model; export.py reads the PyTorch checkpoint it came from "
                        "(test.py --model runs the ONNX file).")
    ext = os.path.splitext(args.output)[1].lower()
    fmt = args.format or FORMATS.get(ext)
    if fmt == TIMM:
        return check_timm_args(args)
    if fmt is None:
        raise UserError(f"--output {args.output!r}: name it *.onnx or *.pt2, or give --format onnx|torch-export.")
    if FORMATS.get(ext, fmt) != fmt:
        raise UserError(f"--output {args.output!r} has the extension of the other format than --format {fmt}; name "
                        f"it *{next(e for e, f in FORMATS.items() if f == fmt)}.")
    if os.path.isdir(args.output):
        raise UserError(f"--output {args.output!r} is a folder; give a file name.")
    files.check_apart(args.output, "--output", {"--ckpt": args.ckpt, "--weights": args.weights,
                                                "--classes": args.classes, "--data": args.data})
    if (args.batch_size or 0) > MAX_CHECK_IMAGES:
        raise UserError(f"-b {args.batch_size}: the export is checked on at most {MAX_CHECK_IMAGES} images, run as "
                        f"one batch; pass -b {MAX_CHECK_IMAGES} or less.")
    files.make_output_dir(os.path.dirname(os.path.abspath(args.output)), "--output's folder")
    options.check_int8_args(args, fmt == "onnx")
    if fmt == "onnx":
        for module in ("onnx", "onnxscript", "onnxruntime"):
            onnx_model.require(module, "export.py --format onnx")
    return Target(fmt, args.output, args.with_preprocess, args.opset)


def check_timm_args(args: argparse.Namespace) -> Target:
    """Check the flags of ``--format timm``, whose output is a folder; return what to write."""
    if args.with_preprocess or args.int8:
        raise UserError(f"{'--with-preprocess' if args.with_preprocess else '--int8'} is for an ONNX or torch.export "
                        "file; --format timm writes the float model as timm builds it: drop it.")
    out = args.output
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--output {out!r} is a file; --format timm writes a folder: give a new folder name.")
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, timm_folder.CONFIG_NAME)):
        raise UserError(f"--output {out!r} is a folder that holds other files than an earlier timm export; give a new "
                        "or empty folder.")
    files.check_apart(out, "--output", {"--ckpt": args.ckpt, "--weights": args.weights, "--classes": args.classes,
                                        "--data": args.data}, output_is_dir=True)
    if (args.batch_size or 0) > MAX_CHECK_IMAGES:
        raise UserError(f"-b {args.batch_size}: the export is checked on at most {MAX_CHECK_IMAGES} images, run as "
                        f"one batch; pass -b {MAX_CHECK_IMAGES} or less.")
    files.make_output_dir(os.path.dirname(os.path.abspath(out)), "--output's folder")
    return Target(TIMM, out, False, args.opset)


class Deployable(nn.Module):
    """The model as exported: logits of a normalised float batch, or (``uint8``) of RGB pixels it normalises."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], uint8: bool) -> None:
        super().__init__()
        self.model, self.uint8 = model, uint8
        self.register_buffer("mean", 255 * torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", 255 * torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uint8:  # (N, 3, H, W) uint8 -> normalised float32, as transforms.to_model_input computes it
            x = (x.to(torch.float32) - self.mean) / self.std
        return factory.logits_of(self.model(x))


def generated_pixels(n: int, crop: int) -> torch.Tensor:
    """(n, 3, crop, crop) uint8 images with smooth colour regions and noise, the same on every run."""
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, 6, 6, generator=gen) * 255
    smooth = nn.functional.interpolate(coarse, size=(crop, crop), mode="bilinear", align_corners=False)
    return (smooth + 12 * torch.randn(n, 3, crop, crop, generator=gen)).round().clamp(0, 255).to(torch.uint8)


def data_pixels(root: str, n: int, prep: preprocess.EvalPreprocess, workers: int | None) -> torch.Tensor:
    """The first ``n`` images of the labelled set ``root`` (any format --data takes) through the project's eval
    transform, as uint8; unreadable ones are left out, with one line naming the first."""
    dataset, _, _ = inference.labelled_set(root, prep.transform(fast=True), True)
    blank = torch.zeros(3, prep.crop, prep.crop, dtype=torch.uint8)
    subset = Subset(inference.Readable(dataset, blank), range(min(n, len(dataset))))
    loader = DataLoader(subset, batch_size=len(subset), num_workers=sampling.default_workers() if workers is None
                        else min(workers, len(subset)))
    pixels, _, paths, ok = next(iter(loader))
    if not ok.all():
        bad = [p for p, good in zip(paths, ok.tolist()) if not good]
        if len(bad) == len(paths):
            raise UserError(f"none of the first {len(paths)} images of --data {root} can be read (e.g. {bad[0]}); "
                            "pass another --data, or none to check on generated images.")
        print(f"=> {len(bad)} of the first {len(paths)} images of --data cannot be read and were left out of the "
              f"check (e.g. {bad[0]})", flush=True)
    return pixels[ok]


def reference_logits(model: nn.Module, batch: torch.Tensor, arch: str, crop: int) -> torch.Tensor:
    """The PyTorch model's fp32 logits on the normalised ``batch``; a size it cannot take is refused."""
    try:
        with torch.inference_mode():
            return factory.logits_of(model(batch)).float()
    except RuntimeError as exc:
        raise UserError(f"{arch} cannot run on {crop}x{crop} px inputs ({first_line(exc)}); pass a "
                        "larger --val-crop-size (and --val-resize-size).") from None


def _sha256(path: str | None) -> str | None:
    return files.sha256_of(path) if path and os.path.isfile(path) else None


def source_file(source: loading.ModelSource, arch: str) -> str | None:
    """The file the weights came from: the checkpoint, or the hub cache file of --pretrained."""
    return source.path or (factory.pretrained_file(arch, source.width_mult) if source.pretrained else None)


def metadata(loaded: loading.LoadedModel, source: loading.ModelSource, target: Target,
             prep: preprocess.EvalPreprocess, folded: bool) -> dict[str, Any]:
    """What a deployer needs to feed the exported model and read its output, and where it came from."""
    resize, crop, mean, std, interpolation = prep.resize, prep.crop, prep.mean, prep.std, prep.interpolation
    norm = "" if target.uint8 else ", scale to [0, 1] and normalise with mean/std"
    return {"producer": "export.py (imagenet toolkit)", "arch": loaded.arch,
            "classes": loading.class_names(loaded), "num_classes": loaded.num_classes,
            "input_name": UINT8_INPUT_NAME if target.uint8 else INPUT_NAME, "output_name": OUTPUT_NAME,
            "input_shape": ["batch", 3, crop, crop],
            "input_format": onnx_model.INPUT_UINT8 if target.uint8 else onnx_model.INPUT_FLOAT,
            "mean": list(mean), "std": list(std), "val_resize_size": resize, "val_crop_size": crop,
            "interpolation": interpolation,
            "preprocess_outside": f"decode to RGB, resize the shorter side to {resize} px ({interpolation}, "
                                  f"antialiased), centre-crop {crop}x{crop} px{norm}",
            "opset": target.opset if target.fmt == "onnx" else None,
            "source": source.path or f"ImageNet weights of {loaded.arch}", "source_note": loaded.note or None,
            "source_sha256": _sha256(source_file(source, loaded.arch)), "batchnorm_folded": folded,
            "params": factory.count_params(loaded.model)}


@contextlib.contextmanager
def quiet_exporter():
    """The exporters' progress lines and warnings would bury the report; a failure still raises."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_onnx(net: Deployable, example: torch.Tensor, target: Target, meta: dict[str, Any]) -> bytes:
    """The ONNX file's bytes: dynamo export with a dynamic batch dimension, metadata in metadata_props."""
    import onnx

    name = meta["input_name"]
    with quiet_exporter():
        program = torch.onnx.export(net, (example,), dynamo=True, input_names=[name], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: "batch"},), opset_version=target.opset, verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, onnx_model.encode_metadata(meta))
    return proto.SerializeToString()


def export_program(net: Deployable, example: torch.Tensor, meta: dict[str, Any]) -> bytes:
    """The .pt2 file's bytes: torch.export with a dynamic batch dimension, the metadata as ``metadata.json``."""
    with quiet_exporter():
        program = torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={METADATA_FILE: json.dumps(meta)})
    return buffer.getvalue()


def run_exported(blob: bytes, target: Target, pixels: torch.Tensor, norm: transforms.Normalization) -> torch.Tensor:
    """The exported file's logits on ``pixels`` (uint8, or normalised with ``norm`` for a float input)."""
    feed = pixels if target.uint8 else transforms.to_model_input(pixels, torch.device("cpu"), norm=norm)
    if target.fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: feed.numpy()})[0])
    with torch.inference_mode():
        return torch.export.load(io.BytesIO(blob)).module()(feed)


def compare(reference: torch.Tensor, exported: torch.Tensor, tolerance: float) -> tuple[float, float, bool]:
    """(largest logit difference, top-1 agreement in percent, whether both are within what is accepted)."""
    scale = max(1.0, float(reference.abs().max()))
    diff = float((exported - reference).abs().max())
    top = exported.argmax(dim=1)
    # A class the exported model prefers counts as agreeing when PyTorch's logit for it ties with PyTorch's top one.
    tie = reference.gather(1, top[:, None]).squeeze(1) >= reference.max(dim=1).values - tolerance * scale
    agree = 100.0 * float(((top == reference.argmax(dim=1)) | tie).float().mean())
    return diff, agree, diff <= tolerance * scale and agree == 100.0


def export(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    """Load, export, check and write; return what the footer reports (for callers such as tests)."""
    source = inference.model_source(args)
    loaded = loading.load_model(source)
    flags = preprocess.EvalFlags(args.val_resize_size, args.val_crop_size, args.interpolation)
    prep = loading.eval_preprocess(loaded, flags, source.path)
    if target.fmt == TIMM:
        return export_timm(args, (source, loaded, prep), target)
    folded = factory.fold_batchnorm(loaded.model) if args.fold_bn else None
    net = Deployable(folded or loaded.model, prep.mean, prep.std, target.uint8).eval()
    n = args.batch_size or CHECK_IMAGES
    pixels = data_pixels(args.data, n, prep, args.workers) if args.data else generated_pixels(n, prep.crop)
    reference = reference_logits(loaded.model, transforms.to_model_input(pixels, torch.device("cpu"), norm=prep.norm),
                                 loaded.arch, prep.crop)
    meta = metadata(loaded, source, target, prep, folded is not None)
    print(header(loaded, source, target, meta), flush=True)
    example = pixels[:2] if len(pixels) >= 2 else pixels.expand(2, -1, -1, -1)  # batch 1 would fix the dimension
    example = example if target.uint8 else transforms.to_model_input(example, torch.device("cpu"), norm=prep.norm)
    t0 = time.perf_counter()
    try:
        blob = export_onnx(net, example, target, meta) if target.fmt == "onnx" else export_program(net, example, meta)
    except Exception as exc:  # noqa: BLE001 - the exporters raise many types; one line says which model failed
        raise UserError(f"{target.fmt} export of {loaded.arch} failed ({first_line(exc, 160)}); "
                        "nothing was written. Try another --opset, --no-fold-bn or --format.") from None
    seconds = time.perf_counter() - t0
    result = {"path": target.path, "bytes": len(blob), "seconds": seconds, "metadata": meta}
    if not args.no_check:
        where = "--data" if args.data else "generated"
        result.update(check(blob, target, (pixels, prep.norm), reference, args.tolerance, where))
    if args.int8:
        blob, int8 = to_int8(args, blob, (loaded, prep), target, meta, pixels)
        result.update(int8, bytes=len(blob))
    files.write_atomically(target.path, lambda f: f.write(blob))
    print(f"=> wrote {target.path} ({len(blob) / 2**20:.1f} MiB, exported in {seconds:.1f} s)", flush=True)
    return result


def export_timm(args: argparse.Namespace, model: tuple[loading.ModelSource, loading.LoadedModel,
                                                        preprocess.EvalPreprocess], target: Target) -> dict[str, Any]:
    """Write the timm Hub folder (common/models/timm_folder.py) after timm has built the model from it and given the
    same logits as PyTorch here; nothing is left at --output otherwise."""
    source, loaded, prep = model
    width = float(loaded.train_args.get("width_mult", source.width_mult))
    state = checkpoint.strip_prefixes(loaded.model.state_dict())
    name = timm_folder.timm_model(loaded.arch, width, state, loaded.num_classes)
    classes = loading.class_names(loaded)
    cfg = timm_folder.config(name, classes, prep)
    card = timm_folder.model_card(name, source.path or f"ImageNet weights of {loaded.arch}", loaded.train_args,
                                  loaded.best_acc1, classes)
    n = args.batch_size or CHECK_IMAGES
    pixels = data_pixels(args.data, n, prep, args.workers) if args.data else generated_pixels(n, prep.crop)
    batch = transforms.to_model_input(pixels, torch.device("cpu"), norm=prep.norm)
    reference = reference_logits(loaded.model, batch, loaded.arch, prep.crop)
    note = f" ({loaded.note})" if loaded.note else ""
    print(f"=> {loaded.arch} from {source.path or 'ImageNet weights'}{note}: timm {name}, {len(classes)} classes, "
          f"input {prep.crop} px, crop_pct {cfg['pretrained_cfg']['crop_pct']:g}, {prep.interpolation}", flush=True)
    result: dict[str, Any] = {"path": target.path, "timm_name": name, "config": cfg}

    def fill(folder: str) -> None:
        timm_folder.write_folder(folder, state, cfg, card)
        if not args.no_check:
            with torch.inference_mode(), quiet_exporter():
                logits = timm_folder.load_with_timm(folder)(batch).float()
            where = "--data" if args.data else "generated"
            result.update(report_check(reference, logits, len(pixels), where, args.tolerance, target.path))

    files.write_folder_atomically(target.path, fill)
    print(f"=> wrote {target.path}/ ({', '.join(sorted(os.listdir(target.path)))}); timm.create_model("
          f"'local-dir:{target.path}', pretrained=True) loads it", flush=True)
    return result


def report_check(reference: torch.Tensor, exported: torch.Tensor, images: int, where: str, tolerance: float,
                 path: str) -> dict[str, Any]:
    """Print the comparison of the exported model's logits with PyTorch's; refuse a model that differs."""
    diff, agree, ok = compare(reference, exported, tolerance)
    scale = max(1.0, float(reference.abs().max()))
    print(f"=> check on {images} {where} images: largest logit difference {diff:.2e} (accepted: "
          f"{tolerance * scale:.2e} = --tolerance {tolerance:g} x {scale:.3g}), top-1 agreement {agree:.1f}%",
          flush=True)
    if not ok:
        raise UserError(f"the exported model differs from PyTorch (largest logit difference {diff:.2e}, top-1 "
                        f"agreement {agree:.1f}%), so {path} was not written; try another --opset or "
                        "--no-fold-bn, or raise --tolerance if the difference is acceptable.")
    return {"max_diff": diff, "agreement": agree}


def check(blob: bytes, target: Target, inputs: tuple[torch.Tensor, transforms.Normalization],
          reference: torch.Tensor, tolerance: float, where: str) -> dict[str, Any]:
    """Run the exported bytes on ``inputs`` (uint8 pixels and their normalisation) against the PyTorch logits; print
    the comparison; refuse a model that differs."""
    pixels = inputs[0]
    exported = run_exported(blob, target, *inputs)
    if exported.shape != reference.shape:  # our bug, not the user's: a traceback
        raise RuntimeError(f"the exported model gives outputs of shape {tuple(exported.shape)}, PyTorch "
                           f"{tuple(reference.shape)}; {target.path} was not written.")
    return report_check(reference, exported, len(pixels), where, tolerance, target.path)


def int8_settings(args: argparse.Namespace) -> quantize.Int8Settings:
    return quantize.Int8Settings(args.int8_format, args.int8_types, args.calib_method, tuple(args.keep_fp32))


def to_int8(args: argparse.Namespace, fp32: bytes, model: tuple[loading.LoadedModel, preprocess.EvalPreprocess],
            target: Target, meta: dict[str, Any], pixels: torch.Tensor) -> tuple[bytes, dict[str, Any]]:
    """Quantise the checked fp32 bytes (common/predict/quantize.py), measure what it costs on --data (else the
    agreement on the check images), refuse a drop above --max-drop; the int8 bytes with their metadata."""
    loaded, prep = model
    settings, feed = int8_settings(args), quantize.feed_for(target.uint8, prep.norm)
    calib = quantize.calibration_set(args.calib_data or args.data, not args.calib_data, prep, args.calib_images,
                                     args.calib_seed, args.workers)
    print(f"=> int8: ONNX Runtime static quantization, {settings.describe()} on {calib.count} images of "
          f"{calib.source} ({calib.classes} classes, seed {calib.seed}) through "
          f"{prep.describe(True)}", flush=True)
    q = quantize.quantize(fp32, calib, feed, settings, loaded.arch)
    out = {"int8": True, "fp32_bytes": len(fp32), "calibration_batch": q.first_batch, "kept_fp32": q.kept}
    if args.data:
        out.update(quantize.evaluate(args.data, loaded, prep, (fp32, q.blob), feed, args.workers))
        out["drop"] = out["fp32_top1"] - out["int8_top1"]
        print(f"=> int8 on {out['images']} images of --data: top-1 fp32 {out['fp32_top1']:.2f}%, int8 "
              f"{out['int8_top1']:.2f}% (drop {out['drop']:.2f} points), agreement {out['agreement']:.1f}%",
              flush=True)
    else:
        out["agreement"] = quantize.agreement((fp32, q.blob), pixels, feed)
        print(f"=> int8 agreement with fp32 on {len(pixels)} generated images: {out['agreement']:.1f}% (no --data: "
              "top-1 and --max-drop not checked)", flush=True)
    if out.get("drop", 0.0) > args.max_drop and not args.force_int8:
        worst = quantize.sensitive_layers(q, calib, feed) if settings.fmt == "qdq" else []
        names = ", ".join(f"{layer} ({sqnr:.1f} dB)" for layer, sqnr in worst) or "see --int8-format qdq"
        raise UserError(f"int8 costs {out['drop']:.2f} top-1 points (more than --max-drop {args.max_drop:g}), so "
                        f"{target.path} was not written; the most sensitive layers: {names}; keep some in fp32 "
                        "with --keep-fp32, try --calib-method entropy or percentile, or pass --force-int8.")
    meta = {**meta, **int8_metadata(settings, calib, out)}
    print(f"=> int8 file {len(q.blob) / 2**20:.1f} MiB against fp32 {len(fp32) / 2**20:.1f} MiB "
          f"({len(fp32) / max(1, len(q.blob)):.1f}x smaller)", flush=True)
    return quantize.with_metadata(q.blob, meta), {**out, "metadata": meta}


def int8_metadata(settings: quantize.Int8Settings, calib: quantize.Calibration, out: dict[str, Any]
                  ) -> dict[str, Any]:
    """What the int8 file records of its making (metadata_props; the fp32 export's entries stay)."""
    rounded = {k: round(out[k], 2) for k in ("fp32_top1", "int8_top1", "agreement") if k in out}
    return {"precision": "int8", "int8_format": settings.fmt, "int8_types": settings.types,
            "int8_method": settings.method, "calibration": calib.source, "calibration_images": calib.count,
            "calibration_seed": calib.seed, "calibration_sha256": calib.digest,
            "int8_eval_images": out.get("images"), **rounded, "kept_fp32": json.dumps(out["kept_fp32"])}


def header(loaded: loading.LoadedModel, source: loading.ModelSource, target: Target,
           meta: dict[str, Any]) -> str:
    what = f"ONNX opset {target.opset}" if target.fmt == "onnx" else "torch.export"
    note = f" ({loaded.note})" if loaded.note else ""
    return (f"=> {loaded.arch} from {meta['source']}{note}: {meta['params'] / 1e6:.2f} M params, "
            f"{loaded.num_classes} classes | {what}, input {meta['input_name']} (batch, 3, {meta['val_crop_size']}, "
            f"{meta['val_crop_size']}) {'uint8' if target.uint8 else 'float32'}, dynamic batch | BatchNorm "
            f"{'folded' if meta['batchnorm_folded'] else 'kept'} | outside the graph: {meta['preprocess_outside']}")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Export the model the flags name; returns the file's path, size, metadata and check results."""
    with exit_on_user_error(), sigterm_raises():
        defaults.resolve_data_dir(args)
        return export(args, check_args(args))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
