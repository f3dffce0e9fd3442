"""Sort a labelled image folder by a model's verdict: DIR_OUT/<true class>/right/ or DIR_OUT/<true class>/wrong/;
sort images without labels by the model's prediction: DIR_OUT/<predicted class>/.

    python classify_test_data.py --ckpt runs/probe/model_best.pth.tar --data /data/flowers --out runs/sorted
    python classify_test_data.py --ckpt model_best.pth.tar --data /data/flowers/val --out runs/sorted --mode symlink
    torchrun --nproc_per_node 4 classify_test_data.py --ckpt model_best.pth.tar --data /imagenet --out runs/sorted
    python classify_test_data.py --model model.onnx --data /data/flowers --out runs/sorted    # export.py, onnxruntime

DIR is a dataset root (its val/ is used) or a folder of class folders. A wrong image keeps its name with the
predicted class added (``img7__pred-tulip.jpg``); images of nested folders are named ``sub__img7.jpg``. The source
images are only read: the default --mode hard-links them (copies where the filesystem cannot link). DIR_OUT also
gets manifest.csv (one row per image), summary.csv / summary.txt (right and wrong per class) and mistakes.png, the
most confident mistakes. Running again into the same DIR_OUT updates it in place; --overwrite starts afresh.

A folder of images without class folders (or any folder, with --unlabelled: every image under it) is sorted by
predicted class; with --min-confidence, images the model is less sure of go under DIR_OUT/_uncertain/ with their
best guess added to the name (``img7__pred-tulip.jpg``). manifest.csv, summary.csv / summary.txt (images per
predicted class) and uncertain.png (the least confident images; with --min-confidence, those under _uncertain/)
are written, with the same rerun and --overwrite behaviour:

    python classify_test_data.py --ckpt runs/probe/model_best.pth.tar --data my_photos --out runs/my_photos_sorted
    python classify_test_data.py --ckpt model_best.pth.tar --data my_photos --out runs/sorted --min-confidence 0.6

Images are placed batch by batch as the model judges them. Ctrl+C or SIGTERM stops after the batch in hand (exit
status 130 or 143): manifest.csv then lists what was placed, and the same command run again sorts the rest.
"""
from common.errors import UserError, exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse
import contextlib
import dataclasses
import glob
import hashlib
import io
import os
import shutil
import time

from common import files, limits
from common.cli import defaults, options, process
from common.data import hfdata, images, shards
from common.parallel import distributed, faults
from common.parallel.distributed import DistContext
from common.predict import inference
from common.report import figures, metrics

MARKER = ".classify_test_data"  # marks DIR_OUT as written by this script, so that updating or clearing it is safe
MANIFEST_NAME, SUMMARY_NAME, SHEET_NAME = "manifest.csv", "summary", "mistakes.png"
UNCERTAIN, UNCERTAIN_SHEET = "_uncertain", "uncertain.png"  # images without labels below --min-confidence
RANK_MANIFESTS = "manifest.rank*.csv"  # what each rank of an interrupted torchrun sort had placed
MODES = ("auto", "hardlink", "copy", "symlink")
NAME_MAX = 255  # bytes in one file name on the filesystems of Linux, macOS and Windows
TMP_NAME_ROOM = 24  # what place()'s temporary name ".<name>.<pid>.tmp" adds
WRITTEN_OUT = (hfdata.TableImages, shards.TarImages)  # datasets whose images are written out: no file to link


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Place every image of a labelled folder under OUT/<true class>/right/ or .../wrong/, or every "
                    "image without a label under OUT/<predicted class>/.",
        parents=[options.data_parser(training=False), options.model_parser(default_arch=None, dropout=False),
                 options.inference_parser(), options.unlabelled_parser(), options.speed_parser(),
                 options.device_parser(), options.process_group_parser()])
    parser.add_argument("--output-dir", "--out", dest="output_dir", required=True, metavar="DIR_OUT",
                        help="folder that receives the sorted images (--out is the same flag)")
    parser.add_argument("--mode", choices=MODES, default="auto",
                        help="how images get into DIR_OUT: auto = hard link where the filesystem allows, else copy "
                             "(default: auto)")
    parser.add_argument("--overwrite", action="store_true",
                        help="empty DIR_OUT (written by an earlier run) before sorting")
    parser.add_argument("--min-confidence", type=options.PROBABILITY, default=None, metavar="P",
                        help=f"images without labels: those predicted with a probability below P (0 to 1) go under "
                             f"OUT/{UNCERTAIN}/ (default: every image under its predicted class)")
    parser.add_argument("--sheet-size", type=limits.Number(int, 0, 1024), default=64, metavar="N",
                        help=f"most confident mistakes shown in {SHEET_NAME} (images without labels: the least "
                             f"confident, below --min-confidence if given, in {UNCERTAIN_SHEET}), at most 1024 "
                             "(default: 64; 0: no sheet)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Check the flags (after ``defaults.resolve_data_dir``); changes nothing."""
    options.check_inference_args(args)
    if not args.data:
        raise UserError("no images to sort: pass --data DIR (a dataset root with val/, a folder of class folders, or "
                        "a folder of images).")
    # the source images must stay untouched, and --overwrite empties DIR_OUT: nothing the run reads may be in it
    files.check_apart(args.output_dir, "--output-dir", {"--data": inference.data_folder(args.data), "--ckpt": args.ckpt,
                                                        "--model": args.model, "--classes": args.classes},
                      output_is_dir=True)
    check_output(os.path.normpath(args.output_dir))  # on every rank, so that none waits for a rank 0 that gave up


def check_output(out: str) -> None:
    """Refuse a DIR_OUT that is a file, or a non-empty folder that an earlier run of this script did not write."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--output-dir {out!r} is a file; choose a folder.")
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, MARKER)):
        raise UserError(f"--output-dir {out!r} holds files that classify_test_data.py did not write; choose a new or "
                        "empty folder.")


def claim_output(out: str, overwrite: bool) -> None:
    """Create DIR_OUT with its marker (rank 0); with ``overwrite``, first delete what an earlier run wrote."""
    real = os.path.realpath(out)  # a DIR_OUT that is a link (to a larger disk) stays one: its folder is refilled
    if overwrite and os.path.isdir(real):
        shutil.rmtree(real)  # check_output made sure that it is ours: links and copies only, never sources
    try:
        os.makedirs(real, exist_ok=True)
        open(os.path.join(out, MARKER), "a").close()
    except OSError as exc:
        raise UserError(f"cannot write to --out {out!r} ({exc.strerror}); choose a writable folder.") from None


def check_loose(args: argparse.Namespace, loose: tuple[str, list[str]] | None) -> None:
    """Refuse --min-confidence for a labelled folder (sorted by true class and verdict, not by confidence)."""
    if args.min_confidence is not None and loose is None:
        raise UserError(f"--min-confidence is for images without labels; {args.data!r} is a labelled dataset, sorted "
                        "into <true class>/right/ and /wrong/: drop --min-confidence, or add --unlabelled.")


def file_names(samples: list[tuple[str, int]], folder: str, classes: list[str]) -> list[str]:
    """A name for each image, unique within its class: its path below the class folder (``unique_names``)."""
    return unique_names([os.path.relpath(path, os.path.join(folder, classes[t])) for path, t in samples],
                        [t for _, t in samples])


def loose_names(paths: list[str], folder: str) -> list[str]:
    """A name for each image without a label, unique over all: its path below ``folder`` (``unique_names``)."""
    return unique_names([os.path.relpath(path, folder) for path in paths], [0] * len(paths))


def unique_names(relative: list[str], groups: list[int]) -> list[str]:
    """Each path with '/' written as '__'; names that would clash within a group (case-insensitively, for macOS and
    Windows filesystems) get ``~2``, ``~3``..."""
    names, used = [], set()
    for path, target in zip(relative, groups):
        name = path.replace(os.sep, "__")
        stem, ext = os.path.splitext(name)
        n = 1
        while (target, name.lower()) in used:
            n += 1
            name = f"{stem}~{n}{ext}"
        used.add((target, name.lower()))
        names.append(name)
    return names


def safe(name: str) -> str:
    return name.replace(os.sep, "_")


def fit_name(stem: str, tail: str) -> str:
    """``stem + tail``, the stem shortened where the name and its temporary form (``place``) would pass NAME_MAX
    bytes; a shortened stem ends with a hash of the whole one, so that names stay distinct."""
    raw, room = os.fsencode(stem), NAME_MAX - TMP_NAME_ROOM - len(os.fsencode(tail))
    if len(raw) <= room:
        return stem + tail
    return f"{os.fsdecode(raw[:room - 9])}~{hashlib.sha1(raw).hexdigest()[:8]}{tail}"


def destination(name: str, true: str, pred: str) -> str:
    """Path below DIR_OUT: ``<true>/right/<name>``, or ``<true>/wrong/<stem>__pred-<pred><ext>``, each name cut to
    what the filesystem holds (``fit_name``)."""
    stem, ext = os.path.splitext(name)
    if true == pred:
        return os.path.join(safe(true), "right", fit_name(stem, ext))
    return os.path.join(safe(true), "wrong", fit_name(stem, f"__pred-{safe(pred)}{ext}"))


def loose_destination(name: str, pred: str, sure: bool) -> str:
    """Path below DIR_OUT of an image without a label: ``<pred>/<name>``, or when the model is not ``sure``
    ``_uncertain/<stem>__pred-<pred><ext>``."""
    stem, ext = os.path.splitext(name)
    if sure:
        return os.path.join(safe(pred), fit_name(stem, ext))
    return os.path.join(UNCERTAIN, fit_name(stem, f"__pred-{safe(pred)}{ext}"))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where images go below ``out``: by true class and verdict, or (``loose``: images without labels) by predicted
    class, those predicted with less than ``min_confidence`` under _uncertain/. ``names``: each image's file name,
    by dataset index."""

    out: str
    classes: list[str]
    names: object  # list[str] or RowNames
    loose: bool = False
    min_confidence: float | None = None

    def sure(self, confidence: float) -> bool:
        return self.min_confidence is None or confidence >= self.min_confidence

    def path(self, index: int, true: int, pred: int, confidence: float) -> str:
        name, pred_class = self.names[index], self.classes[pred]
        if self.loose:
            return os.path.join(self.out, loose_destination(name, pred_class, self.sure(confidence)))
        return os.path.join(self.out, destination(name, self.classes[true], pred_class))


def up_to_date(src: str, dest: str, mode: str) -> bool:
    """Whether ``dest`` already is what ``mode`` would make of ``src`` (a link to it, or an identical copy)."""
    if not os.path.lexists(dest):
        return False
    if mode == "symlink" or os.path.islink(dest):
        return mode == "symlink" and os.path.islink(dest) and os.readlink(dest) == os.path.abspath(src)
    same = os.path.samefile(src, dest)
    s, d = os.stat(src), os.stat(dest)
    copied = not same and s.st_size == d.st_size and s.st_mtime_ns == d.st_mtime_ns
    return {"hardlink": same, "copy": copied}.get(mode, same or copied)


def place(src: str, dest: str, mode: str) -> str:
    """Put ``src`` at ``dest`` (via a temporary name, never writing into an existing file); say how. A failure
    leaves no temporary file."""
    if up_to_date(src, dest, mode):
        return "kept"
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.{os.getpid()}.tmp")
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        return _place_via(src, tmp, dest, mode)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def _place_via(src: str, tmp: str, dest: str, mode: str) -> str:
    how = mode
    if mode == "symlink":
        os.symlink(os.path.abspath(src), tmp)
    elif mode in ("hardlink", "auto"):
        try:
            os.link(src, tmp)
            how = "hardlink"
        except OSError as exc:
            if mode == "hardlink":
                raise UserError(f"cannot hard-link {src} into --out ({exc.strerror}); use --mode copy.") from None
            how = "copy"
    if how == "copy":
        shutil.copy2(src, tmp)
    os.replace(tmp, dest)
    return how


PLACED = ("hardlink", "copy", "symlink", "kept")


class PlaceFailed(Exception):
    """The system refused to place an image (full disk, quota, read-only folder); ``rows`` rows were placed."""

    def __init__(self, rows: int, dest: str, reason: OSError) -> None:
        super().__init__(f"cannot place {dest} ({reason.strerror or reason})")
        self.rows = rows


def write_out(payload: bytes, dest: str) -> str:
    """Write an image held in a dataset file (a parquet row) to ``dest``, whole or not at all; "kept" when the same
    bytes are already there."""
    if os.path.isfile(dest) and not os.path.islink(dest) and os.path.getsize(dest) == len(payload):
        with open(dest, "rb") as f:
            if f.read() == payload:
                return "kept"
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    files.atomic_write(dest, lambda f: f.write(payload))
    return "copy"


class RowNames:
    """File names of the rows of a parquet or Arrow dataset or of the samples of shards, where there is no file to
    link: the row's or sample's key with the extension that its bytes call for (``validation-00000-17.jpg``,
    ``val-000000-KEY.jpg``; a '/' of a key written as '__'), worked out on first use."""

    def __init__(self, dataset) -> None:
        self.dataset, self.cache = dataset, {}

    def __getitem__(self, index: int) -> str:
        if index not in self.cache:
            stem = hfdata.row_name(self.dataset.samples[index][0]).replace("/", "__")
            self.cache[index] = stem + images.extension_of(self.dataset.encoded(index))
        return self.cache[index]


def place_share(preds: inference.Predictions, dests: dict[int, str], mode: str, counts: dict[str, int],
                rows=None) -> None:
    """Place these readable images; count in ``counts`` how each got there. ``rows``: a parquet, Arrow or shard dataset,
    whose images are written out instead of linked."""
    for row, (index, src) in enumerate(zip(preds.indices.tolist(), preds.paths)):
        if index in dests:
            try:
                if rows is not None:
                    counts[write_out(rows.encoded(index), dests[index])] += 1
                else:
                    counts[place(src, dests[index], mode)] += 1
            except OSError as exc:
                raise PlaceFailed(row, dests[index], exc) from None


def plan(preds: inference.Predictions, layout: Layout) -> dict[int, str]:
    """Dataset index -> destination (below ``layout.out``) of every readable image."""
    return {i: layout.path(i, t, p, c)
            for i, t, p, c, ok in zip(preds.indices.tolist(), preds.targets.tolist(), preds.top_idx[:, 0].tolist(),
                                      preds.top_prob[:, 0].tolist(), preds.readable.tolist()) if ok}


def remove_stale(out: str, keep: set[str]) -> int:
    """Delete the files in DIR_OUT's subfolders that this run did not place (earlier verdicts or predictions), and
    the folders left empty; DIR_OUT's own files (the reports) stay."""
    removed = 0
    for entry in os.scandir(out):
        if not entry.is_dir(follow_symlinks=False):
            continue
        for root, _dirs, names in os.walk(entry.path, topdown=False):
            for f in names:
                if os.path.join(root, f) not in keep:
                    os.remove(os.path.join(root, f))
                    removed += 1
            if not os.listdir(root):
                os.rmdir(root)
    return removed


def manifest(preds: inference.Predictions, dests: dict[int, str], layout: Layout) -> bytes:
    """One row per sorted image: source, destination (below DIR_OUT), true, predicted, confidence, correct; images
    without labels: source, destination, predicted, confidence."""
    rows, classes = [], layout.classes
    for row, index in enumerate(preds.indices.tolist()):
        true, pred = int(preds.targets[row]), int(preds.top_idx[row, 0])
        where, confidence = os.path.relpath(dests[index], layout.out), f"{float(preds.top_prob[row, 0]):.6f}"
        rows.append([preds.paths[row], where, classes[pred], confidence] if layout.loose else
                    [preds.paths[row], where, classes[true], classes[pred], confidence, int(true == pred)])
    header = ["source", "destination", "predicted", "confidence"] if layout.loose else \
        ["source", "destination", "true", "predicted", "confidence", "correct"]
    return files.csv_bytes(header, rows)


def summary_rows(preds: inference.Predictions, classes: list[str]) -> list[dict]:
    """Right, wrong and accuracy (percent) per true class, and over all images."""
    cm = metrics.confusion_matrix(preds.targets, preds.top_idx[:, 0], len(classes))
    scores = metrics.class_scores(cm)
    rows = [{"class": c, "right": int(r), "wrong": int(n - r), "images": int(n)}
            for c, r, n in zip(classes, scores.correct.tolist(), scores.support.tolist()) if n > 0]
    total, right = sum(r["images"] for r in rows), sum(r["right"] for r in rows)
    rows.append({"class": "all", "right": right, "wrong": total - right, "images": total})
    for r in rows:
        r["accuracy"] = round(100.0 * r["right"] / max(1, r["images"]), 3)
    return rows


def loose_summary_rows(preds: inference.Predictions, layout: Layout, names: list[str]) -> list[dict]:
    """Images without labels: images and share (percent) per predicted class, most first, then _uncertain (those
    below --min-confidence) and all."""
    sure = [layout.sure(c) for c in preds.top_prob[:, 0].tolist()]
    confident = preds.select([i for i, s in enumerate(sure) if s])
    rows = [{"class": r["class"], "images": r["images"]}
            for r in inference.count_rows(confident, layout.classes, names)]
    if not all(sure):
        rows.append({"class": UNCERTAIN, "images": len(sure) - sum(sure)})
    rows.append({"class": "all", "images": len(preds)})
    for r in rows:
        r["share"] = round(100.0 * r["images"] / max(1, len(preds)), 3)
    return rows


def write_summary(out: str, rows: list[dict]) -> str:
    """summary.csv and summary.txt (the printed table); return the table."""
    width = max(len(r["class"]) for r in rows)
    if "right" in rows[0]:
        lines = [f"{'class':<{width}} {'right':>7} {'wrong':>7} {'accuracy':>9}"]
        lines += [f"{r['class']:<{width}} {r['right']:>7} {r['wrong']:>7} {r['accuracy']:>8.3f}%" for r in rows]
        fields = ["class", "right", "wrong", "images", "accuracy"]
    else:
        width = max(width, len("predicted class"))
        lines = [f"{'predicted class':<{width}} {'images':>7} {'share':>8}"]
        lines += [f"{r['class']:<{width}} {r['images']:>7} {r['share']:>7.1f}%" for r in rows]
        fields = ["class", "images", "share"]
    table = files.csv_bytes(fields, ([r[k] for k in fields] for r in rows))
    files.write_if_changed(os.path.join(out, SUMMARY_NAME + ".csv"), table)
    text = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")  # class folders whose names are not UTF-8
    files.write_if_changed(os.path.join(out, SUMMARY_NAME + ".txt"), text)
    return "\n".join(lines)


def mistakes_sheet(preds: inference.Predictions, names: list[str], path: str, size: int) -> int:
    """mistakes.png: the ``size`` wrong images the model was most sure of, captioned 'true>predicted confidence'.

    An earlier sheet is removed when there is no mistake left to show.
    """
    wrong = (preds.top_idx[:, 0] != preds.targets).nonzero().flatten()
    order = wrong[preds.top_prob[wrong, 0].argsort(descending=True)][:size].tolist()
    items = [(preds.paths[i], f"{names[int(preds.targets[i])][:9]}>{names[int(preds.top_idx[i, 0])][:9]} "
                              f"{100 * float(preds.top_prob[i, 0]):.0f}%") for i in order]
    return save_sheet(items, path)


def uncertain_sheet(preds: inference.Predictions, names: list[str], path: str, size: int,
                    min_confidence: float | None) -> int:
    """uncertain.png: the ``size`` images the model was least sure of (of those below ``min_confidence``, when
    given), captioned 'predicted confidence'."""
    order = [i for i in preds.top_prob[:, 0].argsort()[:size].tolist()
             if min_confidence is None or float(preds.top_prob[i, 0]) < min_confidence]
    items = [(preds.paths[i], f"{names[int(preds.top_idx[i, 0])][:14]} {100 * float(preds.top_prob[i, 0]):.0f}%")
             for i in order]
    return save_sheet(items, path)


def save_sheet(items: list[tuple[str, str]], path: str) -> int:
    """The contact sheet of ``items`` at ``path`` (written only when it changed); removed when there is none."""
    png = io.BytesIO()
    if figures.contact_sheet(items, png):
        files.write_if_changed(path, png.getvalue())
    elif os.path.exists(path):
        os.remove(path)
    return len(items)


def write_sheet(ok: inference.Predictions, names: list[str], layout: Layout, size: int) -> tuple[str, int]:
    """The contact sheet (mistakes.png, or uncertain.png for images without labels): its name and tile count."""
    if not size:
        return "", 0
    if layout.loose:
        return UNCERTAIN_SHEET, uncertain_sheet(ok, names, os.path.join(layout.out, UNCERTAIN_SHEET), size,
                                                layout.min_confidence)
    return SHEET_NAME, mistakes_sheet(ok, names, os.path.join(layout.out, SHEET_NAME), size)


def finish(args: argparse.Namespace, prep: inference.Prepared, preds: inference.Predictions, layout: Layout,
           counts: list[float]) -> dict:
    """Rank 0: drop earlier verdicts, write manifest, summary and contact sheet, print what happened."""
    out, ok, dests = layout.out, preds.ok, plan(preds, layout)
    stale = remove_stale(out, set(dests.values()))
    files.write_if_changed(os.path.join(out, MANIFEST_NAME), manifest(ok, dests, layout))
    for partial in glob.glob(os.path.join(glob.escape(out), RANK_MANIFESTS)):
        os.remove(partial)
    rows = loose_summary_rows(ok, layout, prep.names) if layout.loose else summary_rows(ok, prep.classes)
    print(write_summary(out, rows))
    if isinstance(prep.dataset.base, WRITTEN_OUT):  # the sheet reads the images from where they were written
        ok = dataclasses.replace(ok, paths=[dests[i] for i in ok.indices.tolist()])
    sheet_name, sheet = write_sheet(ok, prep.names, layout, args.sheet_size)
    unreadable = [p for p, r in zip(preds.paths, preds.readable.tolist()) if not r]
    hard, copy, sym, kept = (int(c) for c in counts)
    print(f"=> {len(dests)} images sorted into {out}: {hard} hard links, {copy} copies, {sym} symlinks, {kept} "
          f"already in place; {stale} stale files removed"
          + (f"; {len(unreadable)} unreadable images skipped, e.g. {unreadable[0]}" if unreadable else ""))
    what = "uncertain images" if layout.loose else "mistakes"
    print(f"=> wrote {MANIFEST_NAME}, {SUMMARY_NAME}.csv, {SUMMARY_NAME}.txt"
          + (f" and {sheet_name} ({sheet} {what})" if sheet else f" (no {what} shown: no contact sheet)"))
    return {"summary": rows, "placed": len(dests), "unreadable": len(unreadable), "stale_removed": stale}


def layout_of(prep: inference.Prepared, args: argparse.Namespace, loose: bool) -> Layout:
    """The Layout of this sort; refuses a model with a class named like the _uncertain/ folder."""
    base = prep.dataset.base
    if loose:
        if args.min_confidence is not None and UNCERTAIN in map(safe, prep.classes):
            raise UserError(f"the model has a class named {UNCERTAIN!r}, the folder that --min-confidence fills; "
                            "sort without --min-confidence.")
        names = loose_names([path for path, _ in base.samples], prep.source_dir)
    else:
        names = RowNames(base) if isinstance(base, WRITTEN_OUT) else file_names(base.samples, prep.source_dir,
                                                                                  prep.classes)
    return Layout(args.output_dir, prep.classes, names, loose, args.min_confidence)


def run(args: argparse.Namespace, ctx: DistContext, loose: tuple[str, list[str]] | None) -> dict | None:
    t0 = time.perf_counter()
    source = inference.model_source(args)
    cfg = inference.LoaderConfig(args.val_resize_size, args.val_crop_size, args.batch_size, args.workers,
                                 interpolation=args.interpolation)
    folder, images = loose or (None, None)
    prep = inference.prepare(source, cfg, ctx, root=None if loose else args.data, images=images,
                             speed=inference.speed_config(args), image_root=folder)
    layout = layout_of(prep, args, bool(loose))
    if ctx.is_main:
        print(inference.header(prep, source, ctx), flush=True)
        claim_output(args.output_dir, args.overwrite)
    distributed.barrier(ctx)  # nobody places a file before DIR_OUT is claimed (and emptied)
    base = prep.dataset.base
    rows = base if isinstance(base, WRITTEN_OUT) else None  # nothing to link: write each image out
    counts, done = dict.fromkeys(PLACED, 0), []

    def place_batch(batch: inference.Predictions) -> None:  # as soon as judged, so that a stop keeps them
        try:
            place_share(batch, plan(batch, layout), args.mode, counts, rows)
        except PlaceFailed as failed:
            done.append(batch.select(list(range(failed.rows))))
            raise
        done.append(batch)

    try:
        local = inference.predict(prep, ctx, k=1, on_batch=place_batch)
    except (faults.Interrupted, PlaceFailed) as exc:
        placed = inference.concat(done, 1).ok
        name = keep_placed(placed, layout, ctx)
        what = f"{len(placed)} placed into {args.output_dir} and listed in {name}"
        if isinstance(exc, PlaceFailed):
            raise UserError(f"{exc}; {what}: free some disk space or choose a writable --output-dir, and run the "
                            "same command again to sort the rest.") from None
        raise exc.then(f"{what}; run the same command again to sort the rest (what is in place is kept).") from None
    counts = distributed.all_reduce_sum([counts[k] for k in PLACED], ctx)
    preds = inference.gather(local, ctx)
    if not ctx.is_main:
        return None
    result = finish(args, prep, preds, layout, counts)
    print(inference.timing_line(preds, prep, ctx.device))
    seconds = time.perf_counter() - t0
    print(f"=> done in {seconds:.2f} s, {len(preds) / seconds:.1f} images/s overall (model loading, inference and "
          "placing files)")
    return {**result, "seconds": seconds, "batch_size": prep.batch_size, "workers": prep.workers}


def keep_placed(placed: inference.Predictions, layout: Layout, ctx: DistContext) -> str:
    """After a stop or a failed placement: write the manifest of what this rank placed, drop the reports of a
    finished sort (they no longer describe DIR_OUT); return the manifest's name."""
    name, out = MANIFEST_NAME if ctx.world_size == 1 else RANK_MANIFESTS.replace("*", str(ctx.rank)), layout.out
    files.write_if_changed(os.path.join(out, name), manifest(placed, plan(placed, layout), layout))
    for report in (SUMMARY_NAME + ".csv", SUMMARY_NAME + ".txt", SHEET_NAME, UNCERTAIN_SHEET) if ctx.is_main else ():
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, report))
    return name


def main(args: argparse.Namespace) -> dict | None:
    """Sort --data into --out (by true class and verdict, or images without labels by predicted class); returns the
    summary (rank 0) for callers such as tests and the benchmark."""
    with exit_on_user_error():
        defaults.resolve_data_dir(args)
        args.output_dir = os.path.normpath(args.output_dir)  # destinations are compared as strings (stale files)
        check_args(args)
        loose = inference.unlabelled_images(args.data, args.unlabelled)
        check_loose(args, loose)
        return process.run_in_context(lambda ctx: run(args, ctx, loose), args.gpu, args.no_accel, args.dist_backend,
                                      args.dist_timeout)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
