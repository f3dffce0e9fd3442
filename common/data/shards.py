"""WebDataset tar shards as a streaming dataset: ``DIR/train-*.tar``, ``DIR/val-*.tar`` and ``DIR/classes.txt``.

A sample is a run of tar members sharing a key (the member name up to its first dot): ``KEY.jpg|jpeg|png|webp``
and ``KEY.cls`` (the integer label, an index into classes.txt). Shards are read sequentially with the standard
library's ``tarfile`` (no decoding of what is skipped), which keeps full control of what each rank and worker
reads; the ``webdataset`` package is not needed.

What holds, per epoch ``e`` of a run with ``--seed s`` (``ShardStream``):
* the training shards are permuted by ``(s, e)`` and dealt round-robin to ranks, then to each rank's loader workers;
  each worker shuffles its stream through a buffer of ``buffer`` samples seeded by ``(s, e, rank, worker)``;
* every rank runs the same number of steps, ``images // (world_size * batch)``, in every epoch, whatever the
  shard sizes: each worker yields a fixed quota of whole batches, computed before the epoch from the shards' sample
  counts (``manifest.json`` or a scan of the headers), so no rank waits in a collective for another and the
  schedule's steps per epoch stay fixed. Where the shards dealt to a rank hold fewer samples than its steps need, its
  workers start their shards again (some samples twice); where they hold more, the rest sits out that epoch. When
  every worker's share is a multiple of the batch, every training sample is seen exactly once per epoch;
* each sample's augmentation is seeded by ``(s, e, sample id)``, its id its position in the sorted shard list;
* validation shards are dealt to ranks and workers the same way, without quotas: each sample is counted once;
* ``--resume`` continues an epoch at its step: each worker skips, unread by the decoder, the batches that it had
  already delivered (the DataLoader takes batches from workers round-robin), so the resumed epoch sees the same
  batches as an uninterrupted one, given the same ``-j`` and number of processes;
* a damaged sample (unreadable image, no ``.cls``) or the rest of a truncated shard is skipped and reported as
  ``shard.tar:KEY``; a worker left short of its quota by that starts its shards again, so steps stay equal.

test.py and the sorter need a map-style dataset instead (exact distributed splitting, predictions in dataset
order): ``TarImages`` indexes the validation shards' headers once (each image's offset and size, and its label) and
reads each sample by a positioned read from its shard, opened lazily in each process: random access, no stream.
"""
from __future__ import annotations

import copy
import dataclasses
import glob
import os
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from common import schema
from common.data import published, sampling, transforms, unreadable
from common.data.images import BadImage, decode_rgb
from common.data.samples import CompactSamples
from common.errors import UserError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CLASSES_NAME, MANIFEST_NAME = "classes.txt", "manifest.json"
MANIFEST_FIX = "delete it to count the samples from the shards' headers, or convert again"
MANIFEST_SCHEMA = {"files?": [{"name": schema.Text(), "images": schema.Int(), "bytes?": schema.Int()}]}
# The least a sample takes in a tar: an image and a .cls member, each a 512-byte header and a data block.
MIN_SAMPLE_BYTES = 4 * tarfile.BLOCKSIZE
SPLIT_PATTERNS = {"train": ("train-*.tar", *published.TRAIN_PATTERNS),
                  "val": ("val-*.tar", "validation-*.tar", *published.VAL_PATTERNS)}


def shard_files(root: str, split: str) -> list[str]:
    """The shards of ``split`` under ``root``, sorted; those its patterns name, for a ``published.PatternRoot``."""
    if isinstance(root, published.PatternRoot):
        return root.files(split)
    for pattern in SPLIT_PATTERNS[split]:
        found = sorted(glob.glob(os.path.join(glob.escape(root), pattern)))
        if found:
            return found
    return []


def require_shards(root: str, split: str) -> list[str]:
    """``shard_files``, or a UserError when ``split`` has none."""
    found = shard_files(root, split)
    if not found:
        raise UserError(f"{root!r} has no {split} shards ({' or '.join(SPLIT_PATTERNS[split])}).")
    return found


def read_classes(root: str) -> list[str]:
    path = os.path.join(root, CLASSES_NAME)
    if not os.path.isfile(path):
        names = published.info_classes(published.read_info(root))
        if names:
            return names
        names = published.sample_classes(shard_files(root, "val") or shard_files(root, "train"))
        if names:
            return schema.class_names(names, f"the samples' .json in {root!r}",
                                      "write classes.txt beside the shards, one name per line")
        raise UserError(f"{root!r} holds shards but no {CLASSES_NAME} (one class name per line, in label order); "
                        "write it beside the shards, or convert again with python -m common.data.convert.")
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        names = [line.rstrip("\n") for line in f if line.strip()]
    return schema.class_names(names, path, "list each class once, one per line, in label order")


def iter_samples(path: str, bad: list[str] | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {ext: bytes})`` of each sample of one shard, in order; a truncated shard ends early, noted in ``bad``."""
    name, current, members = os.path.basename(path), None, {}
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _key_of(member)
                if key != current and current is not None:
                    yield current, members
                    members = {}
                current = key
                members[ext] = tar.extractfile(member).read()
        # A whole tar ends with two zero blocks after its last member; the stream reader stops quietly without them.
        whole = os.path.getsize(path) >= tar.offset + 2 * tarfile.BLOCKSIZE
    except (tarfile.TarError, OSError, EOFError) as exc:
        if bad is not None:
            bad.append(f"{name}: truncated or damaged after {current or 'its start'} ({exc})")
        return
    if not whole:
        if bad is not None:
            bad.append(f"{name}: truncated at {current or 'its start'}")
        return
    if current is not None:
        yield current, members


def label_of(where: str, cls: bytes | None, classes: int) -> int:
    """The label of sample ``where`` (``shard.tar:KEY``) from its ``.cls`` bytes; a UserError when there is none or
    it lies outside the class list."""
    if cls is None:
        raise UserError(f"sample {where} has no .cls member (its integer label); write KEY.cls beside each image, "
                        "or convert again with python -m common.data.convert.")
    try:
        label = int(cls.strip() or -1)
    except ValueError:
        raise UserError(f"sample {where} has a .cls member that is not an integer label ({cls[:20]!r}); write the "
                        "label's index, or convert again with python -m common.data.convert.") from None
    if not 0 <= label < classes:
        raise UserError(f"sample {where} has label {label} but {CLASSES_NAME} names {classes} classes; the class "
                        "list disagrees with the labels: fix it or convert again.")
    return label


def count_shard(path: str, classes: int) -> int:
    """Samples of one shard, from its tar headers (``index_shard``: only the small ``.cls`` members are read); a
    UserError for an empty shard, a sample without ``.cls`` or a label outside the class list."""
    return len(index_shard(path, classes))


def _listed_count(entry: dict | None, path: str) -> int | None:
    """The manifest's count for the shard at ``path`` when it can be true of that file: its size is the one listed,
    and large enough for that many samples; else None."""
    if not entry or not entry["images"]:
        return None
    size = os.path.getsize(path)
    if entry.get("bytes", size) != size or entry["images"] * MIN_SAMPLE_BYTES > size:
        return None
    return entry["images"]


def shard_counts(root: str, files: list[str], classes: int) -> list[int]:
    """Samples per shard: from ``manifest.json`` (written by common.data.convert) or ``_info.json`` (timm's Hub
    layout) when they list them, else a scan.

    A listed count that cannot be true of its file (another size than listed, more samples than its bytes can
    hold) is not trusted: that shard is counted from its headers, and one line says so."""
    info = published.info_lengths(published.read_info(root))
    listed = {name: {"images": count} for name, count in info.items()}
    manifest = os.path.join(root, MANIFEST_NAME)
    if os.path.isfile(manifest):
        entries = schema.load_json(manifest, MANIFEST_FIX, MANIFEST_SCHEMA).get("files", [])
        listed.update({e["name"]: e for e in entries})
    counts, wrong = [], []
    for f in files:
        entry = listed.get(os.path.basename(f))
        count = _listed_count(entry, f)
        if count is None and entry:
            wrong.append(os.path.basename(f))
        counts.append(count or count_shard(f, classes))
    if wrong:
        print(f"=> the sample counts listed in {root} do not describe {len(wrong)} of the shards (e.g. {wrong[0]}: "
              "another size, or more samples than the file can hold); they were counted from their tar headers",
              flush=True)
    return counts


@dataclass(frozen=True)
class StreamConfig:
    """How a split streams: per-process batch, ranks, loader workers, shuffle buffer, seed; train or evaluation."""

    batch_size: int
    world_size: int = 1
    rank: int = 0
    workers: int = 0
    buffer: int = 1000
    seed: int | None = None
    train: bool = True


class ShardStream(IterableDataset):
    """One split of a shard folder; iterated by a DataLoader (``batch_size=None``), it yields this worker's batches
    ``(images, targets, keys)``. ``set_epoch`` / ``set_start`` play the sampler's part (see the module docstring)."""

    def __init__(self, root: str, split: str, classes: list[str], decode, transform, bad_log=None) -> None:
        self.files = require_shards(root, split)
        self.root, self.split, self.classes = root, split, classes
        self.counts = shard_counts(root, self.files, len(classes))
        self.offsets = [0, *torch.tensor(self.counts).cumsum(0).tolist()[:-1]]
        self.decode, self.transform, self.bad_log = decode, transform, bad_log
        self.cfg = StreamConfig(1)
        self.epoch = self.start_step = 0

    def __len__(self) -> int:
        return sum(self.counts)

    def configure(self, cfg: StreamConfig) -> None:
        self.cfg = cfg

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, step: int) -> None:
        self.start_step = step

    def _order(self) -> list[int]:
        order = list(range(len(self.files)))
        if self.cfg.train:
            g = torch.Generator().manual_seed((self.cfg.seed or 0) + self.epoch)
            order = torch.randperm(len(self.files), generator=g).tolist()
        return order

    def assignment(self) -> list[list[list[int]]]:
        """``[rank][worker] -> shard indices`` of this epoch."""
        order, w = self._order(), max(1, self.cfg.workers)
        ranks = [order[r::self.cfg.world_size] for r in range(self.cfg.world_size)]
        return [[mine[k::w] for k in range(w)] for mine in ranks]

    def quotas(self) -> list[int] | None:
        """Batches each of this rank's workers yields this epoch (None in evaluation: everything, once).

        Every rank runs ``len(self) // (world_size * batch_size)`` steps in every epoch, whatever the shards dealt to
        it (so the schedule's steps per epoch never change), shared over its workers in proportion to their samples.
        A worker whose share falls short starts its shards again; one with more leaves the rest for another epoch."""
        if not self.cfg.train:
            return None
        steps = len(self) // (self.cfg.world_size * self.cfg.batch_size)
        samples = [sum(self.counts[i] for i in shards) for shards in self.assignment()[self.cfg.rank]]
        total = max(1, sum(samples))
        quotas = [steps * m // total for m in samples]
        by_remainder = sorted(range(len(samples)), key=lambda k: -(steps * samples[k] % total))
        for k in by_remainder[:steps - sum(quotas)]:
            quotas[k] += 1
        return quotas

    def steps(self) -> int:
        """Batches of this rank this epoch (every rank the same in training)."""
        quotas = self.quotas()
        if quotas is not None:
            return sum(quotas)
        workers = self.assignment()[self.cfg.rank]  # each worker batches its own shards' samples
        return sum(-(-sum(self.counts[i] for i in shards) // self.cfg.batch_size) for shards in workers)

    def resumed_role(self, worker: int, quotas: list[int]) -> tuple[int | None, int]:
        """``(role, batches already delivered by it)`` of DataLoader worker ``worker`` when the epoch starts at step
        ``start_step``. The DataLoader takes batches round-robin from its workers, starting with worker 0, skipping
        those that are done; a resumed epoch must go on with the role whose turn came next, so worker k plays the
        k-th role still active from there (None: no role left for it)."""
        left, done, turn = list(quotas), [0] * len(quotas), 0
        for _ in range(min(self.start_step, sum(quotas))):
            while not left[turn]:
                turn = (turn + 1) % len(left)
            left[turn], done[turn], turn = left[turn] - 1, done[turn] + 1, (turn + 1) % len(left)
        active = [r for r in (turn + k for k in range(len(left))) if left[r % len(left)]]
        if worker >= len(active):
            return None, 0
        role = active[worker] % len(left)
        return role, done[role]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        quotas = self.quotas()
        if quotas is None:
            yield from self._batches(self._raw(self.assignment()[self.cfg.rank][worker]), None, 0)
            return
        role, skip = self.resumed_role(worker, quotas)
        if role is None:
            return
        rng = random.Random(f"{self.cfg.seed or 0}/{self.epoch}/{self.cfg.rank}/{role}")
        stream = self._passes(self.assignment()[self.cfg.rank][role], rng)
        yield from self._batches(stream, quotas[role] - skip, skip * self.cfg.batch_size)

    def _passes(self, shards: list[int], rng: random.Random) -> Iterator[tuple[int, str, dict[str, bytes]]]:
        """Shuffled passes over ``shards``, one after the other until the reader stops asking (only a worker short of
        its quota after damaged samples starts a second pass); each pass is drained before the next begins."""
        while True:
            found = 0
            for item in shuffled(self._raw(shards), self.cfg.buffer, rng):
                found += 1
                yield item
            if not found:
                return

    def _raw(self, shards: list[int]) -> Iterator[tuple[int, str, dict[str, bytes]]]:
        """``(sample id, name, members)`` of ``shards`` in order; damaged shards reported."""
        for i in shards:
            notes: list[str] = []
            name = os.path.basename(self.files[i])
            for n, (key, members) in enumerate(iter_samples(self.files[i], notes)):
                yield self.offsets[i] + n, f"{name}:{key}", members
            for note in notes:
                self._report(BadImage(name, note.split(": ", 1)[1]))

    def _report(self, exc: BadImage) -> None:
        if self.bad_log is None:
            raise exc
        if self.bad_log.policy == "fail":
            raise UserError(f"unreadable sample {exc}; remove or replace it, or pass --bad-images skip.")
        self.bad_log.report(exc)

    def _sample(self, sid: int, name: str, members: dict[str, bytes]):
        """``(image, target, name)`` of one raw sample, or None (reported) when it cannot be used."""

        payload = next((members[e] for e in IMAGE_EXTS if e in members), None)
        try:
            if payload is None or "cls" not in members:
                raise BadImage(name, "no image member" if payload is None else "no .cls member")
            try:
                label = label_of(name, members["cls"], len(self.classes))
            except UserError as exc:  # a damaged label is skipped and reported like a damaged image
                raise BadImage(name, str(exc)) from None
            if self.cfg.train and self.cfg.seed is not None:
                seed = sampling.sample_seed(self.cfg.seed, self.epoch, sid)
                torch.manual_seed(seed)
                random.seed(seed)
            image = self.decode(payload, name)
        except BadImage as exc:
            self._report(exc)
            return None
        image = self.transform(image) if self.transform is not None else image
        return image, label, name

    def _batches(self, stream, quota: int | None, skip: int):
        """Whole batches of decoded samples (``quota`` of them; None: all, the last one partial), after passing over
        ``skip`` raw samples undecoded."""
        batch, made = [], 0
        if quota is not None and quota <= 0:
            return
        for n, raw in enumerate(stream):
            if n < skip:
                continue
            sample = self._sample(*raw)
            if sample is not None:
                batch.append(sample)
            if len(batch) == self.cfg.batch_size:
                yield torch.utils.data.default_collate(batch)
                batch, made = [], made + 1
                if quota is not None and made >= quota:
                    return
        if batch and quota is None:
            yield torch.utils.data.default_collate(batch)


def shuffled(stream, size: int, rng: random.Random):
    """``stream`` through a shuffle buffer of ``size`` items: each output is drawn at random from the buffer."""
    buffer = []
    for item in stream:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


class ShardLoader:
    """What the engine needs of a loader, over a ShardStream: ``len`` (steps of this rank), iteration, ``dataset``
    (its ``len`` is images), ``batch_size`` and a ``sampler`` with ``set_epoch`` / ``set_start`` (the stream itself).
    Workers start anew each epoch, so that they see the epoch and start step."""

    def __init__(self, dataset: ShardStream, cfg: StreamConfig, device: torch.device) -> None:
        dataset = copy.copy(dataset)  # its own epoch and settings: network.py reads the train split twice
        dataset.configure(cfg)
        self.dataset = self.sampler = dataset
        self.batch_size, self.num_workers, self.cfg, self.device = cfg.batch_size, cfg.workers, cfg, device

    def __len__(self) -> int:
        return self.dataset.steps()

    def __iter__(self):
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.cfg.workers,
                            pin_memory=self.device.type == "cuda")
        return iter(loader)


def scan(root: str, splits: tuple[str, ...] = ("train", "val"), hint: str = "", workers: int = 0,
         limit: int | None = None, decode=decode_rgb) -> int:
    """``--check-data`` of a shard folder: decode every sample of ``splits``, print ``unreadable: shard:KEY: why``
    for each bad one (and for a truncated shard) and a summary; 1 if anything is unreadable, else 0."""
    classes, bad, total = read_classes(root), 0, 0
    for split in splits:
        stream = ShardStream(root, split, classes, decode, None)
        for i in range(len(stream.files)):
            notes: list[str] = []
            shard = os.path.basename(stream.files[i])
            for key, members in iter_samples(stream.files[i], notes):
                total += 1
                payload = next((members[e] for e in IMAGE_EXTS if e in members), None)
                try:
                    if payload is None:
                        raise BadImage(f"{shard}:{key}", "no image member")
                    decode(payload, f"{shard}:{key}")
                except BadImage as exc:
                    bad += 1
                    print(f"unreadable: {exc}")
            for note in notes:
                bad += 1
                print(f"unreadable: {note}")
    print(f"=> checked {total} samples in {root}: {bad} unreadable" + (f" ({hint})" if bad and hint else ""),
          flush=True)
    return 1 if bad else 0


def _key_of(member: tarfile.TarInfo) -> tuple[str, str]:
    """``(key, extension)`` of a tar member: the key is its name up to the first dot of its base name."""
    key, _, ext = os.path.basename(member.name).partition(".")
    return os.path.join(os.path.dirname(member.name), key), ext.lower()


def _member_runs(path: str) -> tuple[list[tuple[str, dict[str, tarfile.TarInfo]]], bool]:
    """The file members of one shard grouped in runs of one key, from the headers alone (``r:`` seeks over the
    data), and whether the shard is whole (read to its end-of-archive blocks, no member cut short)."""
    runs: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if member.isfile():
                    key, ext = _key_of(member)
                    if not runs or runs[-1][0] != key:
                        runs.append((key, {}))
                    runs[-1][1][ext] = member
            end = tar.offset
    except (tarfile.TarError, OSError, EOFError):
        return runs, False
    size = os.path.getsize(path)
    cut = any(m.offset_data + m.size > size for _, members in runs for m in members.values())
    return runs, not cut and size >= end + 2 * tarfile.BLOCKSIZE


def index_shard(path: str, classes: int) -> list[tuple[str, int, int, int, str]]:
    """``(key, label, offset, size, extension)`` of each sample of one shard, in order: where its image lies in the
    file (offset -1: it has none), found from the tar headers; only the small ``.cls`` members are read. A truncated or
    damaged shard keeps the whole samples before the damage, and one line names it; a UserError when no sample is
    left, or for a missing ``.cls`` or a label outside the class list (``label_of``)."""
    name = os.path.basename(path)
    runs, whole = _member_runs(path)
    if not whole:
        size = os.path.getsize(path)
        damaged = next((i for i, (_, ms) in enumerate(runs) if any(m.offset_data + m.size > size
                                                                   for m in ms.values())), len(runs) - 1)
        cut = max(0, damaged)
        print(f"=> shard {name}: truncated at {runs[cut][0] if runs else 'its start'}: the damaged rest is skipped",
              flush=True)
        runs = runs[:cut]
    entries = []
    with open(path, "rb") as f:
        for key, members in runs:
            cls = members.get("cls")
            label = label_of(f"{name}:{key}", None if cls is None else os.pread(f.fileno(), cls.size, cls.offset_data),
                             classes)
            ext = next((e for e in IMAGE_EXTS if e in members), "")
            image = members.get(ext)
            entries.append((key, label, -1 if image is None else image.offset_data, 0 if image is None else image.size,
                            ext))
    if not entries:
        raise UserError(f"shard {path} holds no readable sample; remove it or convert again.")
    return entries


class TarImages(Dataset):
    """One split of a shard folder read by random access: ``(image, target, key)`` like
    ``imagefolder.ImageFolderWithPaths`` and ``hfdata.TableImages``, for evaluation and sorting (exact distributed
    splits, results in dataset order).

    ``samples`` is a ``CompactSamples`` of ``(shard.tar:KEY, target)`` in shard and member order; ``encoded(i)`` is
    sample ``i``'s image as stored; ``decode(bytes, key)`` turns it into what ``transform`` takes. Each process
    (DataLoader workers included) opens the shards on first use and reads with ``os.pread``, which moves no shared
    file position, so a descriptor inherited through fork is safe too.
    """

    def __init__(self, root: str, split: str, classes: list[str], decode, transform=None, bad_log=None) -> None:
        self.root, self.split, self.files = root, split, require_shards(root, split)
        self.classes, self.class_to_idx = list(classes), {c: i for i, c in enumerate(classes)}
        entries = [(i, e) for i, path in enumerate(self.files) for e in index_shard(path, len(classes))]
        names = [os.path.basename(path) for path in self.files]
        self.samples = self.imgs = CompactSamples((f"{names[i]}:{e[0]}", e[1]) for i, e in entries)
        self.targets = self.samples.targets
        self._spans = np.array([(i, e[2], e[3]) for i, e in entries], dtype=np.int64)
        self.decode, self.transform, self.bad_log, self.substitute = decode, transform, bad_log, False
        self._open: dict[int, object] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}  # file handles are not sent to workers

    def __del__(self) -> None:
        for f in getattr(self, "_open", {}).values():
            f.close()

    def __len__(self) -> int:
        return len(self.samples)

    def encoded(self, index: int) -> bytes:
        """The image bytes of sample ``index`` as stored (JPEG, PNG, ...); BadImage when they cannot be read."""
        file, offset, size = (int(v) for v in self._spans[index])
        key = self.samples[index][0]
        if offset < 0:
            raise BadImage(key, "no image member")
        try:
            if file not in self._open:
                self._open[file] = open(self.files[file], "rb")
            payload = os.pread(self._open[file].fileno(), size, offset)
        except OSError as exc:
            raise BadImage(key, f"cannot read its shard ({exc.strerror})") from None
        if len(payload) < size:
            raise BadImage(key, "truncated shard")
        return payload

    def __getitem__(self, index: int):

        return unreadable.load_or_skip(self, index, lambda i, key: self.decode(self.encoded(i), key))


def datasets(root: str, fast: bool, train_tf, val_tf, bad_log=None) -> tuple[ShardStream, ShardStream, list[str]]:
    """The train and validation streams of the shard folder ``root`` and its class names."""
    classes, decode = read_classes(root), transforms.decoder(fast)
    return (ShardStream(root, "train", classes, decode, train_tf, bad_log),
            ShardStream(root, "val", classes, decode, val_tf, bad_log), classes)


def found_at(root: str) -> bool:
    """Whether ``root`` holds training or validation shards (``SPLIT_PATTERNS``: ours and the published namings, or
    the split patterns of a ``published.PatternRoot``)."""
    if isinstance(root, published.PatternRoot):
        return bool(root.files("train") or root.files("val"))
    return any(glob.glob(os.path.join(glob.escape(root), pattern))
               for patterns in SPLIT_PATTERNS.values() for pattern in patterns)


def check(root: str) -> None:
    """Refuse a shard folder whose class list cannot be read, before any process starts."""
    read_classes(root)


def split(root: str, name: str, transform, fast: bool) -> Dataset:
    """One split of the shard folder, read by random access (``TarImages``), for evaluation or sorting."""
    return TarImages(root, name, read_classes(root), transforms.decoder(fast), transform)


def loaders(train_set: ShardStream, val_set: ShardStream, batch_size: int, workers: int, ctx,
            seed: int | None = None) -> tuple[ShardLoader, ShardLoader]:
    """Training and validation streams of this rank: shards dealt to ranks, then to loader workers. Fewer training
    shards than processes is refused here, on every rank alike, before any step: a rank without a shard would have
    no batch to give while the others wait for it."""
    if len(train_set.files) < ctx.world_size:
        raise UserError(f"{train_set.root!r} has {len(train_set.files)} training shards for {ctx.world_size} "
                        "processes; each process reads whole shards, so start at most "
                        f"{len(train_set.files)} processes or write more, smaller shards (python -m "
                        "common.data.convert --max-shard-mb).")
    cfg = StreamConfig(batch_size, ctx.world_size, ctx.rank, workers, seed=seed)
    val_cfg = dataclasses.replace(cfg, train=False)
    return ShardLoader(train_set, cfg, ctx.device), ShardLoader(val_set, val_cfg, ctx.device)


def ordered_loader(dataset: ShardStream, batch_size: int, workers: int, device: torch.device) -> ShardLoader:
    """Every sample of ``dataset`` once, in shard order, in one process."""
    return ShardLoader(dataset, StreamConfig(batch_size, workers=workers, train=False), device)
