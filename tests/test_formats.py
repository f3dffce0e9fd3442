"""Hugging Face parquet / save_to_disk datasets as --data, and the converter between formats (common.data.convert)."""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import sys
import tarfile

import pytest
import torch

from common.data import (
    convert,
    formats,
    hfdata,
    imagefolder,
    loaders,
    transforms,
    unreadable,
)
from conftest import SMALL, make_image_folder, refusal
from inprocess import call_main

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from common.errors import UserError  # noqa: E402


def datasets_at(data: str):
    """The training and validation sets that a training run reads from ``data``, with default settings."""
    return loaders.build_datasets(loaders.DataConfig(formats.resolve_source(data)))


def usable(data: str) -> None:
    """What a training script does with ``--data`` before any process starts: resolve it, refuse what no reader
    can use."""
    formats.check_source(formats.resolve_source(data))


def run_convert(src: str, out: str, to: str, *flags: str) -> dict:
    return convert.main(convert.get_args_parser().parse_args([src, out, "--to", to, *flags]))


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> str:
    """4 classes, 6 train and 3 val JPEGs each (JPEG: the bytes path of the uint8 decoder is exercised)."""
    return make_image_folder(str(tmp_path_factory.mktemp("jpegs")), 6, 3, ext="jpg")


@pytest.fixture(scope="module")
def parquet_copy(jpeg_folder, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("pq") / "pq")
    run_convert(jpeg_folder, out, "parquet", "--max-shard-mb", "0.01")  # several files, several row groups
    return out


def folder_bytes(root: str) -> list[tuple[str, str, str]]:
    """(split, class, sha1 of the bytes) of every image under root/{train,val}, sorted."""
    return sorted((split, os.path.basename(os.path.dirname(p)), hashlib.sha1(open(p, "rb").read()).hexdigest())
                  for split in ("train", "val") for p in glob.glob(os.path.join(root, split, "*", "*")))


@pytest.mark.slow
def test_two_seeded_epochs_on_folder_and_parquet_end_with_identical_weights(tmp_path):
    folder = make_image_folder(str(tmp_path / "folder"), 8, 1, classes=((200, 30, 30), (30, 30, 200)), ext="jpg")
    parquet = str(tmp_path / "parquet")
    run_convert(folder, parquet, "parquet", "--max-shard-mb", "0.005")  # several files and row groups
    weights, tiny = [], ["--train-crop-size", "16", "--val-resize-size", "16", "--val-crop-size", "16"]
    for source in (folder, parquet):
        out = str(tmp_path / f"run_{os.path.basename(source)}")
        _, printed = call_main("train_main.py", source, "-a", "ghostnet", "--width-mult", "0.25", "--epochs", "2",
                               "-b", "8", "--lr", "0.01", "--seed", "0", "--no-amp", "--output-dir", out, *SMALL, *tiny)
        assert ("(Hugging Face parquet)" if source == parquet else "(ImageFolder)") in printed
        weights.append(torch.load(os.path.join(out, "checkpoint.pth.tar"), weights_only=False)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_parquet_has_the_hub_layout_class_names_and_folder_order(jpeg_folder, parquet_copy):
    assert len(glob.glob(os.path.join(parquet_copy, "data", "train-*.parquet"))) > 1
    schema = pq.read_schema(glob.glob(os.path.join(parquet_copy, "data", "validation-*.parquet"))[0])
    assert json.loads(schema.metadata[b"huggingface"])["info"]["features"]["label"]["names"] == [
        f"class{i}" for i in range(4)]
    train, val, classes = loaders.build_datasets(loaders.DataConfig(formats.resolve_source(parquet_copy), fast=True))
    folder = imagefolder.image_folder(os.path.join(jpeg_folder, "train"), None)
    assert classes == folder.classes and train.targets.tolist() == folder.targets.tolist()
    index = len(train) - 1  # the last row of the last file, read after rows of other row groups
    _image, target, key = train.dataset[index] if hasattr(train, "dataset") else train[index]
    assert key.startswith("data/train-") and key.endswith(":" + key.rsplit(":", 1)[1])
    path, folder_target = folder.samples[index]
    assert target == folder_target and train.encoded(index) == open(path, "rb").read()
    assert len(val) == 12


def write_parquet(path: str, images: list[bytes], labels: list[int] | None, names=None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    columns = {"image": [{"bytes": b, "path": None} for b in images]}
    if labels is not None:
        columns["label"] = labels
    meta = None
    if names:
        meta = {"huggingface": json.dumps({"info": {"features": {"label": {"_type": "ClassLabel", "names": names}}}})}
    pq.write_table(pa.table(columns).replace_schema_metadata(meta), path, row_group_size=2)


def jpeg(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 16), color).save(buf, "JPEG")
    return buf.getvalue()


def test_a_corrupt_row_is_skipped_and_named_by_file_and_row(tmp_path):
    good = [jpeg((10 * i, 0, 0)) for i in range(5)]
    rows = good[:3] + [good[3][:60]] + good[4:]  # row 3: truncated JPEG
    write_parquet(str(tmp_path / "data" / "train-00000.parquet"), rows, [0, 1, 0, 1, 0], ["a", "b"])
    write_parquet(str(tmp_path / "data" / "validation-00000.parquet"), good[:2], [0, 1], ["a", "b"])
    log = unreadable.BadImageLog("skip")
    cfg = loaders.DataConfig(formats.resolve_source(str(tmp_path)), fast=True, bad_log=log, train_crop_size=8)
    train, _, classes = loaders.build_datasets(cfg)
    assert classes == ["a", "b"]
    _, target, key = train[3]  # replaced by the next readable row, as for a folder
    assert (key, target) == ("data/train-00000.parquet:4", 0)
    assert log.drain() == [("data/train-00000.parquet:3", "truncated JPEG")]
    assert hfdata.scan(str(tmp_path), ("train", "val")) == 1


def test_save_to_disk_arrow_folder_reads_as_the_same_rows(tmp_path, parquet_copy):
    root = tmp_path / "saved"
    for split, hub in (("train", "train"), ("validation", "validation")):
        table = pa.concat_tables(pq.read_table(f) for f in sorted(glob.glob(f"{parquet_copy}/data/{hub}-*.parquet")))
        (root / split).mkdir(parents=True)
        arrow = str(root / split / "data-00000-of-00001.arrow")
        with pa.OSFile(arrow, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=5)
        state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}
        (root / split / "state.json").write_text(json.dumps(state))
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation"]}))
    assert formats.resolve_source(str(root)) == formats.DataSource("arrow", str(root))
    arrow, _, classes = loaders.build_datasets(loaders.DataConfig(formats.resolve_source(str(root))))
    table, _, same = loaders.build_datasets(loaders.DataConfig(formats.resolve_source(parquet_copy)))
    assert classes == same and arrow.targets.tolist() == table.targets.tolist()
    assert all(arrow.encoded(i) == table.encoded(i) for i in range(len(arrow)))


@pytest.mark.slow
def test_test_py_and_the_sorter_read_parquet_as_they_read_the_folder(jpeg_folder, parquet_copy, trained_ckpt,
                                                                      tmp_path):
    flags = ["--ckpt", trained_ckpt, "-j", "0", "--val-resize-size", "32", "--val-crop-size", "32"]
    on_folder, _ = call_main("test.py", *flags, "--data", jpeg_folder, "--output-dir", str(tmp_path / "a"))
    on_parquet, printed = call_main("test.py", *flags, "--data", parquet_copy, "--output-dir", str(tmp_path / "b"))
    assert "(Hugging Face parquet)" in printed
    assert (on_parquet["top1"], on_parquet["loss"], on_parquet["images"]) == (
        on_folder["top1"], on_folder["loss"], on_folder["images"])
    out = tmp_path / "sorted"
    sorted_ = call_main("classify_test_data.py", *flags, "--data", parquet_copy, "--out", str(out))[0]
    assert sorted_["placed"] == 12
    written = sorted(glob.glob(str(out / "*" / "*" / "validation-*.jpg")))
    assert len(written) == 12
    val_bytes = sorted(h for split, _, h in folder_bytes(jpeg_folder) if split == "val")
    assert sorted(hashlib.sha1(open(p, "rb").read()).hexdigest() for p in written) == val_bytes


def test_convert_folder_to_parquet_and_back_keeps_every_image_and_label(jpeg_folder, parquet_copy, tmp_path):
    run_convert(parquet_copy, str(tmp_path / "back"), "folder")
    assert folder_bytes(str(tmp_path / "back")) == folder_bytes(jpeg_folder)
    manifest = json.loads((tmp_path / "back" / "manifest.json").read_text())
    assert manifest["images"] == {"train": 24, "val": 12}


def test_shards_hold_every_image_once_shuffled_with_labels_and_class_list(jpeg_folder, tmp_path):
    out = tmp_path / "shards"
    run_convert(jpeg_folder, str(out), "shards", "--max-shard-mb", "0.02")
    assert (out / "classes.txt").read_text().split() == [f"class{i}" for i in range(4)]
    manifest = json.loads((out / "manifest.json").read_text())
    got, train_labels = [], []
    for entry in manifest["files"]:
        path = out / entry["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, payload in members.items():
            if name.endswith(".jpg"):
                label = int(members[name[:-4] + ".cls"])
                got.append((entry["split"], f"class{label}", hashlib.sha1(payload).hexdigest()))
                train_labels += [label] if entry["split"] == "train" else []
    assert sorted(got) == folder_bytes(jpeg_folder)
    assert train_labels != sorted(train_labels)  # shuffled once, not in class order
    run_convert(str(out), str(tmp_path / "back"), "folder")
    assert folder_bytes(str(tmp_path / "back")) == folder_bytes(jpeg_folder)


def test_convert_resumes_after_an_interruption_without_rewriting_finished_files(jpeg_folder, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    run_convert(jpeg_folder, str(whole), "parquet", "--max-shard-mb", "0.01")
    calls = []
    real = convert.parquet_bytes

    def interrupted(rows, classes):
        calls.append(len(rows))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(rows, classes)

    monkeypatch.setattr(convert, "parquet_bytes", interrupted)
    part = tmp_path / "part"
    with pytest.raises(SystemExit):  # Ctrl+C: exit status 130
        run_convert(jpeg_folder, str(part), "parquet", "--max-shard-mb", "0.01")
    assert not (part / "manifest.json").exists() and (part / convert.STATE_NAME).exists()
    monkeypatch.setattr(convert, "parquet_bytes", real)
    written = []
    monkeypatch.setattr(convert, "parquet_bytes", lambda rows, classes: written.append(1) or real(rows, classes))
    run_convert(jpeg_folder, str(part), "parquet", "--max-shard-mb", "0.01")
    first, second = (json.loads((d / "manifest.json").read_text()) for d in (whole, part))
    assert first == second and len(written) == len(first["files"]) - 2
    assert not (part / convert.STATE_NAME).exists()
    assert sorted(os.listdir(part / "data")) == sorted(os.listdir(whole / "data"))


def test_bad_inputs_are_refused_in_one_line(tmp_path, jpeg_folder, parquet_copy, monkeypatch):
    nolabel = tmp_path / "nolabel"
    write_parquet(str(nolabel / "data" / "train-00000.parquet"), [jpeg((1, 2, 3))], None)
    write_parquet(str(nolabel / "data" / "validation-00000.parquet"), [jpeg((1, 2, 3))], None)
    assert "no 'label' column" in refusal(datasets_at, str(nolabel))
    mixed = make_image_folder(str(tmp_path / "mixed"), 1, 1)
    write_parquet(os.path.join(mixed, "data", "train-00000.parquet"), [jpeg((1, 2, 3))], [0])
    assert "mixes dataset formats" in refusal(usable, mixed)
    assert formats.resolve_source("folder:" + mixed) == formats.DataSource("folder", mixed)
    assert "holds no Hugging Face" in refusal(usable, "hf:" + jpeg_folder)
    outside = tmp_path / "labels"
    write_parquet(str(outside / "data" / "train-00000.parquet"), [jpeg((1, 2, 3))], [2], ["a", "b"])
    write_parquet(str(outside / "data" / "validation-00000.parquet"), [jpeg((1, 2, 3))], [0], ["a", "b"])
    assert "outside the 2 classes" in refusal(datasets_at, str(outside))
    assert "is SRC" in refusal(run_convert, jpeg_folder, jpeg_folder, "parquet")  # OUT = SRC: refused as such
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert "pip install pyarrow" in refusal(usable, parquet_copy)


def test_the_uint8_decoder_of_bytes_matches_the_one_of_files(jpeg_folder):
    path = glob.glob(os.path.join(jpeg_folder, "val", "*", "*.jpg"))[0]
    assert torch.equal(transforms.decode_uint8(open(path, "rb").read(), path), transforms.load_uint8(path))
    with pytest.raises(Exception, match="row 3: truncated JPEG"):
        transforms.decode_uint8(open(path, "rb").read()[:80], "row 3")
    assert isinstance(hfdata.row_name("data/train-00001.parquet:7"), str)
    with pytest.raises(UserError):
        formats.resolve_source(str(os.path.join(jpeg_folder, "missing")))
