"""Metadata and labels read from disk are checked before any work starts: one line naming the file, the field and
what was expected (common.schema), never a traceback or a silently wrong answer."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from common import schema
from common.data import convert, formats, hfdata, loaders, shards, valprep
from common.errors import UserError
from common.limits import MAX_PIXELS
from common.models import checkpoint, onnx_model, preprocess
from conftest import make_image_folder
from inprocess import load_script
from test_formats import jpeg, write_parquet

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def refused(call, *args) -> str:
    with pytest.raises(UserError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_schema_names_the_file_the_field_and_what_was_expected(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"files": [{"name": "a.tar", "images": 3}, {"name": "b.tar", "images": -5}]}))
    message = refused(schema.load_json, str(path), "convert again", {"files": [{"name": str, "images": schema.Int()}]})
    assert message == (f"{path}: field 'files[1].images' is -5, expected an integer from 0 to {schema.MAX_COUNT}; "
                       "convert again.")
    assert "field 'files' is missing" in refused(schema.check, {}, {"files": list}, "f.json", "fix")
    assert "is not valid JSON" in refused(schema.parse_json, b"{\"a\": NaN}", "f.json", "fix")
    assert "its content is [], expected an object" in refused(schema.check, [], {"a?": int}, "f.json", "fix")
    assert schema.check({"b": 1.5}, {"a?": int, "b": float}, "f.json", "fix") == {"b": 1.5}


def test_repeated_class_names_are_refused_with_the_name(tmp_path):
    assert "names the class 'cat' twice" in refused(schema.class_names, ["cat", "dog", "cat"], "x", "fix")
    data = tmp_path / "hf"
    write_parquet(str(data / "data" / "train-00000.parquet"), [jpeg((0, 0, 0))] * 2, [0, 1], ["cat", "cat"])
    write_parquet(str(data / "data" / "validation-00000.parquet"), [jpeg((0, 0, 0))] * 2, [0, 1], ["cat", "cat"])
    assert "names the class 'cat' twice" in refused(hfdata.class_names, str(data))


def write_split_pair(root, train_names, val_names, train_labels=(0, 1), val_labels=(0, 1)):
    image = jpeg((90, 90, 90))
    write_parquet(str(root / "data" / "train-00000.parquet"), [image] * len(train_labels), list(train_labels),
                  train_names)
    write_parquet(str(root / "data" / "validation-00000.parquet"), [image] * len(val_labels), list(val_labels),
                  val_names)
    return str(root)


def test_splits_that_name_their_classes_differently_are_refused(tmp_path):
    root = write_split_pair(tmp_path, ["cat", "dog"], ["dog", "cat"])
    message = refused(hfdata.class_names, root)
    assert "label 0 is 'cat'" in message and "'dog'" in message


@pytest.mark.parametrize(("labels", "words"), [
    (["cat", "dog", "cat"], "holds strings where integer class indices are expected (3 of 3 rows, the first row 0"),
    ([0, None, 1], "holds nulls where integer class indices are expected (1 of 3 rows, the first row 1: None)"),
    ([0.0, 1.5, float("nan")], "holds double values where integer class indices are expected (2 of 3 rows, the "
                               "first row 1: 1.5)"),
])
def test_label_columns_that_are_not_integers_are_refused_when_the_dataset_opens(tmp_path, labels, words):
    root = write_split_pair(tmp_path, None, None, train_labels=labels)
    message = refused(loaders.build_datasets, loaders.DataConfig(formats.resolve_source(root)))
    assert "train-00000.parquet: its 'label' column " + words in message


def test_whole_float_labels_are_read_as_their_integers(tmp_path):
    root = write_split_pair(tmp_path, None, None, train_labels=[0.0, 1.0, 1.0])
    train, _, classes = loaders.build_datasets(loaders.DataConfig(formats.resolve_source(root)))
    assert classes == ["0", "1"] and list(train.targets) == [0, 1, 1]


@pytest.mark.parametrize("meta", ["not json", "[1, 2]", json.dumps({"info": []}),
                                  json.dumps({"info": {"features": {"label": {"names": "cat"}}}})])
def test_damaged_hugging_face_schema_metadata_is_one_line(tmp_path, meta):
    root = write_split_pair(tmp_path, None, None)
    path = os.path.join(root, "data", "train-00000.parquet")
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({"huggingface": meta}), path)
    assert refused(hfdata.class_names, root).startswith(f"{path} (")


@pytest.mark.parametrize("state", ["{", json.dumps({"_data_files": {"filename": "x"}}),
                                   json.dumps({"_data_files": [{"name": "data-0.arrow"}]})])
def test_a_damaged_save_to_disk_state_json_is_one_line(tmp_path, state):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "state.json").write_text(state)
    assert str(tmp_path / "train" / "state.json") in refused(hfdata.arrow_files, str(tmp_path), "train")


def test_a_zero_byte_checkpoint_is_named_in_one_line(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    assert "is empty (0 bytes)" in refused(checkpoint.load_file, str(path))


def shard_folder(tmp_path, sizes: list[int]) -> str:
    from test_shards import write_shards

    write_shards(str(tmp_path), "train", sizes)
    write_shards(str(tmp_path), "val", [2])
    return str(tmp_path)


def test_fewer_training_shards_than_processes_is_refused_before_the_first_step(tmp_path):
    root = shard_folder(tmp_path, [6])
    train, val, _ = loaders.build_datasets(loaders.DataConfig(formats.resolve_source(root)))
    for rank in (0, 1):  # every rank refuses alike: none is left waiting
        ctx = SimpleNamespace(world_size=2, rank=rank, device=torch.device("cpu"))
        assert "has 1 training shards for 2 processes" in refused(shards.loaders, train, val, 2, 0, ctx)
    ctx = SimpleNamespace(world_size=1, rank=0, device=torch.device("cpu"))
    assert len(shards.loaders(train, val, 2, 0, ctx)[0]) == 3


def test_a_manifest_count_that_its_shard_cannot_hold_is_counted_from_the_headers(tmp_path, capsys):
    root = shard_folder(tmp_path, [4, 4])
    size = os.path.getsize(os.path.join(root, "train-000000.tar"))
    files = [{"name": "train-000000.tar", "images": 1000, "bytes": size},  # the 1,000 claimed for 4
             {"name": "train-000001.tar", "images": 4, "bytes": size}]
    (tmp_path / "manifest.json").write_text(json.dumps({"files": files}))
    train, _, _ = loaders.build_datasets(loaders.DataConfig(formats.resolve_source(root)))
    assert train.counts == [4, 4]
    assert "do not describe 1 of the shards (e.g. train-000000.tar" in capsys.readouterr().out


@pytest.mark.parametrize("manifest", ["[", json.dumps({"files": {"a": 1}}),
                                      json.dumps({"files": [{"name": "train-000000.tar", "images": -1}]})])
def test_a_damaged_shard_manifest_is_one_line(tmp_path, manifest):
    root = shard_folder(tmp_path, [4])
    (tmp_path / "manifest.json").write_text(manifest)
    message = refused(loaders.build_datasets, loaders.DataConfig(formats.resolve_source(root)))
    assert message.startswith(str(tmp_path / "manifest.json"))


def test_a_class_list_that_repeats_a_name_is_refused(tmp_path):
    root = shard_folder(tmp_path, [4])
    (tmp_path / "classes.txt").write_text("c0\nc1\nc0\n")
    assert "names the class 'c0' twice" in refused(shards.read_classes, root)


def onnx_file(path, batch, size, flatten: bool = False, props: dict | None = None) -> str:
    """A tiny ONNX classifier of 3 classes: the mean colour of an (N, 3, H, W) batch (``flatten``: a matrix
    product of all pixels, which runs at one image size only)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, size, size])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])
    if flatten:
        weight = numpy_helper.from_array(np.ones((3 * 8 * 8, 3), np.float32), "w")
        nodes = [helper.make_node("Flatten", ["image"], ["flat"]),
                 helper.make_node("MatMul", ["flat", "w"], ["logits"])]
        init = [weight]
    else:
        nodes = [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
                 helper.make_node("Flatten", ["pooled"], ["logits"])]
        init = []
    model = helper.make_model(helper.make_graph(nodes, "g", [image], [logits], init),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (props or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return str(path)


def test_an_onnx_model_of_fixed_batch_one_runs_any_batch_size(tmp_path):
    path = onnx_file(tmp_path / "b1.onnx", 1, 8)
    model, _, classes = onnx_model.load_onnx(path, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    images = torch.rand(5, 3, 8, 8)
    assert classes == 3 and model.fixed_batch == 1
    assert torch.allclose(model(images), images.mean((2, 3)), atol=1e-6)
    model.check_run(8)


def test_an_onnx_model_that_runs_at_one_size_only_is_refused_before_the_first_batch(tmp_path):
    model, _, _ = onnx_model.load_onnx(onnx_file(tmp_path / "one.onnx", "N", "S", flatten=True), (0.0,) * 3, (1.0,) * 3)
    model.check_run(8)
    message = refused(model.check_run, 16)
    assert "cannot run on a batch of shape (1, 3, 16, 16)" in message and "--val-crop-size" in message


@pytest.mark.parametrize(("key", "value"), [("mean", "[0.5, 0.5]"), ("std", '"0.2"'), ("classes", '["a", "a", "b"]'),
                                            ("classes", "{"), ("std", "[0.2, 0.2, 0]")])
def test_damaged_onnx_metadata_is_one_line_naming_the_entry(tmp_path, key, value):
    path = onnx_file(tmp_path / "m.onnx", "N", 8, props={key: value})
    message = refused(onnx_model.load_onnx, path, (0.0,) * 3, (1.0,) * 3)
    assert message.startswith(f"{path}: its metadata entry {key!r}")


def test_a_crop_pct_that_sends_the_resize_past_the_pixel_limit_is_refused():
    flags = preprocess.EvalFlags(resize=204800, crop=2048, resize_source="--crop-pct 0.01")
    message = refused(preprocess.resolve, flags)
    assert message.startswith("the eval resize comes to 204800 px (from --crop-pct 0.01, for a 2048 px crop), "
                              f"beyond the limit of {MAX_PIXELS} px")


def test_export_refuses_a_check_batch_beyond_its_bound(tmp_path):
    export = load_script("export.py")
    args = export.get_args_parser().parse_args(["--pretrained", "-a", "resnet18", "--output",
                                                str(tmp_path / "m.onnx"), "-b", "100000000"])
    assert "at most 256 images" in refused(export.check_args, args)
    assert "at most 256)" in export.get_args_parser().format_help().replace("\n", " ").replace("  ", " ")


def test_export_leaves_an_unreadable_check_image_out_in_one_line(tmp_path, capsys):
    root = make_image_folder(str(tmp_path / "data"), 1, 2, classes=((200, 0, 0), (0, 200, 0)))
    (tmp_path / "data" / "val" / "class0" / "img0.png").write_bytes(b"not a png")
    pixels = load_script("export.py").data_pixels(root, 4, preprocess.EvalPreprocess(32, 32), 0)
    assert pixels.shape == (3, 3, 32, 32)
    assert "1 of the first 4 images of --data cannot be read" in capsys.readouterr().out


@pytest.mark.parametrize("state", ["", "[]", json.dumps({"fingerprint": "fp", "files": [{"name": "a.tar"}]}),
                                   json.dumps({"fingerprint": "fp", "files": [
                                       {"name": "a.tar", "sha256": "0", "split": "train", "images": 2, "start": -1,
                                        "end": 1}]})])
def test_a_damaged_conversion_state_is_one_line_and_left_as_it_is(tmp_path, state):
    path = tmp_path / convert.STATE_NAME
    path.write_text(state)
    assert refused(convert.load_state, str(tmp_path), "fp").startswith(str(path))
    assert path.read_text() == state


@pytest.mark.parametrize("manifest", ["file,class\nILSVRC2012_val_00000001.JPEG\n", "name,wnid\na,b\n",
                                      b"file,class\n\xff\xfe,x\n"])
def test_a_damaged_valprep_manifest_is_one_line(tmp_path, manifest):
    path = tmp_path / valprep.MANIFEST_NAME
    path.write_bytes(manifest if isinstance(manifest, bytes) else manifest.encode())
    assert refused(valprep.read_manifest, str(tmp_path)).startswith(str(path))
