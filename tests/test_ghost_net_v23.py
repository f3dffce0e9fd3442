"""ghost_net_v23.py: GhostNetV2/V3 load timm's state_dicts strictly and give timm's logits; parameter counts of every
published width; GhostNetV3's reparameterize() keeps the outputs and gives timm's deployed form; the published
weights are found in the Hugging Face cache (timm's copy) and the torch hub cache (the authors' release); test.py and
export.py run a V3 checkpoint folded, and the ONNX file holds the folded graph.

Random weights only: timm's models are built without pretrained weights and their BatchNorm statistics are set by one
training-mode pass, so that every branch matters. Inputs are 64 px, the smallest size at which the last stage's DFC
attention still has a 2x2 map to pool.

    python -m pytest tests/test_ghost_net_v23.py -q
"""
from __future__ import annotations

import argparse
import collections
import copy
import os

import pytest
import torch

from common.data import transforms
from common.errors import UserError
from common.models import factory, ghostnet_weights, preprocess
from conftest import make_image_folder
from ghost_net_v23 import GhostNetV3, ghost_net_v23
from inprocess import call_main

timm = pytest.importorskip("timm")

# timm name: (version, width, parameters before re-parameterisation, as timm 1.0.31 counts them)
TIMM_MODELS = {
    "ghostnetv2_100": ("v2", 1.0, 6_156_908),
    "ghostnetv2_130": ("v2", 1.3, 8_960_404),
    "ghostnetv2_160": ("v2", 1.6, 12_392_698),
    "ghostnetv3_050": ("v3", 0.5, 3_395_384),
    "ghostnetv3_100": ("v3", 1.0, 8_129_028),
    "ghostnetv3_130": ("v3", 1.3, 12_217_720),
    "ghostnetv3_160": ("v3", 1.6, 17_275_700),
}


def calibrated(model: torch.nn.Module, seed: int = 0, images: torch.Tensor | None = None) -> torch.nn.Module:
    """``model`` in eval mode with random BatchNorm affine terms and the running statistics of one batch (``images``,
    else random normals), so that each branch contributes and activations stay near unit scale."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.momentum = None  # the running statistics become this batch's
        model.train()(torch.randn(4, 3, 64, 64) if images is None else images)
    return model.eval()


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name", sorted(TIMM_MODELS))
def test_timm_state_dict_loads_strictly_and_parameters_equal_timms(name):
    version, width, params = TIMM_MODELS[name]
    reference = timm.create_model(name)
    ours = ghost_net_v23(version, width_mult=width)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert factory.count_params(ours) == factory.count_params(reference) == params


@pytest.fixture(scope="module", params=["ghostnetv2_100", "ghostnetv3_050"])
def pair(request) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """(timm's model with calibrated BatchNorms, ours with its state_dict, a (2, 3, 64, 64) input)."""
    version, width, _ = TIMM_MODELS[request.param]
    reference = calibrated(timm.create_model(request.param))
    ours = ghost_net_v23(version, width_mult=width)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours.eval(), torch.randn(2, 3, 64, 64)


def test_timm_weights_give_timms_logits_in_eval_mode(pair):
    reference, ours, x = pair
    expected = logits(reference, x)
    assert torch.allclose(logits(ours, x), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_fold_batchnorm_folds_every_batchnorm_and_v3_branches_leaving_the_model_in_training_form(pair):
    _, model, x = pair
    keys = sorted(model.state_dict())
    folded = factory.fold_batchnorm(model)
    assert sorted(model.state_dict()) == keys  # what checkpoints save is unchanged
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    expected = logits(model, x)
    assert torch.allclose(logits(folded, x), expected, rtol=0, atol=1e-4 * expected.abs().max().item())


def test_reparameterized_v3_gives_the_same_logits_and_timms_deployed_form(pair):
    reference, ours, x = pair
    if not isinstance(ours, GhostNetV3):
        assert factory.reparameterized(ours) is None  # V2 has nothing to fold
        return
    before = logits(ours, x)
    folded = factory.reparameterized(ours)
    assert not ours.deployed and folded.deployed  # the original keeps its training form
    assert factory.count_params(folded) < factory.count_params(ours)
    after = logits(folded, x)
    assert torch.allclose(after, before, rtol=0, atol=1e-4 * before.abs().max().item())  # float32
    deployed = copy.deepcopy(reference)
    deployed.convert_to_deploy()
    assert sorted(folded.state_dict()) == sorted(deployed.state_dict())
    assert torch.allclose(after, logits(deployed, x), rtol=0, atol=1e-5 * before.abs().max().item())
    # In float64 the folding is exact up to the rounding of the sums.
    double, x64 = copy.deepcopy(ours).double(), x[:1].double()
    exact = logits(double, x64)
    assert torch.allclose(logits(factory.reparameterized(double), x64), exact, rtol=0,
                          atol=1e-9 * exact.abs().max().item())


def test_ghostnets_are_archs_and_take_any_width():
    assert {"ghostnet", "ghostnetv2", "ghostnetv3"} <= set(factory.available_archs())
    model = factory.create_model("ghostnetv2", 7, width_mult=1.3, dropout=0.1)
    assert factory.count_params(model) == 8_960_404 - 1281 * (1000 - 7) and model.drop_rate == 0.1
    assert isinstance(factory.create_model("ghostnetv3", 3), GhostNetV3)


def _random_timm_weights(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {k: v.clone() for k, v in timm.create_model(name).state_dict().items()}


def test_pretrained_reads_timms_hugging_face_cache(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = _random_timm_weights("ghostnetv2_100")
    repo = tmp_path / "hf" / "models--timm--ghostnetv2_100.in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / "abc123" / "model.safetensors"))
    model = factory.create_model("ghostnetv2", 1000, pretrained=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert factory.pretrained_file("ghostnetv2", 1.0) == str(repo / "snapshots" / "abc123" / "model.safetensors")
    prep = preprocess.weights_preprocess("ghostnetv2")
    assert (prep.resize, prep.crop, prep.interpolation) == (256, 224, "bicubic") and "timm" in prep.source


def test_pretrained_reads_the_authors_release_in_the_torch_hub_cache(tmp_path, monkeypatch):
    """The authors' training file: wrapped in ``state_dict`` with its flags, thop counters, and ``bn`` names."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = _random_timm_weights("ghostnetv3_100")
    release = {("module." + k.replace("bn1.", "bn.") if (".ghost" in k or ".dw_rpr_" in k) else "module." + k): v
               for k, v in state.items()}
    release["total_ops"] = torch.zeros(1)
    path = ghostnet_weights.torch_hub_file(ghostnet_weights.PUBLISHED["ghostnetv3", 1.0][1])
    os.makedirs(os.path.dirname(path))
    torch.save({"state_dict": release, "args": argparse.Namespace(lr=0.1), "epoch": 599}, path)
    model = factory.create_model("ghostnetv3", 5, pretrained=True)  # a new 5-class head on the ImageNet body
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("classifier"))
    assert model.classifier.out_features == 5


def test_pretrained_refuses_a_width_without_weights_and_names_both_caches_offline(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"width-mult 1, 1\.3, 1\.6 only"):
        factory.create_model("ghostnetv2", 1000, pretrained=True, width_mult=0.5)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*_args, **_kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as refused:
        factory.create_model("ghostnetv3", 1000, pretrained=True)
    message = str(refused.value)
    assert "ghostnetv3-1.0.pth.tar" in message and "timm/ghostnetv3_100.in1k" in message and "--weights" in message


@pytest.fixture(scope="module")
def v3_checkpoint(tmp_path_factory) -> dict[str, str]:
    """A 4-class GhostNetV3 0.5x state_dict with calibrated BatchNorms, its class list and 64 px JPEGs."""
    work = tmp_path_factory.mktemp("v3")
    data = make_image_folder(str(work / "data"), 1, 2, size=(64, 72), ext="jpg")
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(data, "val")) for f in fs)
    pixels = torch.stack([transforms.eval_transform(64, 64)(transforms.load_uint8(p)) for p in paths])
    images = transforms.to_model_input(pixels, torch.device("cpu"))  # what test.py feeds the model
    model = calibrated(factory.create_model("ghostnetv3", 4, width_mult=0.5), images=images)
    torch.save(model.state_dict(), work / "v3.pth")
    (work / "classes.txt").write_text("".join(f"class{i}\n" for i in range(4)))
    return {"ckpt": str(work / "v3.pth"), "classes": str(work / "classes.txt"), "data": data, "work": str(work)}


def _flags(files: dict[str, str]) -> list[str]:
    return ["--ckpt", files["ckpt"], "-a", "ghostnetv3", "--width-mult", "0.5", "--classes", files["classes"],
            "--data", files["data"], "--val-resize-size", "64", "--val-crop-size", "64", "-j", "0"]


def test_test_py_evaluates_a_v3_checkpoint_folded(v3_checkpoint):
    _, printed = call_main("test.py", *_flags(v3_checkpoint), "--output-dir", v3_checkpoint["work"] + "/eval")
    assert "ghostnetv3" in printed and "BatchNorm folded" in printed and "on 8 images" in printed


@pytest.mark.slow
def test_export_of_a_v3_checkpoint_holds_the_folded_graph_and_passes_its_check(v3_checkpoint):
    import onnx

    out = os.path.join(v3_checkpoint["work"], "v3.onnx")
    result, _ = call_main("export.py", *_flags(v3_checkpoint), "--output", out)
    assert result["agreement"] == 100.0 and result["metadata"]["batchnorm_folded"]
    ops = collections.Counter(node.op_type for node in onnx.load(out).graph.node)
    model = factory.create_model("ghostnetv3", 4, width_mult=0.5)
    deployed = factory.fold_batchnorm(model)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in deployed.modules())
    assert ops["BatchNormalization"] == 0 and ops["Conv"] == convs
    assert convs < sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())  # the branches are gone


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ghostnetv2", "ghostnetv3"])
def test_a_trainer_trains_it_and_the_sorter_sorts_with_its_checkpoint(arch, tmp_path):
    """One epoch of train_main.py at 64 px (V3 trains in its branched form, and its checkpoint keeps that form),
    then the sorter places every val image under right/ or wrong/ with that checkpoint."""
    data = make_image_folder(str(tmp_path / "data"), 4, 2, size=(64, 72), ext="jpg")
    out = str(tmp_path / "run")
    size = ["--train-crop-size", "64", "--val-resize-size", "64", "--val-crop-size", "64", "-j", "0", "-p", "100"]
    call_main("train_main.py", data, "-a", arch, "--width-mult", "1.0" if arch == "ghostnetv2" else "0.5",
              "--epochs", "1", "-b", "8", "--lr", "0.01", "--seed", "0", "--output-dir", out, *size)
    saved = torch.load(os.path.join(out, "checkpoint.pth.tar"), map_location="cpu", weights_only=True)
    assert saved["arch"] == arch and saved["epoch"] == 1
    kept = "_rpr_" if arch == "ghostnetv3" else "short_conv"  # V3's parallel branches, V2's DFC attention
    assert any(kept in k for k in saved["state_dict"])
    sorted_dir = str(tmp_path / "sorted")
    call_main("classify_test_data.py", "--ckpt", os.path.join(out, "model_best.pth.tar"), "--data", data,
              "--out", sorted_dir, "-j", "0", "-b", "4")
    placed = [os.path.basename(r) for r, _, fs in os.walk(sorted_dir) for f in fs if f.endswith(".jpg")]
    assert len(placed) == 8 and set(placed) <= {"right", "wrong"}
