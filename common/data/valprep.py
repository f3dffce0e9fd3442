"""Sort a flat ImageNet val folder (ILSVRC2012_val_00000001.JPEG ... in one folder) into one folder per class.

    python -m common.data.valprep /imagenet/val --devkit ILSVRC2012_devkit_t12.tar.gz
    python -m common.data.valprep /imagenet/val --labels LOC_val_solution.csv          # Kaggle's layout
    python -m common.data.valprep /imagenet/val --devkit ILSVRC2012_devkit_t12.tar.gz --link

The labels come from the official devkit archive (data/meta.mat maps the ILSVRC2012 class ids to wnids,
data/ILSVRC2012_validation_ground_truth.txt gives each image's id, in file-number order, as torchvision's
``parse_devkit_archive`` reads them; reading meta.mat needs scipy) or from Kaggle's ``LOC_val_solution.csv``
(``ImageId,PredictionString``, the wnid first in each prediction string). Images are MOVED into
``VAL_DIR/<wnid>/`` (renames within one filesystem: fast, no extra space); ``--link`` leaves them in place and makes
hard links instead. Every image of the folder must have a label and every label an image: otherwise nothing is
touched. ``VAL_DIR/valprep_manifest.csv`` lists each file and its class; a second run finds the folder sorted and
does nothing. An interrupted run (SIGINT, SIGTERM) is finished by running it again; a manifest whose entries would
move an image out of the folder, or that leaves images of the folder unlisted, is refused before anything moves. A
class folder on another filesystem is filled by copy, rename, then delete: each image is whole in one place.
"""
from __future__ import annotations

import argparse
import csv
import errno
import io
import os
import re
import shutil
import tarfile

from common import files, schema
from common.errors import UserError, exit_on_user_error, first_line, sigterm_raises

MANIFEST_NAME = "valprep_manifest.csv"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff")
VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d{8})")
WNID = re.compile(r"n\d{8}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Sort a flat ImageNet val folder into one folder per class.")
    parser.add_argument("val_dir", metavar="VAL_DIR", help="the folder holding ILSVRC2012_val_*.JPEG")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--devkit", metavar="TAR_GZ", help="the official ILSVRC2012_devkit_t12.tar.gz")
    source.add_argument("--labels", metavar="CSV", help="Kaggle's LOC_val_solution.csv")
    parser.add_argument("--link", action="store_true",
                        help="hard-link the images into the class folders instead of moving them")
    return parser


def image_files(folder: str) -> list[str]:
    """The image files directly in ``folder``, sorted by name."""
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def flat_folder_error(folder: str) -> str | None:
    """The one-line error for a folder of images without class folders (an unsorted val/), or None."""
    if not os.path.isdir(folder) or any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(folder)):
        return None
    count = len(image_files(folder))
    if not count:
        return None
    return (f"{folder!r} holds {count} images but no class folders; an ImageNet val folder is sorted into them by "
            f"`python -m common.data.valprep {folder} --devkit ILSVRC2012_devkit_t12.tar.gz` (or --labels "
            "LOC_val_solution.csv); other images go into one folder per class.")


def unsorted_val_error(folder: str, then: str) -> str | None:
    """The one-line error for a folder of ImageNet val images (``ILSVRC2012_val_N.JPEG``) that has no class folders,
    ending with ``then`` (what else the user may do); None for any other folder."""
    names = image_files(folder) if os.path.isdir(folder) else []
    count = sum(1 for name in names if VAL_NUMBER.match(name))
    if not count:
        return None
    return (f"{folder!r} holds {count} ImageNet val images but no class folders; sort them into class folders by "
            f"`python -m common.data.valprep {folder} --devkit ILSVRC2012_devkit_t12.tar.gz` (or --labels "
            f"LOC_val_solution.csv), {then}")


def devkit_labels(path: str) -> dict[int, str]:
    """Val image number (1-based) -> wnid, from the devkit archive's meta.mat and ground-truth file."""
    try:
        import scipy.io
    except ImportError:
        raise UserError("reading the devkit's meta.mat needs scipy: pip install scipy (or use --labels "
                        "LOC_val_solution.csv).") from None
    try:
        with tarfile.open(path) as tar:
            members = {m.name.split("/data/", 1)[-1]: m for m in tar.getmembers() if "/data/" in m.name}
            meta = scipy.io.loadmat(io.BytesIO(tar.extractfile(members["meta.mat"]).read()), squeeze_me=True)
            truth = tar.extractfile(members["ILSVRC2012_validation_ground_truth.txt"]).read().decode().split()
        synsets = meta["synsets"]
        wnid_of = {int(i): str(w) for i, w, n in zip(synsets["ILSVRC2012_ID"], synsets["WNID"],
                                                    synsets["num_children"]) if int(n) == 0}
        return {number: wnid_of[int(class_id)] for number, class_id in enumerate(truth, 1)}
    except (OSError, tarfile.TarError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"--devkit {path!r} is not a readable ILSVRC2012 devkit archive ({type(exc).__name__}: "
                        f"{exc}); give ILSVRC2012_devkit_t12.tar.gz.") from None


def kaggle_labels(path: str) -> dict[int, str]:
    """Val image number -> wnid, from LOC_val_solution.csv (ImageId,PredictionString 'n01751748 x y x y ...')."""
    out = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                number, wnid = VAL_NUMBER.fullmatch(row["ImageId"]), row["PredictionString"].split()[0]
                if not number or not WNID.fullmatch(wnid):
                    raise ValueError(f"row {row}")
                out[int(number.group(1))] = wnid
    except (OSError, KeyError, ValueError, IndexError, TypeError, csv.Error) as exc:
        raise UserError(f"--labels {path!r} is not a LOC_val_solution.csv (ImageId,PredictionString with a wnid "
                        f"first; {type(exc).__name__}: {exc}).") from None
    return out


def plan(folder: str, labels: dict[int, str], source: str) -> list[tuple[str, str]]:
    """(file, wnid) for every image in ``folder``; refused when the label file does not fit the folder."""
    names = image_files(folder)
    numbers = {}
    for name in names:
        match = VAL_NUMBER.match(name)
        if not match:
            raise UserError(f"{os.path.join(folder, name)!r} is not an ImageNet val image (ILSVRC2012_val_N.JPEG); "
                            "move it out of the folder first. Nothing was moved.")
        numbers[name] = int(match.group(1))
    unlabelled = [n for n in names if numbers[n] not in labels]
    if unlabelled or len(names) != len(labels):
        detail = f"{unlabelled[0]} has no label" if unlabelled else "some labels have no image"
        raise UserError(f"{source} labels {len(labels)} images but {folder!r} holds {len(names)} ({detail}); give "
                        "the label file of this folder, or restore the missing images. Nothing was moved.")
    return [(name, labels[numbers[name]]) for name in names]


def read_manifest(folder: str) -> list[tuple[str, str]] | None:
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    fix = f"delete {MANIFEST_NAME} and run again with the label file"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} cannot be read as a CSV manifest ({first_line(exc)}); {fix}.") from None
    schema.check(rows, [{"file": schema.Text(), "class": schema.Text()}], path, fix)
    return [(row["file"], row["class"]) for row in rows]


def check_manifest(folder: str, moves: list[tuple[str, str]]) -> None:
    """Refuse a manifest that could move an image out of ``folder`` (a file entry that is not a bare val image
    name, a class that is not a wnid) or that leaves images of the folder unsorted (an entry-less or partial list),
    before anything is moved."""
    path = os.path.join(folder, MANIFEST_NAME)
    listed = set()
    for row, (name, wnid) in enumerate(moves, 2):
        if not VAL_NUMBER.fullmatch(os.path.splitext(name)[0]) or os.path.basename(name) != name \
                or not WNID.fullmatch(wnid):
            raise UserError(f"{path!r} line {row} ({name!r} -> {wnid!r}) is not a val image name and a wnid; delete "
                            f"{MANIFEST_NAME} and sort the folder afresh. Nothing was moved.")
        listed.add(name)
    flat = [name for name in image_files(folder) if name not in listed]
    if flat or not moves:
        what = f"does not list {flat[0]!r} (and {len(flat) - 1} more)" if flat else "lists no image"
        raise UserError(f"{path!r} {what}; delete {MANIFEST_NAME} and sort the folder afresh. Nothing was moved.")


def move(src: str, dest: str) -> None:
    """Rename ``src`` to ``dest``; across filesystems (EXDEV: a class folder on another disk) copy it to a temporary
    file there, rename that into place, then delete ``src``, so that the image is whole in one place or both."""
    try:
        os.replace(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with open(src, "rb") as f:
            files.atomic_write(dest, lambda out: shutil.copyfileobj(f, out))
        shutil.copystat(src, dest)
        os.unlink(src)


def sort_folder(folder: str, moves: list[tuple[str, str]], link: bool) -> int:
    """Move (or hard-link) each file into its class folder; return how many were placed this time. The manifest
    is written first, so that a rerun after an interruption knows the whole plan."""
    rows = [[name, wnid] for name, wnid in moves]
    files.write_atomically(os.path.join(folder, MANIFEST_NAME), lambda f: f.write(files.csv_bytes(["file", "class"],
                                                                                                   rows)))
    placed = 0
    for name, wnid in moves:
        src, dest = os.path.join(folder, name), os.path.join(folder, wnid, name)
        if os.path.exists(dest):
            if not link and os.path.isfile(src) and not os.path.samefile(src, dest) \
                    and os.path.getsize(src) == os.path.getsize(dest):
                os.unlink(src)  # a copy across filesystems stopped before the original was deleted
            continue
        if not os.path.exists(src):
            raise UserError(f"{src!r}, listed in {MANIFEST_NAME}, is neither there nor in {wnid}/; restore it, or "
                            f"delete {MANIFEST_NAME} and sort the folder afresh.")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        try:
            (os.link if link else move)(src, dest)
        except OSError as exc:
            raise UserError(f"cannot {'link' if link else 'move'} {src!r} into {wnid}/ ({exc.strerror}); "
                            f"{'sort without --link, or ' if link else ''}make the class folder writable and run it "
                            "again: the images already placed stay listed.") from None
        placed += 1
    return placed


def main(args: argparse.Namespace) -> dict:
    """Sort ``args.val_dir``; returns what was done (for tests)."""
    with exit_on_user_error(), sigterm_raises():
        folder = args.val_dir
        if not os.path.isdir(folder):
            raise UserError(f"{folder!r} is not a folder; give the val folder holding ILSVRC2012_val_*.JPEG.")
        moves = read_manifest(folder)
        if moves is not None:
            check_manifest(folder, moves)
        else:
            labels = devkit_labels(args.devkit) if args.devkit else kaggle_labels(args.labels)
            moves = plan(folder, labels, args.devkit or args.labels)
        placed = sort_folder(folder, moves, args.link)
        classes = len({wnid for _, wnid in moves})
        if placed:
            print(f"=> {'linked' if args.link else 'moved'} {placed} images into {classes} class folders of {folder}; "
                  f"the list is in {MANIFEST_NAME}")
        else:
            print(f"=> {folder} is already sorted ({len(moves)} images in {classes} class folders, as {MANIFEST_NAME} "
                  "says); nothing to do")
        return {"placed": placed, "images": len(moves), "classes": classes}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
