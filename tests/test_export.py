"""export.py: ONNX and torch.export files checked against PyTorch; test.py and the sorter running them (--model).

Exports are the slow part (seconds each on a 2-core CPU), so a module fixture makes four at 32 px and the tests
share them: GhostNet fine-tuned by network.py (ONNX), ResNet-18 from a bare state_dict (ONNX with the uint8 input
and normalisation in the graph, and .pt2), MobileNetV3-Small from ImageNet weights (random, in the hub cache).

    python -m pytest tests/test_export.py -q
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from common.data import transforms
from common.models import factory, loading, onnx_model, preprocess
from conftest import SMALL, random_state_dict, refusal
from inprocess import call_main, load_script

CLASSES = ["class0", "class1", "class2", "class3"]
SIZE = ["--val-resize-size", "36", "--val-crop-size", "32"]


@pytest.fixture(scope="module")
def exported(jpegs, tmp_path_factory) -> dict:
    """The source files and the results of the four exports (see the module docstring)."""
    work = tmp_path_factory.mktemp("export")
    probe = str(work / "probe")
    backbone = random_state_dict("ghostnet", str(work / "ghostnet.pth"))
    call_main("network.py", jpegs, "-a", "ghostnet", "--weights", backbone, "--epochs", "1", "-b", "16",
              "--lr", "0.5", "--seed", "0", "--output-dir", probe, *SMALL)
    out = {"ghostnet_ckpt": os.path.join(probe, "model_best.pth.tar"),
           "resnet18_sd": random_state_dict("resnet18", str(work / "resnet18.pth"), 4, seed=1),
           "classes_file": str(work / "classes.txt"), "work": str(work)}
    with open(out["classes_file"], "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    checked_on = ["--data", jpegs, "-b", "20", "-j", "0"]  # export.py's own check runs on the 20 val JPEGs
    out["ghostnet"] = call_main("export.py", "--ckpt", out["ghostnet_ckpt"], "--output", str(work / "g.onnx"),
                                *checked_on)[0]
    resnet = ["--ckpt", out["resnet18_sd"], "-a", "resnet18", "--classes", out["classes_file"], *SIZE, *checked_on]
    out["resnet18"] = call_main("export.py", *resnet, "--with-preprocess", "--output", str(work / "r.onnx"))[0]
    out["pt2"] = call_main("export.py", *resnet, "--output", str(work / "r.pt2"))[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(work / "torch_home"))
        cached = factory.cache_path(factory.weights_url("mobilenet_v3_small"))
        os.makedirs(os.path.dirname(cached))
        random_state_dict("mobilenet_v3_small", cached, seed=2)
        out["mobilenet"] = call_main("export.py", "--pretrained", "-a", "mobilenet_v3_small", *SIZE, "--output",
                                     str(work / "m.onnx"), *checked_on)[0]
        out["mobilenet_sha256"] = hashlib.sha256(open(cached, "rb").read()).hexdigest()
    return out


def val_pixels(jpegs: str, resize: int = 36, crop: int = 32) -> torch.Tensor:
    """The val JPEGs through the project's eval transform: uint8 (20, 3, crop, crop)."""
    transform = transforms.eval_transform(resize, crop)
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(jpegs, "val")) for f in fs)
    return torch.stack([transform(transforms.load_uint8(p)) for p in paths])


def onnx_logits(path: str, feed: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: feed.numpy()})[0])


def pytorch_logits(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(transforms.to_model_input(pixels, torch.device("cpu")))


@pytest.mark.slow
def test_exports_give_pytorch_logits_on_jpegs_and_the_uint8_graph_equals_the_eval_path(exported, jpegs):
    # export.py compared each file with the PyTorch model on the 20 val JPEGs before writing it.
    for name in ("ghostnet", "resnet18", "pt2", "mobilenet"):
        assert exported[name]["agreement"] == 100.0 and exported[name]["max_diff"] < 1e-4, name
    # Independently: the uint8 graph fed the eval transform's pixels against PyTorch on test.py's input.
    pixels = val_pixels(jpegs)
    resnet = loading.load_model(loading.ModelSource(exported["resnet18_sd"], "resnet18")).model
    reference, got = pytorch_logits(resnet, pixels), onnx_logits(exported["resnet18"]["path"], pixels)
    assert got.shape == (20, 4) and (got - reference).abs().max() < 1e-4
    assert torch.equal(got.argmax(1), reference.argmax(1))
    assert onnx_logits(exported["resnet18"]["path"], pixels[:1]).shape == (1, 4)  # dynamic batch


def metadata_props(path: str) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(path).metadata_props}


@pytest.mark.slow
def test_metadata_round_trips_through_the_files_and_model_loading(exported):
    ckpt = exported["ghostnet_ckpt"]
    meta = onnx_model.decode_metadata(metadata_props(exported["ghostnet"]["path"]), "g.onnx")
    written = exported["ghostnet"]["metadata"]
    for key in ("arch", "classes", "mean", "std", "interpolation", "source", "input_format", "preprocess_outside"):
        assert meta[key] == written[key], key
    assert meta["classes"] == CLASSES and meta["arch"] == "ghostnet" and meta["opset"] == "18"
    assert (meta["val_resize_size"], meta["val_crop_size"], meta["input_shape"]) == (32, 32, ["batch", 3, 32, 32])
    assert meta["mean"] == list(transforms.IMAGENET_MEAN) and meta["std"] == list(transforms.IMAGENET_STD)
    assert meta["source_sha256"] == hashlib.sha256(open(ckpt, "rb").read()).hexdigest()
    mobile = metadata_props(exported["mobilenet"]["path"])
    assert mobile["source_sha256"] == exported["mobilenet_sha256"] and len(json.loads(mobile["classes"])) == 1000
    assert json.loads(metadata_props(exported["resnet18"]["path"])["classes"]) == CLASSES  # from --classes
    loaded = loading.load_model(loading.ModelSource(exported["resnet18"]["path"], onnx=True))
    assert (loaded.arch, loaded.classes, loaded.num_classes) == ("resnet18", CLASSES, 4)
    assert loaded.train_args["val_resize_size"] == 36 and loaded.train_args["val_crop_size"] == 32
    with zipfile.ZipFile(exported["pt2"]["path"]) as pt2:
        inside = [n for n in pt2.namelist() if n.endswith("/metadata.json")]
        assert json.loads(pt2.read(inside[0]))["classes"] == CLASSES


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_test_py_reports_through_onnx_equal_those_through_the_checkpoint(exported, jpegs, tmp_path):
    runs = {}
    for name, flags in (("ckpt", ["--ckpt", exported["ghostnet_ckpt"]]),
                        ("onnx", ["--model", exported["ghostnet"]["path"]])):
        out = str(tmp_path / name)
        result, printed = call_main("test.py", *flags, "--data", jpegs, "-j", "0", "--output-dir", out)
        runs[name] = result, printed, out
    (ckpt, _, ckpt_out), (onnx, printed, onnx_out) = runs["ckpt"], runs["onnx"]
    assert "onnxruntime CPUExecutionProvider" in printed and "Resize(32" in printed
    assert (onnx["top1"], onnx["top5"], onnx["images"]) == (ckpt["top1"], ckpt["top5"], ckpt["images"])
    assert onnx["loss"] == pytest.approx(ckpt["loss"], abs=1e-5) and torch.equal(onnx["confusion"], ckpt["confusion"])
    assert read_csv(os.path.join(onnx_out, "per_class.csv")) == read_csv(os.path.join(ckpt_out, "per_class.csv"))
    by_onnx, by_ckpt = (read_csv(os.path.join(o, "predictions.csv")) for o in (onnx_out, ckpt_out))
    assert [(r["path"], r["predicted"]) for r in by_onnx] == [(r["path"], r["predicted"]) for r in by_ckpt]
    sorted_out = str(tmp_path / "sorted")
    sort, _ = call_main("classify_test_data.py", "--model", exported["resnet18"]["path"], "--data", jpegs, "-j", "0",
                        "--out", sorted_out)
    assert sort["placed"] == 20 and {r["class"] for r in sort["summary"]} == {*CLASSES, "all"}


@pytest.mark.slow
def test_onnx_without_metadata_runs_with_class_indices_or_a_classes_file(exported, jpegs, tmp_path):
    import onnx

    proto = onnx.load(exported["ghostnet"]["path"])
    del proto.metadata_props[:]
    bare = str(tmp_path / "bare.onnx")
    onnx.save(proto, bare)
    image = os.path.join(jpegs, "val", "class2", "img0.jpg")
    resize = ["--val-resize-size", "32", "--output-dir", str(tmp_path / "p")]  # the checkpoint's size: without
    # metadata the resize is 256/224 of the input
    plain, _ = call_main("test.py", "--model", bare, image, "--json", *resize)
    named, _ = call_main("test.py", "--model", bare, image, "--json", *resize, "--classes", exported["classes_file"])
    by_ckpt, _ = call_main("test.py", "--ckpt", exported["ghostnet_ckpt"], image, "--json", "--output-dir",
                           str(tmp_path / "p"))
    assert [t["class"] for t in plain[0]["top"]] == [str(CLASSES.index(t["class"])) for t in by_ckpt[0]["top"]]
    assert [t["class"] for t in named[0]["top"]] == [t["class"] for t in by_ckpt[0]["top"]]
    assert np.allclose([t["probability"] for t in named[0]["top"]], [t["probability"] for t in by_ckpt[0]["top"]],
                       atol=1e-5)


@pytest.mark.slow
def test_pt2_reloads_and_runs_in_a_fresh_python_that_does_not_import_the_project(exported, jpegs, tmp_path):
    pixels = val_pixels(jpegs)
    torch.save(transforms.to_model_input(pixels, torch.device("cpu")), tmp_path / "input.pt")
    code = ("import sys, torch; program = torch.export.load(sys.argv[1]); x = torch.load(sys.argv[2]); "
            "torch.save(program.module()(x), sys.argv[3]); "
            "assert not {'common', 'ghost_net'} & set(sys.modules), 'the project was imported'")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code, exported["pt2"]["path"], "input.pt", "output.pt"], cwd=tmp_path,
                   env=env, check=True, capture_output=True, timeout=120)
    resnet = loading.load_model(loading.ModelSource(exported["resnet18_sd"], "resnet18")).model
    got = torch.load(tmp_path / "output.pt")
    assert got.shape == (20, 4) and (got - pytorch_logits(resnet, pixels)).abs().max() < 1e-4


@pytest.mark.slow
def test_bad_inputs_are_refused_in_one_line_and_leave_no_file(exported, jpegs, tmp_path, monkeypatch):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    onnx_path, ckpt, out = exported["ghostnet"]["path"], exported["ghostnet_ckpt"], str(tmp_path / "out.onnx")
    def evaluate(*argv: str):
        return call_main("test.py", "--data", jpegs, "--output-dir", str(tmp_path / "eval"), *argv)

    def export(*argv: str):
        return call_main("export.py", "--output", out, *argv)

    wrong = tmp_path / "wrong.txt"
    wrong.write_text("cat\ndog\nfox\nowl\n")
    three = tmp_path / "three.txt"
    three.write_text("class0\nclass1\nclass2\n")
    assert "not an ONNX model" in refusal(evaluate, "--model", str(junk))
    assert "takes 32x32 px images" in refusal(evaluate, "--model", onnx_path, "--val-crop-size", "28",
                                              "--val-resize-size", "36")
    assert "--compile" in refusal(evaluate, "--model", onnx_path, "--compile")
    assert "another class list" in refusal(evaluate, "--model", onnx_path, "--classes", str(wrong))
    assert "unknown architecture 'resnet9000'" in refusal(export, "--pretrained", "-a", "resnet9000")
    assert "another class list" in refusal(export, "--ckpt", ckpt, "--classes", str(wrong))
    assert "lists 3 classes" in refusal(export, "--ckpt", ckpt, "--classes", str(three))
    assert "already an ONNX model" in refusal(export, "--ckpt", onnx_path)
    assert "is larger than --val-resize-size" in refusal(export, "--ckpt", ckpt, "--val-crop-size", "40")
    # An export whose logits differ (here: the classes' order reversed) is refused by the check; nothing is written.
    script = load_script("export.py")
    run = script.run_exported
    monkeypatch.setattr(script, "export_onnx", lambda *a: open(onnx_path, "rb").read())  # saves exporting again
    monkeypatch.setattr(script, "run_exported", lambda *a: run(*a).flip(1))
    args = script.get_args_parser().parse_args(["--ckpt", ckpt, "--output", out])
    assert "differs from PyTorch" in refusal(lambda: script.main(args))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert "pip install onnx onnxscript onnxruntime" in refusal(export, "--ckpt", ckpt)
    assert "pip install onnx onnxscript onnxruntime" in refusal(evaluate, "--model", onnx_path)
    left = sorted(os.listdir(tmp_path))
    assert left == ["junk.onnx", "three.txt", "wrong.txt"] or left == ["eval", "junk.onnx", "three.txt", "wrong.txt"]


def test_the_ema_weights_a_checkpoint_marks_as_better_are_the_ones_exported(tmp_path):
    torch.manual_seed(0)
    raw, ema = factory.create_model("resnet18", 4), factory.create_model("resnet18", 4)
    path = str(tmp_path / "ema.pth.tar")
    torch.save({"epoch": 2, "arch": "resnet18", "state_dict": raw.state_dict(), "state_dict_ema": ema.state_dict(),
                "best_weights": "ema", "best_acc1": 50.0, "classes": CLASSES, "args": {}}, path)
    script = load_script("export.py")
    source = loading.ModelSource(path)
    loaded = loading.load_model(source)
    assert all(torch.equal(v, ema.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    prep = preprocess.EvalPreprocess(36, 32, "bilinear", transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
    meta = script.metadata(loaded, source, script.Target("onnx", "x.onnx", False, 18), prep, True)
    assert "EMA weights (state_dict_ema" in meta["source_note"] and meta["classes"] == CLASSES
