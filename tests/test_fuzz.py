"""Property-based fuzzing of every metadata reader and binary input (Hypothesis).

Each reader gets mutations of what the project itself writes (a key dropped, a value of another type, NaN,
negative numbers, a list nested where an object was, the text cut short) and random or truncated bytes. Whatever
it gets, it either reads the input or raises the project's UserError with one line; the input file is left
byte for byte as it was, and nothing else is written beside it.

The examples per reader come from the Hypothesis profile (tests/conftest.py): ``fuzz-quick`` in the suite;
``HYPOTHESIS_PROFILE=fuzz-thorough python -m pytest tests/test_fuzz.py`` (or ``--hypothesis-profile fuzz-thorough``)
runs 50 times as many.
"""
from __future__ import annotations

import copy
import io
import json
import os
import tarfile
import tempfile

import pytest
import torch

pytest.importorskip("hypothesis")  # a test-only dependency: pip install hypothesis (CI installs it)
from hypothesis import given
from hypothesis import strategies as st

from common import schema
from common.data import convert, hfdata, shards, valprep
from common.errors import UserError
from common.models import checkpoint, onnx_model

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True),
                    st.text(max_size=8))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=8)


def paths_in(value, here=()) -> list[tuple]:
    """Every path to a value inside nested dicts and lists (the root included)."""
    found = [here]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        found += paths_in(inner, (*here, key))
    return found


@st.composite
def mutated(draw, base) -> bytes:
    """``base`` as JSON bytes after one mutation: a value dropped, replaced (another type, NaN, a negative number),
    nested in a list; sometimes the text is then cut short."""
    value = copy.deepcopy(base)
    path = draw(st.sampled_from(paths_in(value)))
    how = draw(st.sampled_from(["drop", "replace", "nest", "negative"]))
    new = draw(JSON_VALUES) if how == "replace" else -1 if how == "negative" else None
    if not path:
        value = [value] if how == "nest" else new
    else:
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        if how == "drop":
            del parent[path[-1]]
        else:
            parent[path[-1]] = [parent[path[-1]]] if how == "nest" else new
    text = json.dumps(value).encode()
    cut = draw(st.one_of(st.none(), st.integers(0, max(0, len(text) - 1))))
    return text if cut is None else text[:cut]


def snapshot(folder: str) -> dict[str, bytes]:
    out = {}
    for base, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(base, name), "rb") as f:
                out[os.path.relpath(os.path.join(base, name), folder)] = f.read()
    return out


def reads_or_refuses(folder: str, call, *args):
    """``call(*args)``'s result, or None when it raised a one-line UserError; the folder is unchanged either way."""
    before = snapshot(folder)
    try:
        result = call(*args)
    except UserError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message
        result = None
    assert snapshot(folder) == before
    return result


def write_tar(path: str, samples: int) -> None:
    with tarfile.open(path, "w") as tar:
        for j in range(samples):
            for ext, payload in (("jpg", b"image%d" % j), ("cls", str(j % 3).encode())):
                info = tarfile.TarInfo(f"s{j}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


@given(data=st.data())
def test_shard_manifest(data):
    with tempfile.TemporaryDirectory() as root:
        shard = os.path.join(root, "train-000000.tar")
        write_tar(shard, 4)
        size = os.path.getsize(shard)
        text = data.draw(mutated({"files": [{"name": "train-000000.tar", "images": 4, "bytes": size}]}))
        with open(os.path.join(root, shards.MANIFEST_NAME), "wb") as f:
            f.write(text)
        counts = reads_or_refuses(root, shards.shard_counts, root, [shard], 3)
        # whatever the manifest claims, no count beyond what the file can hold is believed
        assert counts is None or 0 < counts[0] * shards.MIN_SAMPLE_BYTES <= size


@given(cut=st.integers(0, 4 * 2048), noise=st.binary(max_size=64))
def test_truncated_or_damaged_tar_shard(cut, noise):
    with tempfile.TemporaryDirectory() as root:
        shard = os.path.join(root, "train-000000.tar")
        write_tar(shard, 4)
        with open(shard, "rb") as f:
            whole = f.read()
        with open(shard, "wb") as f:
            f.write(whole[:cut] + noise)
        entries = reads_or_refuses(root, shards.index_shard, shard, 3)
        assert entries is None or [e[0] for e in entries] == [f"s{j}" for j in range(len(entries))]


HF_FEATURES = {"info": {"features": {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel",
                                                                             "names": ["a", "b"]}}}}


def write_parquet(path: str, meta: bytes | None, labels=(0, 1)) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.table({"image": [{"bytes": b"x", "path": None}] * len(labels), "label": list(labels)})
    pq.write_table(table.replace_schema_metadata(None if meta is None else {"huggingface": meta}), path)


@given(data=st.data())
def test_hugging_face_schema_metadata(data):
    with tempfile.TemporaryDirectory() as root:
        write_parquet(os.path.join(root, "data", "train-00000.parquet"), data.draw(mutated(HF_FEATURES)))
        write_parquet(os.path.join(root, "data", "validation-00000.parquet"), json.dumps(HF_FEATURES).encode())
        names = reads_or_refuses(root, hfdata.class_names, root)
        assert names is None or names == ["a", "b"]


@given(cut=st.integers(0, 2000), labels=st.lists(st.one_of(st.integers(-3, 5), st.none()), min_size=1, max_size=4))
def test_truncated_parquet_and_odd_labels(cut, labels):
    with tempfile.TemporaryDirectory() as root:
        train = os.path.join(root, "data", "train-00000.parquet")
        write_parquet(train, json.dumps(HF_FEATURES).encode(), labels)
        with open(train, "rb") as f:
            whole = f.read()
        with open(train, "wb") as f:
            f.write(whole[:cut])
        write_parquet(os.path.join(root, "data", "validation-00000.parquet"), json.dumps(HF_FEATURES).encode())
        dataset = reads_or_refuses(root, hfdata.TableImages, root, "train", ["a", "b"], None)
        assert dataset is None or (cut >= len(whole) and all(0 <= t < 2 for t in dataset.targets))


@given(data=st.data())
def test_save_to_disk_state_json(data):
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "train"))
        with open(os.path.join(root, "train", "state.json"), "wb") as f:
            f.write(data.draw(mutated({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]})))
        found = reads_or_refuses(root, hfdata.arrow_files, root, "train")
        assert found is None or all(isinstance(p, str) for p in found)


@given(data=st.data())
def test_converter_resume_state(data):
    entry = {"name": "train-000000.tar", "split": "train", "images": 4, "bytes": 10, "sha256": "0" * 64, "start": 0,
             "end": 4}
    with tempfile.TemporaryDirectory() as out:
        with open(os.path.join(out, convert.STATE_NAME), "wb") as f:
            f.write(data.draw(mutated({"fingerprint": "fp", "files": [entry]})))
        state = reads_or_refuses(out, convert.load_state, out, "fp")
        assert state is None or state.done == []  # the listed file is absent, so nothing counts as done


@given(text=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_valprep_manifest(text):
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, valprep.MANIFEST_NAME), "wb") as f:
            f.write(text)
        rows = reads_or_refuses(folder, valprep.read_manifest, folder)
        assert rows is None or all(isinstance(a, str) and a and isinstance(b, str) and b for a, b in rows)


@given(data=st.data())
def test_onnx_metadata(data):
    good = {"classes": ["a", "b"], "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "input_shape": [1, 3, 8, 8]}
    key = data.draw(st.sampled_from([*good, "val_crop_size", "val_resize_size"]))
    value = (data.draw(mutated(good[key])).decode("utf-8", "replace") if key in good
             else data.draw(st.text(max_size=8)))
    with tempfile.TemporaryDirectory() as folder:
        meta = reads_or_refuses(folder, onnx_model.decode_metadata, {key: value}, "m.onnx")
        assert meta is None or key not in onnx_model.JSON_KEYS or isinstance(meta[key], list)


CHECKPOINT = {"epoch": 2, "step": 0, "arch": "resnet18", "best_acc1": 50.0, "classes": ["a", "b"],
              "args": {"width_mult": 1.0, "val_crop_size": 224}, "scheduler": {}, "best_weights": "raw",
              "optimizer": {"state": {}, "param_groups": [{"params": [0]}]}}


@given(data=st.data())
def test_checkpoint_files(data):
    """Random bytes, a truncated checkpoint, or a checkpoint whose fields were mutated, loaded as --ckpt is."""
    kind = data.draw(st.sampled_from(["random", "truncated", "fields"]))
    buffer = io.BytesIO()
    torch.save({**CHECKPOINT, "state_dict": {"w": torch.zeros(2)}}, buffer)
    whole = buffer.getvalue()
    if kind == "random":
        payload = data.draw(st.binary(max_size=300))
    elif kind == "truncated":
        payload = whole[:data.draw(st.integers(0, len(whole) - 1))]
    else:
        text = data.draw(mutated(CHECKPOINT))
        try:
            fields = json.loads(text)
        except ValueError:
            fields = None
        buffer = io.BytesIO()
        torch.save({"state_dict": {"w": torch.zeros(2)}, **(fields if isinstance(fields, dict) else {})}, buffer)
        payload = buffer.getvalue()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "x.pth")
        with open(path, "wb") as f:
            f.write(payload)
        reads_or_refuses(folder, lambda: checkpoint.checked(checkpoint.load_file(path), path))


@given(payload=st.one_of(st.binary(max_size=300), st.sampled_from([b"", b"\x08\x07", b"{}"])))
def test_random_bytes_as_onnx_and_json(payload):
    pytest.importorskip("onnxruntime")
    with tempfile.TemporaryDirectory() as folder:
        model, text = os.path.join(folder, "m.onnx"), os.path.join(folder, "m.json")
        for path in (model, text):
            with open(path, "wb") as f:
                f.write(payload)
        reads_or_refuses(folder, onnx_model.load_onnx, model, (0.0,) * 3, (1.0,) * 3)
        reads_or_refuses(folder, schema.load_json, text, "fix it", {"files": [{"name": str}]})
