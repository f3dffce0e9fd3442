"""Sort a labelled image folder by a model's verdict: DIR_OUT/<true class>/right/ or DIR_OUT/<true class>/wrong/.

    python classify_test_data.py --ckpt runs/probe/model_best.pth.tar --data /data/flowers --out runs/sorted
    python classify_test_data.py --ckpt model_best.pth.tar --data /data/flowers/val --out sorted --mode symlink
    torchrun --nproc_per_node 4 classify_test_data.py --ckpt model_best.pth.tar --data /imagenet --out sorted
    python classify_test_data.py --model model.onnx --data /data/flowers --out runs/sorted    # export.py, onnxruntime

DIR is a dataset root (its val/ is used) or a folder of class folders. A wrong image keeps its name with the
predicted class added (``img7__pred-tulip.jpg``); images of nested folders are named ``sub__img7.jpg``. The source
images are only read: the default --mode hard-links them (copies where the filesystem cannot link). DIR_OUT also
gets manifest.csv (one row per image), summary.csv / summary.txt (right and wrong per class) and mistakes.png, the
most confident mistakes. Running again into the same DIR_OUT updates it in place; --overwrite starts afresh.

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
RANK_MANIFESTS = "manifest.rank*.csv"  # what each rank of an interrupted torchrun sort had placed
VERDICTS = ("right", "wrong")
MODES = ("auto", "hardlink", "copy", "symlink")
NAME_MAX = 255  # bytes in one file name on the filesystems of Linux, macOS and Windows
TMP_NAME_ROOM = 24  # what place()'s temporary name ".<name>.<pid>.tmp" adds
WRITTEN_OUT = (hfdata.TableImages, shards.TarImages)  # datasets whose images are written out: no file to link


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Place every image of a labelled folder under OUT/<true class>/right/ or .../wrong/.",
        parents=[options.data_parser(training=False), options.model_parser(default_arch=None, dropout=False),
                 options.inference_parser(), options.speed_parser(), options.device_parser(),
                 options.process_group_parser()])
    parser.add_argument("--output-dir", "--out", dest="output_dir", required=True, metavar="DIR_OUT",
                        help="folder that receives the sorted images (--out is the same flag)")
    parser.add_argument("--mode", choices=MODES, default="auto",
                        help="how images get into DIR_OUT: auto = hard link where the filesystem allows, else copy "
                             "(default: auto)")
    parser.add_argument("--overwrite", action="store_true",
                        help="empty DIR_OUT (written by an earlier run) before sorting")
    parser.add_argument("--sheet-size", type=limits.Number(int, 0, 1024), default=64, metavar="N",
                        help="most confident mistakes shown in mistakes.png, at most 1024 (default: 64; 0: no sheet)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Check the flags (after ``defaults.resolve_data_dir``); changes nothing."""
    options.check_inference_args(args)
    if not args.data:
        raise UserError("no images to sort: pass --data DIR (a dataset root with val/, or a folder of class folders).")
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


def file_names(samples: list[tuple[str, int]], folder: str, classes: list[str]) -> list[str]:
    """A name for each image, unique within its class: its path below the class folder, '/' written as '__'.

    Names that would clash (case-insensitively, for macOS and Windows filesystems) get ``~2``, ``~3``...
    """
    names, used = [], set()
    for path, target in samples:
        name = os.path.relpath(path, os.path.join(folder, classes[target])).replace(os.sep, "__")
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


def plan(preds: inference.Predictions, names: list[str], classes: list[str], out: str) -> dict[int, str]:
    """Dataset index -> absolute destination of every readable image."""
    return {i: os.path.join(out, destination(names[i], classes[t], classes[p]))
            for i, t, p, ok in zip(preds.indices.tolist(), preds.targets.tolist(), preds.top_idx[:, 0].tolist(),
                                   preds.readable.tolist()) if ok}


def remove_stale(out: str, keep: set[str]) -> int:
    """Delete files under DIR_OUT/<class>/{right,wrong}/ that this run did not place (earlier verdicts)."""
    removed = 0
    for entry in os.scandir(out):
        for verdict in VERDICTS if entry.is_dir(follow_symlinks=False) else ():
            top = os.path.join(entry.path, verdict)
            for root, _dirs, names in os.walk(top, topdown=False):
                for f in names:
                    if os.path.join(root, f) not in keep:
                        os.remove(os.path.join(root, f))
                        removed += 1
                if not os.listdir(root):
                    os.rmdir(root)
        if entry.is_dir(follow_symlinks=False) and not os.listdir(entry.path):
            os.rmdir(entry.path)
    return removed


def manifest(preds: inference.Predictions, dests: dict[int, str], classes: list[str], out: str) -> bytes:
    """One row per sorted image: source, destination (below DIR_OUT), true, predicted, confidence, correct."""
    rows = []
    for row, index in enumerate(preds.indices.tolist()):
        true, pred = int(preds.targets[row]), int(preds.top_idx[row, 0])
        rows.append([preds.paths[row], os.path.relpath(dests[index], out), classes[true], classes[pred],
                     f"{float(preds.top_prob[row, 0]):.6f}", int(true == pred)])
    return files.csv_bytes(["source", "destination", "true", "predicted", "confidence", "correct"], rows)


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


def write_summary(out: str, rows: list[dict]) -> str:
    """summary.csv and summary.txt (the printed table); return the table."""
    width = max(len(r["class"]) for r in rows)
    lines = [f"{'class':<{width}} {'right':>7} {'wrong':>7} {'accuracy':>9}"]
    lines += [f"{r['class']:<{width}} {r['right']:>7} {r['wrong']:>7} {r['accuracy']:>8.3f}%" for r in rows]
    fields = ["class", "right", "wrong", "images", "accuracy"]
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
    png = io.BytesIO()
    if figures.contact_sheet(items, png):
        files.write_if_changed(path, png.getvalue())
    elif os.path.exists(path):
        os.remove(path)
    return len(items)


def finish(args: argparse.Namespace, prep: inference.Prepared, preds: inference.Predictions, dests: dict[int, str],
           counts: list[float]) -> dict:
    """Rank 0: drop earlier verdicts, write manifest, summary and contact sheet, print what happened."""
    out, ok = args.output_dir, preds.ok
    stale = remove_stale(out, set(dests.values()))
    files.write_if_changed(os.path.join(out, MANIFEST_NAME), manifest(ok, dests, prep.classes, out))
    for partial in glob.glob(os.path.join(glob.escape(out), RANK_MANIFESTS)):
        os.remove(partial)
    rows = summary_rows(ok, prep.classes)
    print(write_summary(out, rows))
    if isinstance(prep.dataset.base, WRITTEN_OUT):  # the sheet reads the images from where they were written
        ok = dataclasses.replace(ok, paths=[dests[i] for i in ok.indices.tolist()])
    sheet = mistakes_sheet(ok, prep.names, os.path.join(out, SHEET_NAME), args.sheet_size) if args.sheet_size else 0
    unreadable = [p for p, r in zip(preds.paths, preds.readable.tolist()) if not r]
    hard, copy, sym, kept = (int(c) for c in counts)
    print(f"=> {len(dests)} images sorted into {out}: {hard} hard links, {copy} copies, {sym} symlinks, {kept} "
          f"already in place; {stale} stale files removed"
          + (f"; {len(unreadable)} unreadable images skipped, e.g. {unreadable[0]}" if unreadable else ""))
    print(f"=> wrote {MANIFEST_NAME}, {SUMMARY_NAME}.csv, {SUMMARY_NAME}.txt"
          + (f" and {SHEET_NAME} ({sheet} mistakes)" if sheet else " (no mistakes: no contact sheet)"))
    return {"summary": rows, "placed": len(dests), "unreadable": len(unreadable), "stale_removed": stale}


def run(args: argparse.Namespace, ctx: DistContext) -> dict | None:
    t0 = time.perf_counter()
    source = inference.model_source(args)
    cfg = inference.LoaderConfig(args.val_resize_size, args.val_crop_size, args.batch_size, args.workers,
                                 interpolation=args.interpolation)
    prep = inference.prepare(source, cfg, ctx, root=args.data, speed=inference.speed_config(args))
    if ctx.is_main:
        print(inference.header(prep, source, ctx), flush=True)
        claim_output(args.output_dir, args.overwrite)
    distributed.barrier(ctx)  # nobody places a file before DIR_OUT is claimed (and emptied)
    base = prep.dataset.base
    rows = base if isinstance(base, WRITTEN_OUT) else None  # nothing to link: write each image out
    names = RowNames(base) if rows is not None else file_names(base.samples, prep.source_dir, prep.classes)
    counts, done = dict.fromkeys(PLACED, 0), []

    def place_batch(batch: inference.Predictions) -> None:  # as soon as judged, so that a stop keeps them
        try:
            place_share(batch, plan(batch, names, prep.classes, args.output_dir), args.mode, counts, rows)
        except PlaceFailed as failed:
            done.append(batch.select(list(range(failed.rows))))
            raise
        done.append(batch)

    try:
        local = inference.predict(prep, ctx, k=1, on_batch=place_batch)
    except (faults.Interrupted, PlaceFailed) as exc:
        placed = inference.concat(done, 1).ok
        name = keep_placed(placed, names, prep.classes, args.output_dir, ctx)
        what = f"{len(placed)} placed into {args.output_dir} and listed in {name}"
        if isinstance(exc, PlaceFailed):
            raise UserError(f"{exc}; {what}: free some disk space or choose a writable --output-dir, and run the "
                            "same command again to sort the rest.") from None
        raise exc.then(f"{what}; run the same command again to sort the rest (what is in place is kept).") from None
    counts = distributed.all_reduce_sum([counts[k] for k in PLACED], ctx)
    preds = inference.gather(local, ctx)
    if not ctx.is_main:
        return None
    result = finish(args, prep, preds, plan(preds, names, prep.classes, args.output_dir), counts)
    print(inference.timing_line(preds, prep, ctx.device))
    seconds = time.perf_counter() - t0
    print(f"=> done in {seconds:.2f} s, {len(preds) / seconds:.1f} images/s overall (model loading, inference and "
          "placing files)")
    return {**result, "seconds": seconds, "batch_size": prep.batch_size, "workers": prep.workers}


def keep_placed(placed: inference.Predictions, names: list[str], classes: list[str], out: str,
                ctx: DistContext) -> str:
    """After a stop or a failed placement: write the manifest of what this rank placed, drop the reports of a
    finished sort (they no longer describe DIR_OUT); return the manifest's name."""
    name = MANIFEST_NAME if ctx.world_size == 1 else RANK_MANIFESTS.replace("*", str(ctx.rank))
    files.write_if_changed(os.path.join(out, name), manifest(placed, plan(placed, names, classes, out), classes, out))
    for report in (SUMMARY_NAME + ".csv", SUMMARY_NAME + ".txt", SHEET_NAME) if ctx.is_main else ():
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, report))
    return name


def main(args: argparse.Namespace) -> dict | None:
    """Sort --data into --out; returns the summary (rank 0) for callers such as tests and the benchmark."""
    with exit_on_user_error():
        defaults.resolve_data_dir(args)
        args.output_dir = os.path.normpath(args.output_dir)  # destinations are compared as strings (stale files)
        check_args(args)
        return process.run_in_context(lambda ctx: run(args, ctx), args.gpu, args.no_accel, args.dist_backend,
                                      args.dist_timeout)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
