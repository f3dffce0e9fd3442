"""Predict the classes of images, or evaluate a model on a labelled folder, from any checkpoint of this project.

The top-5 classes of a few images (ImageNet wnid folders such as n01440764 are shown with their names), also
written to --output-dir as predictions.csv (path, predicted class, confidence, top-k as class:probability) with
predicted_counts.csv (images per predicted class, printed too):

    python test.py --ckpt runs/probe/model_best.pth.tar photo1.jpg photo2.jpg
    python test.py --ckpt runs/probe/model_best.pth.tar --topk 3 --json photo1.jpg
    python test.py --pretrained -a resnet50 photo1.jpg

A folder of images without class folders is predicted the same way (its images are not printed one by one);
--unlabelled reads every image under a folder and its subfolders, whatever they are named:

    python test.py --ckpt runs/probe/model_best.pth.tar --data my_photos --output-dir runs/my_photos
    python test.py --ckpt runs/probe/model_best.pth.tar --data my_albums --unlabelled --output-dir runs/my_albums

Accuracy and loss over a labelled folder (DIR/val, or DIR itself when it holds the class folders), with
predictions.csv, per_class.csv, confusion_matrix.csv and confusion_matrix.png written to --output-dir:

    python test.py --ckpt runs/probe/model_best.pth.tar --data /data/flowers --output-dir runs/eval
    python test.py --ckpt model_best.pth.tar --data /imagenet/val --limit 1000 -b 128 -j 8
    python test.py --ckpt state_dict.pth -a resnet18 --data /data/flowers --val-resize-size 64 --val-crop-size 56
    torchrun --nproc_per_node 4 test.py --ckpt model_best.pth.tar --data /imagenet --output-dir runs/eval

An ONNX model written by export.py runs with onnxruntime (CPU, or CUDA with onnxruntime-gpu), with the class names
and eval sizes of its metadata; a foreign ONNX classifier takes its classes from --classes (else indices):

    python test.py --model model.onnx --data /data/flowers --output-dir runs/eval_onnx
    python test.py --model other.onnx --classes classes.txt photo1.jpg

Evaluation held against published numbers: --pretrained evaluates with the weights' own resize, crop, interpolation
and normalisation (ResNet-50's DEFAULT: 232/224); test-time augmentation; several resolutions in one pass over the
files (one row each in resolutions.csv); ImageNet-ReaL top-1; ImageNet-V2's folders named by class index; ImageNet-A
and -R scored over their 200 classes, as timm does (the sets are recognised from the folders, or named by --eval-set):

    python test.py --pretrained -a resnet50 --data /imagenet
    python test.py --ckpt model_best.pth.tar --data /imagenet --tta flip
    python test.py --ckpt model_best.pth.tar --data /imagenet --val-crop-size 224 256 288 --crop-pct 0.875
    python test.py --pretrained -a resnet50 --data /imagenet --real-labels real.json
    python test.py --pretrained -a resnet50 --data /imagenetv2-matched-frequency --class-map index
    python test.py --pretrained -a resnet50 --data /data/imagenet-r --eval-set imagenet-r

The eval settings default to the weights' own (--pretrained), else those recorded in the checkpoint; the header says
where they come from. A flat ImageNet val folder (ILSVRC2012_val_*.JPEG) is refused with the command that sorts it
into class folders, `python -m common.data.valprep`. Whole pickled models
(torch.save(model)) are refused unless --unsafe-load is given, because loading them runs arbitrary code.

List the unreadable files of the labelled folder (or of IMAGE...) without evaluating; the exit status is 1 if any:

    python test.py --data /data/flowers --check-data -j 8

Ctrl+C or SIGTERM stops after the batch in hand, with one line and exit status 130 or 143; no report is written.
"""
from common.errors import UserError, exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse
import json
import os
import sys

import torch

from common import files
from common.cli import options, process
from common.data import formats, sampling, scan
from common.parallel import distributed, faults
from common.predict import evalsets, inference, labels
from common.report import figures, metrics

TOP5 = 5
PREDICTIONS_NAME, PER_CLASS_NAME, COUNTS_NAME = "predictions.csv", "per_class.csv", "predicted_counts.csv"
CONFUSION_CSV_NAME, CONFUSION_PNG_NAME = "confusion_matrix.csv", "confusion_matrix.png"
RESOLUTIONS_NAME = "resolutions.csv"
REPORT_NAMES = (PREDICTIONS_NAME, PER_CLASS_NAME, CONFUSION_CSV_NAME, CONFUSION_PNG_NAME, RESOLUTIONS_NAME, COUNTS_NAME)
MAX_PRINTED_CLASSES = 30  # above this, only the classes with the lowest recall are printed (all are in the CSV)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Top-k predictions for images, or accuracy, per-class report and confusion matrix for a folder.",
        parents=[options.data_parser(training=False, multi_size=True),
                 options.model_parser(default_arch=None, dropout=False), options.inference_parser(),
                 options.unlabelled_parser(), options.speed_parser(), options.check_data_parser(),
                 options.device_parser(), options.process_group_parser()])
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files to classify (instead of --data)")
    parser.add_argument("--topk", type=options.POSITIVE_INT, default=5, metavar="K",
                        help="classes shown per image (default: 5)")
    parser.add_argument("--json", action="store_true", help="print the predictions of IMAGE... as JSON")
    parser.add_argument("--limit", type=options.POSITIVE_INT, default=None, metavar="N",
                        help="evaluate only the first N images of the folder (default: all)")
    parser.add_argument("--output-dir", default=os.path.join("runs", "test"), metavar="DIR",
                        help="where the CSV files (and for a labelled folder the confusion matrix PNG) go (default: "
                             "runs/test)")
    parser.add_argument("--tta", choices=inference.TTA_MODES, default="none",
                        help="test-time augmentation, the mean of the views' logits: flip = the image and its mirror; "
                             "five-crop = the four corner crops and the centre one of the resized image; ten-crop = "
                             "those five and their mirrors (default: none)")
    parser.add_argument("--real-labels", default=None, metavar="JSON",
                        help="ImageNet-ReaL labels (real.json: one list of class indices per val image, in "
                             "ILSVRC2012_val_00000001... order): ReaL top-1 is reported next to top-1, over the "
                             "images that have a ReaL label")
    parser.add_argument("--class-map", default=None, metavar="index|JSON",
                        help="the model's class of each class folder: 'index' for folders named by class index "
                             "(ImageNet-V2: 0..999), or a JSON file {folder: class name or index}")
    parser.add_argument("--eval-set", choices=sorted(evalsets.EVAL_SETS), default=None,
                        help="the robustness set --data holds, when its folders do not say it: imagenet-v2 (folders "
                             "0..999 are class indices), imagenet-sketch, imagenet-a and imagenet-r (the logits are "
                             "restricted to their 200 classes, as timm does) (default: recognised from the folders)")
    return parser


def sort_inputs(args: argparse.Namespace) -> None:
    """Sort the positional arguments into a labelled folder (``args.data``) or image files (``args.images``); a
    folder of images without labels becomes its image files, with ``args.image_root`` the folder."""
    positional = ([args.data_dir] if args.data_dir else []) + args.images
    args.data_dir, args.image_root = None, None
    if not args.data and len(positional) == 1 and os.path.isdir(positional[0]):
        args.data, positional = positional[0], []
    args.images = positional
    if args.data and not args.images:
        found = inference.unlabelled_images(args.data, args.unlabelled)
        if found:
            args.image_root, args.images = found
            args.data = None


def check_args(args: argparse.Namespace) -> None:
    """Check the flags once ``sort_inputs`` has sorted the positional arguments; changes nothing."""
    options.check_inference_args(args)
    if args.data and args.images:
        raise UserError("give either image files or a folder (--data DIR), not both.")
    if not args.data and not args.images:
        raise UserError("nothing to classify: pass image files, or --data DIR for a folder of images.")
    if args.unlabelled and not args.image_root:
        raise UserError("--unlabelled reads the images under a folder: give it as --data DIR.")
    if args.data and args.json:
        raise UserError("--json is for the predictions of IMAGE...; a folder's results are in the CSV files that "
                        "--output-dir receives.")
    if args.check_data and args.json:
        raise UserError("--check-data prints a plain list of unreadable files; drop --json.")
    if not args.data and (args.real_labels or args.class_map or args.eval_set or args.crop_pct
                          or len(args.val_crop_size or []) > 1):
        raise UserError("--real-labels, --class-map, --eval-set and several resolutions are for a labelled folder: add "
                        "--data DIR.")
    inference.check_sizes(loader_config(args))
    if not args.check_data:
        check_reports_apart(args)
        files.make_output_dir(args.output_dir)


def check_reports_apart(args: argparse.Namespace) -> None:
    """Refuse a --output-dir that is or sits inside --data (the reports would join the dataset: a PNG among the
    images of a class), and a report that would be written over a file the run reads (--ckpt, --model, a label
    file). The checkpoint's own folder is a fine --output-dir."""
    folder = inference.data_folder(args.data) if args.data else args.image_root
    files.check_apart(args.output_dir, "--output-dir", {"--data": folder})
    inputs = {"--ckpt": args.ckpt, "--model": args.model, "--classes": args.classes, "--real-labels": args.real_labels,
              "--class-map": None if args.class_map == "index" else args.class_map}
    for name in REPORT_NAMES:
        files.check_apart(os.path.join(args.output_dir, name), "--output-dir", inputs)


def check_data(args: argparse.Namespace) -> int:
    """``--check-data``: decode the files that an evaluation would read and list the unreadable ones; 1 if any."""
    workers = sampling.default_workers() if args.workers is None else args.workers
    if not args.data:
        return scan.scan_files(args.images, workers, scan.EVALUATION_HINT)
    return scan.scan_source(formats.resolve_source(args.data), ("val",), scan.EVALUATION_HINT, workers, args.limit)


def class_label(cls: str, name: str) -> str:
    return cls if name == cls else f"{name} ({cls})"


def image_results(preds: inference.Predictions, prep: inference.Prepared, k: int) -> list[dict]:
    """One dict per image: its path and the top-k classes with names and probabilities (or why it failed)."""
    results = []
    for row, path in enumerate(preds.paths):
        if not preds.readable[row]:
            results.append({"path": path, "error": "unreadable image"})
            continue
        top = [{"class": prep.classes[c], "name": prep.names[c], "probability": float(p)}
               for c, p in zip(preds.top_idx[row, :k].tolist(), preds.top_prob[row, :k].tolist())]
        results.append({"path": path, "top": top})
    return results


def print_images(results: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for result in results:
        print(result["path"])
        if "error" in result:
            print(f"    {result['error']}, skipped")
        for rank, top in enumerate(result.get("top", []), 1):
            print(f"  {rank}. {100 * top['probability']:6.2f}%  {class_label(top['class'], top['name'])}")


def summary(preds: inference.Predictions) -> dict:
    """Top-1 / top-5 accuracy (percent) and mean loss over the readable labelled images."""
    n = len(preds)
    hits = preds.top_idx[:, :TOP5] == preds.targets[:, None]
    return {"images": n, "top1": 100.0 * float(hits[:, 0].sum()) / max(1, n),
            "top5": 100.0 * float(hits.any(dim=1).sum()) / max(1, n),
            "loss": float(preds.loss.mean()) if n else float("nan")}


def write_predictions(path: str, preds: inference.Predictions, classes: list[str]) -> None:
    """One row per image: path, true and predicted class, confidence, correct, loss, top-5 as class:probability."""
    rows = []
    for row, file in enumerate(preds.paths):
        idx, prob = preds.top_idx[row].tolist(), preds.top_prob[row].tolist()
        true = int(preds.targets[row])
        top5 = ";".join(f"{classes[c]}:{p:.6f}" for c, p in zip(idx[:TOP5], prob[:TOP5]))
        loss = max(0.0, float(preds.loss[row]))  # no "-0.000000" from rounding
        rows.append([file, classes[true], classes[idx[0]], f"{prob[0]:.6f}", int(idx[0] == true), f"{loss:.6f}",
                     top5])
    header = ["path", "true", "predicted", "confidence", "correct", "loss", "top5"]
    files.write_atomically(path, lambda f: f.write(files.csv_bytes(header, rows)))


def write_unlabelled_predictions(path: str, preds: inference.Predictions, classes: list[str], k: int) -> None:
    """One row per image: path, predicted class, confidence, top-k as class:probability."""
    rows = []
    for row, file in enumerate(preds.paths):
        idx, prob = preds.top_idx[row, :k].tolist(), preds.top_prob[row, :k].tolist()
        top = ";".join(f"{classes[c]}:{p:.6f}" for c, p in zip(idx, prob))
        rows.append([file, classes[idx[0]], f"{prob[0]:.6f}", top])
    table = files.csv_bytes(["path", "predicted", "confidence", f"top{k}"], rows)
    files.write_atomically(path, lambda f: f.write(table))


def print_counts(rows: list[dict], file) -> None:
    """The images per predicted class, most first (the first MAX_PRINTED_CLASSES; all are in the CSV)."""
    shown = rows[:MAX_PRINTED_CLASSES]
    if len(shown) < len(rows):
        print(f"the {len(shown)} classes predicted most often (all {len(rows)} are in {COUNTS_NAME}):", file=file)
    width = max([len("predicted class")] + [len(class_label(r["class"], r["name"])) for r in shown])
    print(f"{'predicted class':<{width}} {'images':>7} {'share':>7} {'mean confidence':>15}", file=file)
    for r in shown:
        print(f"{class_label(r['class'], r['name']):<{width}} {r['images']:>7} {r['share']:>6.1f}% "
              f"{r['mean_confidence']:>15.3f}", file=file)


def report_unlabelled(preds: inference.Predictions, prep: inference.Prepared, out: str, k: int, file) -> dict:
    """Images without labels: print the count per predicted class; write predictions.csv and predicted_counts.csv."""
    ok = preds.ok
    unreadable = [p for p, r in zip(preds.paths, preds.readable.tolist()) if not r]
    rows = inference.count_rows(ok, prep.classes, prep.names)
    print(f" * {len(ok)} images predicted" + (f" ({len(unreadable)} unreadable skipped, e.g. {unreadable[0]})"
                                               if unreadable else ""), file=file)
    if rows:
        print_counts(rows, file)
    write_unlabelled_predictions(os.path.join(out, PREDICTIONS_NAME), ok, prep.classes, k)
    fields = ["class", "name", "images", "share", "mean_confidence"]
    counts = files.csv_bytes(fields, ([r[f] for f in fields] for r in rows))
    files.write_atomically(os.path.join(out, COUNTS_NAME), lambda f: f.write(counts))
    print(f"=> wrote {PREDICTIONS_NAME} and {COUNTS_NAME} to {out}", file=file)
    return {"images": len(ok), "unreadable": len(unreadable), "counts": rows}


def confused_with(cm: torch.Tensor, c: int, classes: list[str], n: int = 3) -> str:
    """The classes that images of class ``c`` are most often taken for, as 'name:count' (most first)."""
    row = cm[c].clone()
    row[c] = 0
    counts, idx = row.sort(descending=True)
    return " ".join(f"{classes[j]}:{int(k)}" for k, j in zip(counts[:n].tolist(), idx[:n].tolist()) if k > 0)


def class_rows(cm: torch.Tensor, classes: list[str], names: list[str]) -> list[dict]:
    """Per-class support, correct count, precision, recall, F1 and most frequent confusions."""
    s = metrics.class_scores(cm)
    return [{"class": classes[c], "name": names[c], "support": int(s.support[c]), "correct": int(s.correct[c]),
             "precision": float(s.precision[c]), "recall": float(s.recall[c]), "f1": float(s.f1[c]),
             "confused_with": confused_with(cm, c, classes)} for c in range(len(classes))]


def write_class_reports(out: str, cm: torch.Tensor, rows: list[dict], prep: inference.Prepared) -> None:
    """per_class.csv, the confusion matrix as CSV (rows: true, columns: predicted) and as a PNG heatmap."""
    shown = [{**r, **{k: f"{r[k]:.6f}" for k in ("precision", "recall", "f1")}} for r in rows]
    per_class = files.csv_bytes(list(rows[0]), ([r[k] for k in rows[0]] for r in shown))
    files.write_atomically(os.path.join(out, PER_CLASS_NAME), lambda f: f.write(per_class))
    matrix = files.csv_bytes(["true\\predicted", *prep.classes],
                             ([cls, *cm[i].tolist()] for i, cls in enumerate(prep.classes)))
    files.write_atomically(os.path.join(out, CONFUSION_CSV_NAME), lambda f: f.write(matrix))
    figures.confusion_png(cm, prep.names, os.path.join(out, CONFUSION_PNG_NAME))


def print_class_table(rows: list[dict]) -> None:
    shown = rows if len(rows) <= MAX_PRINTED_CLASSES else sorted(rows, key=lambda r: r["recall"])[:10]
    if len(shown) < len(rows):
        print(f"the {len(shown)} classes with the lowest recall (all {len(rows)} are in {PER_CLASS_NAME}):")
    width = max(len(class_label(r["class"], r["name"])) for r in shown)
    print(f"{'class':<{width}} {'support':>7} {'precision':>9} {'recall':>7} {'F1':>6}  most confused with")
    for r in shown:
        print(f"{class_label(r['class'], r['name']):<{width}} {r['support']:>7} {r['precision']:>9.3f} "
              f"{r['recall']:>7.3f} {r['f1']:>6.3f}  {r['confused_with']}")


def report_folder(preds: inference.Predictions, prep: inference.Prepared, out: str) -> dict:
    """Print accuracy, loss and the per-class table; write the CSV files and the confusion matrix PNG."""
    ok = preds.ok
    unreadable = [p for p, r in zip(preds.paths, preds.readable.tolist()) if not r]
    stats = summary(ok)
    print(f" * Acc@1 {stats['top1']:.3f} Acc@5 {stats['top5']:.3f} Loss {stats['loss']:.4f} on {stats['images']} "
          f"images" + (f" ({len(unreadable)} unreadable skipped, e.g. {unreadable[0]})" if unreadable else ""))
    cm = metrics.confusion_matrix(ok.targets, ok.top_idx[:, 0], len(prep.classes))
    rows = class_rows(cm, prep.classes, prep.names)
    print_class_table(rows)
    write_predictions(os.path.join(out, PREDICTIONS_NAME), ok, prep.classes)
    write_class_reports(out, cm, rows, prep)
    print(f"=> wrote {PREDICTIONS_NAME}, {PER_CLASS_NAME}, {CONFUSION_CSV_NAME} and {CONFUSION_PNG_NAME} to {out}")
    return {**stats, "unreadable": len(unreadable), "confusion": cm}


def loader_config(args: argparse.Namespace) -> inference.LoaderConfig:
    sizes = [tuple(v) if v else None for v in (args.val_resize_size, args.val_crop_size)]
    return inference.LoaderConfig(*sizes, args.batch_size, args.workers, args.limit, args.interpolation,
                                  args.crop_pct, args.tta)


def write_resolutions(out: str, rows: list[dict]) -> None:
    """resolutions.csv: one row per evaluated resolution."""
    keys = [k for k in rows[0] if k != "confusion"]
    table = files.csv_bytes(keys, ([r[k] for k in keys] for r in rows))
    files.write_atomically(os.path.join(out, RESOLUTIONS_NAME), lambda f: f.write(table))


def report_resolutions(all_preds: list[inference.Predictions], prep: inference.Prepared, out: str) -> list[dict]:
    """Several resolutions: one printed line and one row of resolutions.csv per size; the per-image and per-class
    files are those of the first size."""
    rows = []
    for preds, p in zip(all_preds, prep.preps):
        stats = summary(preds.ok)
        rows.append({"resize": p.resize, "crop": p.crop, **{k: round(v, 6) if isinstance(v, float) else v
                                                            for k, v in stats.items()}})
        print(f" * {p.resize}/{p.crop} (resize/crop): Acc@1 {stats['top1']:.3f} Acc@5 {stats['top5']:.3f} "
              f"Loss {stats['loss']:.4f} on {stats['images']} images")
    write_resolutions(out, rows)
    print(f"=> wrote {RESOLUTIONS_NAME}; the files below are for {prep.preps[0].resize}/{prep.preps[0].crop}")
    return rows


def run(args: argparse.Namespace, ctx: distributed.DistContext) -> dict | list | None:
    source = inference.model_source(args)
    class_map = labels.read_class_map(args.class_map) if args.class_map else None
    prep = inference.prepare(source, loader_config(args), ctx, root=args.data, images=args.images,
                             speed=inference.speed_config(args), class_map=class_map, eval_set=args.eval_set,
                             image_root=args.image_root)
    real = None
    if args.real_labels:
        real = labels.read_real(args.real_labels, prep.dataset.base.samples, len(prep.classes))
    log = sys.stderr if args.json else sys.stdout  # keep stdout pure JSON
    if ctx.is_main:
        print(inference.header(prep, source, ctx), file=log, flush=True)
        if prep.matching is not None or prep.eval_set:
            print(f"=> {prep.matching.note if prep.matching else evalsets.EVAL_SETS[prep.eval_set]}", file=log,
                  flush=True)
    k = min(args.topk, len(prep.classes))
    try:
        local = inference.predict_all(prep, ctx, max(k, TOP5), show_progress=bool(args.data or args.image_root))
    except faults.Interrupted as exc:
        raise exc.then("nothing was written: run the same command again.") from None
    all_preds = [inference.gather(part, ctx) for part in local]
    if not ctx.is_main:
        return None
    preds = all_preds[0]
    if not args.data:
        result = image_results(preds, prep, k)
        if args.json or not args.image_root:  # a folder's images are in predictions.csv, not printed one by one
            print_images(result, args.json)
        counts = report_unlabelled(preds, prep, args.output_dir, k, log)
        result = {**counts, "predictions": result} if args.image_root else result
    else:
        sizes = report_resolutions(all_preds, prep, args.output_dir) if len(all_preds) > 1 else None
        result = report_folder(preds, prep, args.output_dir)
        result = {**result, **({"resolutions": sizes} if sizes else {}), "eval_set": prep.eval_set}
        if real is not None:
            ok = preds.ok
            result = {**result, **labels.real_accuracy(ok.paths, ok.top_idx[:, 0], real)}
            print(f" * ReaL Acc@1 {result['real_top1']:.3f} on {result['real_images']} images with a ReaL label "
                  f"(Acc@1 {result['top1']:.3f} on all {result['images']})")
    print(inference.timing_line(preds, prep, ctx.device), file=log, flush=True)
    return result


def main(args: argparse.Namespace) -> dict | list | None:
    """Classify IMAGE... (a list of dicts) or an unlabelled folder (a dict with its counts and "predictions"), or
    evaluate a labelled --data; returns the printed results (rank 0) for callers such as tests."""
    with exit_on_user_error():
        sort_inputs(args)
        check_args(args)
        if args.check_data:
            sys.exit(check_data(args))
        return process.run_in_context(lambda ctx: run(args, ctx), args.gpu, args.no_accel, args.dist_backend,
                                      args.dist_timeout)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
