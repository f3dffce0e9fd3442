"""export.py --int8: ONNX Runtime static quantization checked in the graph, against fp32 and through test.py.

A module fixture makes three int8 files at 32 px from 16 calibration images: GhostNet's head trained by network.py
(6 epochs: 100% on the val JPEGs; calibrated on --data's training split, top-1 measured on its val split), ResNet-18
from a bare state_dict and MobileNetV3-Small (hard-swish, squeeze-excitation) from ImageNet weights (random, in the
hub cache), both calibrated on --calib-data without --data (agreement measured on generated images). The tests share
them.

    python -m pytest tests/test_int8.py -q
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from common.data import imagefolder, transforms
from common.models import factory, loading, onnx_model, preprocess
from common.predict import quantize
from conftest import SMALL, make_image_folder, random_state_dict, refusal
from inprocess import call_main, load_script

pytest.importorskip("onnxruntime")
CLASSES = ["class0", "class1", "class2", "class3"]
SIZE = ["--val-resize-size", "36", "--val-crop-size", "32"]
CALIB = ["--int8", "--calib-images", "16", "-j", "0"]
# The share of images on which int8 and fp32 predict the same class (measured: 100, 93.75, 56.25). GhostNet's head is
# trained (100% on the val JPEGs); the others have random weights at 32 px, whose logits sit close together, so int8
# rounding flips near ties: MobileNetV3-Small's 1000 random classes the most.
AGREEMENT = {"ghostnet": 95.0, "resnet18": 80.0, "mobilenet": 50.0}


@pytest.fixture(scope="module")
def int8(jpegs, tmp_path_factory) -> dict:
    """The three int8 exports (see the module docstring) and their sources."""
    work = tmp_path_factory.mktemp("int8")
    probe = str(work / "probe")
    backbone = random_state_dict("ghostnet", str(work / "ghostnet.pth"))
    call_main("network.py", jpegs, "-a", "ghostnet", "--weights", backbone, "--epochs", "6", "-b", "16",
              "--lr", "0.5", "--seed", "0", "--output-dir", probe, *SMALL)
    out = {"ghostnet_ckpt": os.path.join(probe, "model_best.pth.tar"), "work": str(work)}
    out["ghostnet"] = call_main("export.py", "--ckpt", out["ghostnet_ckpt"], "--data", jpegs, "--output",
                                str(work / "g8.onnx"), *CALIB)[0]
    classes = work / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    resnet = random_state_dict("resnet18", str(work / "resnet18.pth"), 4, seed=1)
    out["resnet18"] = call_main("export.py", "--ckpt", resnet, "-a", "resnet18", "--classes", str(classes), *SIZE,
                                "--calib-data", jpegs, "--output", str(work / "r8.onnx"), *CALIB)[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(work / "torch_home"))
        cached = factory.cache_path(factory.weights_url("mobilenet_v3_small"))
        os.makedirs(os.path.dirname(cached))
        random_state_dict("mobilenet_v3_small", cached, seed=2)
        out["mobilenet"] = call_main("export.py", "--pretrained", "-a", "mobilenet_v3_small", *SIZE, "--calib-data",
                                     jpegs, "--output", str(work / "m8.onnx"), *CALIB)[0]
    return out


def metadata_props(path: str) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(path).metadata_props}


def graph_output_producer(blob: bytes) -> str:
    """The op type of the node that writes the graph's (first) output."""
    import onnx

    graph = onnx.load_from_string(blob).graph
    return next(n.op_type for n in graph.node if graph.output[0].name in n.output)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ghostnet", "resnet18", "mobilenet"])
def test_the_graph_is_quantised_three_times_smaller_and_agrees_with_fp32(int8, name):
    result = int8[name]
    with open(result["path"], "rb") as f:
        blob = f.read()
    counts = quantize.count_quantized(blob)
    # Every convolution and the classifier get int8 weights (one initializer each, plus zero points) and a
    # QuantizeLinear/DequantizeLinear pair on their activations; none is left in float.
    assert counts["int8_initializers"] >= 20 and counts["qdq_nodes"] >= 40, counts
    assert counts["float_layers"] == 0, counts
    # The logits leave the classifier in float: a Gemm (int8 weights through DequantizeLinear) gives the graph's
    # output, no QuantizeLinear/DequantizeLinear pair rounds it to 256 levels where close scores would tie.
    assert graph_output_producer(blob) == "Gemm"
    assert len(blob) == result["bytes"] and result["fp32_bytes"] >= 3 * len(blob)
    assert result["agreement"] >= AGREEMENT[name]  # ghostnet: on the 20 val JPEGs; the others: on 16 generated images
    meta = onnx_model.decode_metadata(metadata_props(result["path"]), result["path"])
    assert (meta["precision"], meta["int8_format"], meta["int8_types"], meta["int8_method"]) == (
        "int8", "qdq", "u8s8", "minmax")
    assert meta["calibration_images"] == "16" and meta["calibration_seed"] == "0"
    assert json.loads(meta["kept_fp32"]) == []


@pytest.mark.slow
def test_top1_is_measured_recorded_and_equal_to_what_test_py_reports(int8, jpegs, tmp_path):
    result = int8["ghostnet"]
    assert result["images"] == 20 and result["drop"] == pytest.approx(result["fp32_top1"] - result["int8_top1"])
    meta = metadata_props(result["path"])
    assert float(meta["int8_top1"]) == pytest.approx(result["int8_top1"], abs=0.01)
    assert float(meta["fp32_top1"]) == pytest.approx(result["fp32_top1"], abs=0.01)
    # The calibration list: 16 of the 32 training images, 4 per class, drawn with seed 0.
    train = imagefolder.split(jpegs, "train", None, False)
    picked = quantize.draw_across_classes(train.targets, 16, 0)
    assert sorted(np.bincount([train.targets[i] for i in picked]).tolist()) == [4, 4, 4, 4]
    listed = "\n".join(train.samples[i][0] for i in picked)
    assert meta["calibration_sha256"] == hashlib.sha256(listed.encode()).hexdigest()
    assert meta["calibration"] == os.path.join(jpegs, "train")
    evaluated, printed = call_main("test.py", "--model", result["path"], "--data", jpegs, "-j", "0", "--output-dir",
                                   str(tmp_path / "eval"))
    assert "onnxruntime" in printed and evaluated["images"] == 20
    assert evaluated["top1"] == pytest.approx(result["int8_top1"], abs=1e-6)
    sort, _ = call_main("classify_test_data.py", "--model", int8["resnet18"]["path"], "--data", jpegs, "-j", "0",
                        "--out", str(tmp_path / "sorted"))
    assert sort["placed"] == 20 and {r["class"] for r in sort["summary"]} == {*CLASSES, "all"}


@pytest.mark.slow
def test_calibration_runs_through_the_checkpoints_eval_transform(int8, jpegs):
    # The checkpoint records its 32/32 eval sizes; export.py was given none, so those are what calibration used.
    loaded = loading.load_model(loading.ModelSource(int8["ghostnet_ckpt"]))
    prep = loading.eval_preprocess(loaded, preprocess.EvalFlags(), int8["ghostnet_ckpt"])
    assert (prep.resize, prep.crop) == (32, 32)
    train = imagefolder.split(jpegs, "train", None, False)
    first = quantize.draw_across_classes(train.targets, 16, 0)[:quantize.CALIB_BATCH]
    transform = prep.transform(fast=True)
    pixels = torch.stack([transform(transforms.load_uint8(train.samples[i][0])) for i in first])
    expected = quantize.batch_stats(transforms.to_model_input(pixels, torch.device("cpu"), norm=prep.norm).numpy())
    got = int8["ghostnet"]["calibration_batch"]
    assert got["shape"] == [16, 3, 32, 32] and got["dtype"] == "float32"
    assert np.allclose(got["mean"], expected["mean"], atol=1e-5) and np.allclose(got["std"], expected["std"], atol=1e-5)
    # Another resize gives other statistics: the check above can tell the transforms apart.
    other = transforms.eval_transform(48, 32)
    resized = torch.stack([other(transforms.load_uint8(train.samples[i][0])) for i in first])
    moved = quantize.batch_stats(transforms.to_model_input(resized, torch.device("cpu"), norm=prep.norm).numpy())
    assert not np.allclose(got["std"], moved["std"], atol=1e-3)


@pytest.mark.slow
def test_keep_fp32_leaves_the_named_layers_in_float(int8, jpegs, tmp_path):
    out = str(tmp_path / "kept.onnx")
    result, _ = call_main("export.py", "--ckpt", int8["ghostnet_ckpt"], "--calib-data", jpegs, "--output", out,
                          *CALIB, "--keep-fp32", "depthwise", "conv_stem")
    with open(out, "rb") as f:
        counts = quantize.count_quantized(f.read())
    # Every GhostModule's cheap operation is a depthwise convolution, as are the strided blocks' ones: 41 with the stem.
    assert counts["float_layers"] >= 30, counts
    assert json.loads(metadata_props(out)["kept_fp32"]) == result["kept_fp32"] and len(result["kept_fp32"]) >= 30
    with open(int8["ghostnet"]["path"], "rb") as f:
        assert quantize.count_quantized(f.read())["qdq_nodes"] > counts["qdq_nodes"]


@pytest.mark.slow
def test_a_drop_above_max_drop_is_refused_with_the_sensitive_layers_and_leaves_no_file(int8, jpegs, tmp_path,
                                                                                          capsys):
    # Calibrated on near-black images, the activation ranges are far too narrow for the coloured val images.
    dark = make_image_folder(str(tmp_path / "dark"), 0, 4, classes=((10, 2, 2), (2, 10, 2), (2, 2, 10), (10, 10, 2)))
    out = str(tmp_path / "refused.onnx")
    with pytest.raises(SystemExit) as exc:
        call_main("export.py", "--ckpt", int8["ghostnet_ckpt"], "--data", jpegs, "--calib-data", dark,
                  "--max-drop", "0", "--output", out, *CALIB)
    error = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and error.count("\n") == 0, error
    assert "was not written" in error and "the most sensitive layers: blocks." in error and " dB)" in error
    assert not os.path.exists(out) and os.listdir(tmp_path) == ["dark"]


def test_int8_flags_are_refused_where_they_do_not_apply(tmp_path):
    export = load_script("export.py")

    def parse(*argv: str):
        args = export.get_args_parser().parse_args(list(argv))
        return export.check_args(args)

    assert "add --int8" in refusal(parse, "--pretrained", "-a", "resnet18", "--output", str(tmp_path / "m.onnx"),
                                   "--calib-data", str(tmp_path))
    assert "*.onnx" in refusal(parse, "--pretrained", "-a", "resnet18", "--output", str(tmp_path / "m.pt2"), "--int8",
                               "--calib-data", str(tmp_path))
    assert "--calib-data DIR" in refusal(parse, "--pretrained", "-a", "resnet18", "--output",
                                         str(tmp_path / "m.onnx"), "--int8")
    assert "invalid choice" in refusal(parse, "--output", "m.onnx", "--int8", "--calib-method", "mse")


def test_calibration_draw_is_seeded_and_spread_over_the_classes():
    targets = [0] * 50 + [1] * 3 + [2] * 20
    picked = quantize.draw_across_classes(targets, 12, 7)
    assert picked == quantize.draw_across_classes(targets, 12, 7) and picked == sorted(set(picked))
    assert np.bincount([targets[i] for i in picked]).tolist() == [5, 3, 4]
    assert picked != quantize.draw_across_classes(targets, 12, 8)
    assert len(quantize.draw_across_classes(targets, 500, 0)) == len(targets)


def test_an_op_onnx_runtime_cannot_quantise_is_one_line_naming_it(tmp_path, monkeypatch):
    from onnx import TensorProto, helper, numpy_helper

    from common.errors import UserError

    monkeypatch.chdir(tmp_path)
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
             helper.make_node("Mystery", ["c"], ["logits"], name="odd", domain="com.example")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    calib = quantize.Calibration("generated", [torch.zeros(2, 3, 8, 8, dtype=torch.uint8)], 0, "", 1)
    with pytest.raises(UserError) as exc:
        quantize.quantize(model.SerializeToString(), calib, quantize.feed_for(False, transforms.IMAGENET),
                          quantize.Int8Settings(), "toy")
    assert "\n" not in str(exc.value) and "ONNX Runtime cannot quantise toy at op Mystery" in str(exc.value)
    assert os.listdir(tmp_path) == []  # a failed shape inference saved sym_shape_infer_temp.onnx in the current folder


@pytest.mark.slow
def test_compare_int8_times_fp32_and_int8_onnx_side_by_side(tmp_path):
    rows, _ = call_main("evaluation/compare.py", "--models", "resnet18", "--quick", "--threads", "1", "--int8",
                        "--output-dir", str(tmp_path))
    (row,) = rows
    assert not row.get("int8_error") and row["onnx_fp32_mib"] >= 3 * row["onnx_int8_mib"] > 0
    assert all(row[f"ort_{p}_{f}"] > 0 for p in ("fp32", "int8") for f in ("latency_ms", "img_s"))
    assert all(row[f"ort_{p}_latency_spread_pct"] >= 0 for p in ("fp32", "int8"))  # 3 repeats: a spread
    table = (tmp_path / "compare.md").read_text()
    assert "ONNX Runtime fp32 against int8" in table and "| resnet18 | " in table.split("against int8")[1]
    header = (tmp_path / "compare.csv").read_text().splitlines()[0].split(",")
    assert {"ort_int8_latency_ms", "onnx_int8_mib"} <= set(header)


def test_tied_logits_give_export_py_and_test_py_the_same_top1(tmp_path):
    """A classifier whose logits all tie (zero weights and bias): export.py's measured top-1 must be the one test.py
    reports on the written file, so both must break the tie alike. The val classes have different sizes (class0 2
    images, the others 5), so the class a tie goes to changes the top-1."""
    data = make_image_folder(str(tmp_path / "data"), 4, 5, ext="jpg")
    for name in ("img2.jpg", "img3.jpg", "img4.jpg"):
        os.remove(os.path.join(data, "val", "class0", name))
    state = torch.load(random_state_dict("resnet18", str(tmp_path / "r18.pth"), 4), weights_only=True)
    state["fc.weight"].zero_()
    state["fc.bias"].zero_()
    torch.save(state, tmp_path / "r18.pth")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    result = call_main("export.py", "--ckpt", str(tmp_path / "r18.pth"), "-a", "resnet18", "--classes", str(classes),
                       *SIZE, "--data", data, "--output", str(tmp_path / "tied.onnx"), *CALIB)[0]
    evaluated = call_main("test.py", "--model", str(tmp_path / "tied.onnx"), "--data", data, "-j", "0",
                          "--output-dir", str(tmp_path / "eval"))[0]
    assert evaluated["images"] == result["images"] == 17
    assert evaluated["top1"] == pytest.approx(result["int8_top1"], abs=1e-6) == pytest.approx(result["fp32_top1"])
    assert result["agreement"] == 100.0
