"""Convert a dataset between formats: an ImageFolder to Hugging Face parquet or WebDataset shards, and back.

    python -m common.data.convert /data/imagenet /data/imagenet-parquet --to parquet
    python -m common.data.convert /data/imagenet /data/imagenet-shards --to shards --max-shard-mb 1024
    python -m common.data.convert /data/imagenet-parquet /data/imagenet-again --to folder

``--to parquet`` writes ``OUT/data/train-NNNNN.parquet`` and ``OUT/data/validation-NNNNN.parquet`` as on the Hub:
an ``image`` struct column (the file's bytes as they are, and its path below the split folder), an int64 ``label``
column, the class names as a ClassLabel in the Hugging Face features metadata, rows in the source's order, 16 rows
per row group (the Hub writes 100; a random row costs reading its group, so parquet to parquet is allowed to
re-group a Hub download for faster random access). ``--to shards`` writes ``OUT/train-NNNNNN.tar`` and
``OUT/val-NNNNNN.tar``, each sample a ``KEY.<ext>`` member with the image bytes and a ``KEY.cls`` member with its
label, the training samples shuffled once (``--seed``), and ``OUT/classes.txt`` (one class name per line, in label
order). ``--to folder`` writes ``OUT/{train,val}/<class>/<key>.<ext>`` from any readable format. Images are never
decoded or re-encoded.

Output files are size-capped (``--max-shard-mb``) and each is written whole (temporary name, then renamed); after
each one ``OUT/.convert-state.json`` records what is done. Run the same command again after an interruption and
it goes on from the last finished file, after checking those files' SHA-256 (a SIGINT or SIGTERM stops it in one
line with no temporary file left; one left by a killed run is removed on the rerun). At the end
``OUT/manifest.json`` lists every file with its split, image count, size and SHA-256.
"""
from common.errors import UserError, exit_on_user_error, quiet_ctrl_c, sigterm_raises

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass

import numpy as np

from common import files, limits, schema, terminal
from common.data import formats, hfdata, imagefolder, shards
from common.data.images import extension_of

TARGETS = ("parquet", "shards", "folder")
STATE_NAME = ".convert-state.json"
MANIFEST_NAME, CLASSES_NAME = shards.MANIFEST_NAME, shards.CLASSES_NAME
# A random row costs reading its whole row group: the Hub writes 100 images (about 11 MB of ImageNet) per group,
# 5.8 ms per random sample of photo-like 500x375 JPEGs on this project's machine, 1.2 ms with 16 (decoding one: 1.8).
ROWS_PER_GROUP = 16


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Convert an image dataset between ImageFolder, Hugging Face parquet "
                                                 "and WebDataset shards; resumable, with a checksummed manifest.")
    parser.add_argument("src", metavar="SRC", help="the dataset to read (any format --data accepts)")
    parser.add_argument("out", metavar="OUT", help="the folder to write (new or empty, or an unfinished conversion)")
    parser.add_argument("--to", choices=TARGETS, required=True, help="the format to write")
    parser.add_argument("--max-shard-mb", type=limits.Number(float, 1e-3, 1e6), default=512.0, metavar="MB",
                        help="size cap of one output file, in MB of image bytes (default: 512)")
    parser.add_argument("--seed", type=limits.Number(int, 0, 2**31 - 1), default=0, metavar="S",
                        help="seed of the one shuffle of the training samples in shards (default: 0)")
    return parser


@dataclass(frozen=True)
class Item:
    """One image to convert: its split, name (a path below the split, or a key), label, and where to read it."""

    name: str
    label: int
    read: tuple  # ("file", path) or ("row", split, index)


@dataclass
class Source:
    """A readable dataset: class names and the items of each split, in the source's order."""

    fmt: str
    classes: list[str]
    items: dict[str, list[Item]]
    tables: dict[str, hfdata.TableImages]

    def read(self, item: Item) -> bytes:
        if item.read[0] == "file":
            with open(item.read[1], "rb") as f:
                return f.read()
        if item.read[0] == "span":  # a member of a tar shard: (path, offset, size)
            with open(item.read[1], "rb") as f:
                f.seek(item.read[2])
                return f.read(item.read[3])
        return self.tables[item.read[1]].encoded(item.read[2])

    def size(self, item: Item) -> int | None:
        return os.path.getsize(item.read[1]) if item.read[0] == "file" else item.read[-1] if item.read[0] == "span" \
            else None


def open_source(src: str) -> Source:
    """The dataset at ``src`` as a Source (an ImageFolder, parquet or Arrow; shards are read by ``shards``)."""
    source = formats.resolve_source(src)
    fmt, root = source.format, source.root
    if fmt == "folder":
        items, classes = {}, None
        for split, folder in zip(("train", "val"), imagefolder.split_dirs(root)):
            ds = imagefolder.image_folder(folder, None)
            classes = classes or ds.classes
            imagefolder.check_same_classes(classes, ds.classes)
            items[split] = [Item(os.path.relpath(p, folder), t, ("file", p)) for p, t in ds.samples]
        return Source(fmt, classes, items, {})
    if fmt == "shards":
        classes = shards.read_classes(root)
        return Source(fmt, classes, {split: shard_items(root, split, len(classes)) for split in ("train", "val")}, {})
    hfdata.import_pyarrow()
    classes = hfdata.class_names(root)
    tables = {split: hfdata.TableImages(root, split, classes, None) for split in ("train", "val")}
    items = {split: [Item(hfdata.row_name(key), t, ("row", split, i)) for i, (key, t) in enumerate(ds.samples)]
             for split, ds in tables.items()}
    return Source(fmt, classes, items, tables)


def shard_items(root: str, split: str, classes: int) -> list[Item]:
    """The samples of a split's shards as Items that read their image straight from its place in the tar file
    (``shards.index_shard``: the headers and ``.cls`` members only; bad labels refused, a damaged rest named)."""
    return [Item(f"{key.replace('/', '__')}.{ext}", label, ("span", path, offset, size))
            for path in shards.require_shards(root, split)
            for key, label, offset, size, ext in shards.index_shard(path, classes) if offset >= 0]


def plan(source: Source, to: str, seed: int) -> dict[str, list[Item]]:
    """The items of each split in output order: training samples shuffled once for shards, else as read."""
    order = dict(source.items)
    if to == "shards":
        perm = np.random.default_rng(seed).permutation(len(order["train"]))
        order["train"] = [order["train"][i] for i in perm]
    return order


def fingerprint(source: Source, order: dict[str, list[Item]], args: argparse.Namespace) -> str:
    """What makes an unfinished conversion resumable: the same items, in the same order, to the same format."""
    h = hashlib.sha256(json.dumps([args.to, args.max_shard_mb, source.classes]).encode())
    for split, items in order.items():
        for item in items:
            h.update(f"{split}\0{item.name}\0{item.label}\0{source.size(item)}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def extension(name: str, payload: bytes) -> str:
    """The file extension of an image: its name's when it has one, else the one its content says."""
    return os.path.splitext(name)[1].lower() or extension_of(payload)


def parquet_bytes(rows: list[tuple[Item, bytes]], classes: list[str]) -> bytes:
    """One parquet file of ``rows`` in the Hub's layout: image {bytes, path}, label, ClassLabel metadata."""
    pa, pq = hfdata.import_pyarrow()
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": list(classes)}}
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("label", pa.int64())], metadata={"huggingface": json.dumps({"info": {"features": features}})})
    table = pa.table({"image": [{"bytes": b, "path": i.name} for i, b in rows],
                      "label": [i.label for i, _ in rows]}, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=ROWS_PER_GROUP)
    return buf.getvalue()


def tar_bytes(rows: list[tuple[Item, bytes]]) -> bytes:
    """One WebDataset shard: ``KEY.<ext>`` and ``KEY.cls`` per sample, the key free of dots (webdataset's rule)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for item, payload in rows:
            key = os.path.splitext(item.name)[0].replace(os.sep, "__").replace(".", "_")
            for suffix, content in ((extension(item.name, payload), payload), (".cls", str(item.label).encode())):
                info = tarfile.TarInfo(key + suffix)
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def chunks(source: Source, items: list[Item], cap: float):
    """Consecutive runs of ``(item, bytes)`` whose image bytes stay within ``cap`` (at least one item each)."""
    rows, size = [], 0
    for item in items:
        payload = source.read(item)
        if rows and size + len(payload) > cap:
            yield rows
            rows, size = [], 0
        rows.append((item, payload))
        size += len(payload)
    if rows:
        yield rows


def output_name(to: str, split: str, n: int) -> str:
    if to == "parquet":
        return os.path.join("data", f"{'validation' if split == 'val' else split}-{n:05d}.parquet")
    return f"{split}-{n:06d}.tar"


# What State.save writes; a resumed conversion trusts nothing else.
STATE_SCHEMA = {"fingerprint": str,
                "files": [{"name": schema.Text(), "sha256": str, "split": schema.One("train", "val"),
                           "images": schema.Int(), "start": schema.Int(), "end": schema.Int()}]}


@dataclass
class State:
    """What is already written: the finished files (manifest entries with their item range), and for which input."""

    fingerprint: str
    done: list[dict]

    def save(self, out: str) -> None:
        text = json.dumps({"fingerprint": self.fingerprint, "files": self.done}, indent=1).encode()
        files.write_atomically(os.path.join(out, STATE_NAME), lambda f: f.write(text))


def load_state(out: str, fp: str) -> State:
    """The state of an unfinished conversion into ``out`` of the same input (its files checked), or a fresh one;
    a UserError for a folder that holds anything else."""
    path = os.path.join(out, STATE_NAME)
    if not os.path.isfile(path):
        if os.path.isdir(out) and os.listdir(out):
            raise UserError(f"{out!r} is not empty and holds no unfinished conversion; choose a new or empty folder.")
        return State(fp, [])
    saved = schema.load_json(path, f"delete the folder {out!r} and convert again", STATE_SCHEMA)
    if saved.get("fingerprint") != fp:
        raise UserError(f"{out!r} holds an unfinished conversion of other input or settings; give the same SRC and "
                        "flags to resume it, or choose a new folder.")
    done = []
    for entry in saved["files"]:  # keep the files that are whole, up to the first that is not
        target = os.path.join(out, entry["name"])
        if not os.path.isfile(target) or files.sha256_of(target) != entry["sha256"]:
            break
        done.append(entry)
    return State(fp, done)


def write_split(source: Source, split: str, items: list[Item], state: State, job: argparse.Namespace, bar) -> None:
    """Write the output files of one split that ``state`` does not list yet, recording each once it is whole."""
    mine = [e for e in state.done if e["split"] == split]
    start = mine[-1]["end"] if mine else 0
    bar.update(start)
    for rows in chunks(source, items[start:], job.max_shard_mb * 1e6):
        name = output_name(job.to, split, len(mine))
        payload = parquet_bytes(rows, source.classes) if job.to == "parquet" else tar_bytes(rows)
        os.makedirs(os.path.dirname(os.path.join(job.out, name)), exist_ok=True)
        files.write_atomically(os.path.join(job.out, name), lambda f, data=payload: f.write(data))
        entry = {"name": name, "split": split, "images": len(rows), "bytes": len(payload),
                 "sha256": hashlib.sha256(payload).hexdigest(), "start": start, "end": start + len(rows)}
        mine.append(entry)
        state.done.append(entry)
        state.save(job.out)
        start += len(rows)
        bar.update(len(rows))


def write_folder(source: Source, order: dict[str, list[Item]], out: str, bar) -> list[dict]:
    """``OUT/{train,val}/<class>/<name>``: every image as a file (a file already whole is kept on resume)."""
    entries = []
    for split, items in order.items():
        for item in items:
            payload = source.read(item)
            name = os.path.basename(item.name)
            name = name if os.path.splitext(name)[1] else name + extension(name, payload)
            target = files.inside(out, split, source.classes[item.label], name, what="class or file name")
            rel = os.path.relpath(target, out)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not (os.path.isfile(target) and os.path.getsize(target) == len(payload)):
                files.write_atomically(target, lambda f, data=payload: f.write(data))
            entries.append({"name": rel, "split": split, "images": 1, "bytes": len(payload),
                            "sha256": hashlib.sha256(payload).hexdigest()})
            bar.update(1)
    return entries


def finish(out: str, source: Source, fmt: str, entries: list[dict]) -> None:
    """classes.txt (shards), then manifest.json; the state file goes last, so an interruption can still resume."""
    if fmt == "shards":
        names = "".join(f"{c}\n" for c in source.classes).encode("utf-8", "surrogateescape")
        files.write_atomically(os.path.join(out, CLASSES_NAME), lambda f: f.write(names))
    counts = {split: sum(e["images"] for e in entries if e["split"] == split) for split in ("train", "val")}
    manifest = {"format": fmt, "classes": source.classes, "source_format": source.fmt, "images": counts,
                "files": [{k: v for k, v in e.items() if k not in ("start", "end")} for e in entries]}
    text = json.dumps(manifest, indent=1).encode()
    files.write_atomically(os.path.join(out, MANIFEST_NAME), lambda f: f.write(text))
    if os.path.exists(os.path.join(out, STATE_NAME)):
        os.remove(os.path.join(out, STATE_NAME))


def convert(args: argparse.Namespace) -> dict:
    """Convert ``args.src`` into ``args.out``; returns the manifest's counts."""
    source = open_source(args.src)
    if args.to == source.fmt and args.to != "parquet":  # parquet to parquet: small row groups, for random access
        raise UserError(f"{args.src!r} already is a {formats.FORMATS[args.to]} dataset; choose another --to.")
    files.check_apart(args.out, "OUT", {"SRC": formats.resolve_source(args.src).root}, output_is_dir=True)
    if args.to == "folder":  # class names become folder names: each must stay inside OUT, refused before any work
        for name in source.classes:
            files.inside(args.out, "train", name, what="class name")
    order = plan(source, args.to, args.seed)
    fp = fingerprint(source, order, args)
    if os.path.isfile(os.path.join(args.out, MANIFEST_NAME)) and not os.path.isfile(os.path.join(args.out, STATE_NAME)):
        raise UserError(f"{args.out!r} already holds a finished conversion ({MANIFEST_NAME}); choose a new folder.")
    state = load_state(args.out, fp)
    files.make_output_dir(args.out, "OUT")
    files.remove_stale_parts(args.out)  # a run killed in the middle of a write (SIGKILL) left its temporary file
    total = sum(len(items) for items in order.values())
    with terminal.Ticker(total, f"to {args.to}", unit="img") as bar:  # a bar on a terminal, lines in a log
        if args.to == "folder":
            state.save(args.out)
            entries = write_folder(source, order, args.out, bar)
        else:
            state.save(args.out)
            for split, items in order.items():
                write_split(source, split, items, state, args, bar)
            entries = state.done
    finish(args.out, source, args.to, entries)
    counts = {split: sum(e["images"] for e in entries if e["split"] == split) for split in ("train", "val")}
    print(f"=> {counts['train']} train + {counts['val']} val images from {args.src} ({formats.FORMATS[source.fmt]}) "
          f"written to {args.out} as {formats.FORMATS[args.to]} in {len(entries)} file(s); {MANIFEST_NAME} lists them")
    return counts


def main(args: argparse.Namespace) -> dict:
    with exit_on_user_error(), sigterm_raises():
        return convert(args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
