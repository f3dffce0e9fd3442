"""Unit tests of common/: options, samplers, metrics, meters, schedules, checkpoints and model creation."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn as nn

from common.cli import defaults
from common.data import formats, imagefolder, loaders, sampling, transforms
from common.errors import UserError
from common.models import checkpoint, factory
from common.report.metrics import accuracy, topk_correct
from common.report.progress import AverageMeter
from common.train import schedule
from conftest import refusal
from tests.conftest import fill_and_check
from train_main import get_args_parser


def parse(*argv: str):
    return get_args_parser().parse_args(list(argv))


# ---------------------------------------------------------------- options


def test_dataset_is_given_positionally_or_with_data_flag():
    for argv in (["/some/dir"], ["--data", "/some/dir"], ["/some/dir", "--data", "/some/dir"]):
        args = parse(*argv)
        defaults.resolve_data_dir(args)
        assert args.data == "/some/dir"


def test_two_different_dataset_paths_are_refused():
    args = parse("/a", "--data", "/b")
    with pytest.raises(UserError, match="two dataset paths"):
        defaults.resolve_data_dir(args)


def test_missing_dataset_suggests_dummy():
    with pytest.raises(UserError, match="--dummy"):
        fill_and_check(parse(), factory.available_archs())


def test_unknown_arch_suggests_close_names():
    with pytest.raises(UserError, match="resnet50"):
        fill_and_check(parse("--dummy", "-a", "resnet5O"), factory.available_archs())


@pytest.mark.parametrize("argv, message", [
    (["-b", "0"], "--batch-size: must be a positive integer, got '0'"),
    (["--val-resize-size", "32", "--val-crop-size", "64"], "larger than --val-resize-size"),
    (["--label-smoothing", "1.5"], "--label-smoothing: must be a number in [0, 1), got '1.5'"),
])
def test_bad_flag_values_are_refused_in_one_line(argv, message):
    def check(*flags: str) -> None:
        fill_and_check(parse("--dummy", *flags), factory.available_archs())

    assert message in refusal(check, *argv)


def test_size_defaults_are_filled_once():
    args = parse("--dummy")
    fill_and_check(args, factory.available_archs())
    assert (args.train_crop_size, args.val_resize_size, args.val_crop_size) == (224, 256, 224)


def test_wrong_layout_error_names_expected_layout(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match=r"no val/ subfolder.*train/<class>/<image>.*--dummy"):
        imagefolder.split_dirs(str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        imagefolder.split_dirs(str(tmp_path / "nope"))


# ---------------------------------------------------------------- data


def test_image_folder_returns_paths_and_skips_hidden_folders(tiny_data, tmp_path):
    ds = imagefolder.image_folder(os.path.join(tiny_data, "val"), transforms.eval_transform(32, 32, fast=False))
    image, target, path = ds[0]
    assert image.shape == (3, 32, 32) and target == 0 and path.endswith("class0/img0.png")
    assert ds.classes == ["class0", "class1", "class2", "class3"] and len(ds) == 40
    (tmp_path / "a").mkdir()
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(open(path, "rb").read())
    assert imagefolder.image_folder(str(tmp_path), None).classes == ["a"]


def test_train_and_val_with_different_classes_are_refused():
    with pytest.raises(UserError, match=r"only in train/: \['dog'\].*only in val/: \['cow'\]"):
        imagefolder.check_same_classes(["cat", "dog"], ["cat", "cow"])


@pytest.mark.parametrize("n, batch, world", [(64, 8, 2), (100, 8, 4), (37, 4, 3)])
def test_rank_batches_together_form_the_one_process_batches(n, batch, world):
    single = sampling.GlobalBatchSampler(n, batch * world, 1, 0, seed=3)
    single.set_epoch(5)
    ranks = [sampling.GlobalBatchSampler(n, batch, world, r, seed=3) for r in range(world)]
    for s in ranks:
        s.set_epoch(5)
    one = list(single)
    per_rank = [list(s) for s in ranks]
    assert all(len(p) == len(ranks[0]) for p in per_rank)
    steps = math.ceil(len(per_rank[0]) / batch)
    for k in range(steps):
        union = sorted(i for p in per_rank for i in p[k * batch:(k + 1) * batch])
        assert union == sorted(one[k * batch * world:(k + 1) * batch * world])
    assert len(one) == n // (batch * world) * batch * world  # incomplete global batch dropped


def test_train_sampler_reshuffles_each_epoch_and_pads_tiny_sets():
    s = sampling.GlobalBatchSampler(50, 8, seed=0)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first and sorted(first) == sorted(set(first))
    tiny = [list(sampling.GlobalBatchSampler(5, 8, 2, r)) for r in range(2)]
    assert len(tiny[0]) == len(tiny[1]) == 3 and set(tiny[0] + tiny[1]) == set(range(5))


@pytest.mark.parametrize("n, world", [(21, 2), (10, 3), (2, 4)])
def test_eval_shards_count_every_image_exactly_once(n, world):
    indices = [i for r in range(world) for i in sampling.ShardSampler(n, world, r)]
    assert sorted(indices) == list(range(n))


@pytest.mark.parametrize("n, batch, world, accum, replicas, expected", [
    (1, 16, 1, 1, 1, 1),  # a one-image train set
    (2, 16, 2, 1, 1, 1),  # two images on two processes
    (100, 1, 1, 1, 1, 1),  # -b 1
    (100, 16, 1, 16, 1, 1),  # micro-batches of one image
    (100, 16, 2, 4, 1, 2),
    (10, 16, 1, 4, 1, 1),  # a tiny set's share of 10 chunks into 3, 3, 3, 1
    (100, 32, 1, 1, 3, 10),  # DataParallel over 3 GPUs: 11, 11, 10
])
def test_smallest_forward_batch_matches_what_the_sampler_and_chunking_produce(n, batch, world, accum, replicas,
                                                                             expected):
    assert sampling.smallest_forward_batch(n, batch, world, accum, replicas) == expected
    per_process = batch // world
    batches = [batch_indices for r in range(world)  # what each rank's DataLoader collates, batch by batch
               for batch_indices in torch.utils.data.DataLoader(
                   list(sampling.GlobalBatchSampler(n, per_process, world, r, seed=0)), batch_size=per_process)]
    smallest = min(len(r) for b in batches for m in b.chunk(accum) for r in m.chunk(replicas))
    assert smallest == expected


def test_batch_must_divide_over_processes():
    assert sampling.per_process_batch(256, 4) == 64
    with pytest.raises(UserError, match="multiple of 3"):
        sampling.per_process_batch(256, 3)


def test_dummy_data_has_paths_and_imagenet_classes():
    cfg = loaders.DataConfig(formats.DataSource(formats.SYNTHETIC), train_crop_size=32, val_resize_size=36,
                             val_crop_size=32)
    train, val, classes = loaders.build_datasets(cfg)
    image, target, path = val[3]
    assert image.shape == (3, 32, 32) and 0 <= target < 1000 and path == "dummy/3" and len(classes) == 1000
    assert not torch.equal(train[0][0], val[0][0])


# ---------------------------------------------------------------- metrics and meters


def test_topk_counts_against_hand_computed_case():
    output = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    target = torch.tensor([1, 2, 0, 1])
    # top-1 hits: sample 0; top-2 hits: samples 0, 3 (and sample 1? 2 is third -> no; sample 2: 0 is third -> no)
    assert topk_correct(output, target, (1, 2)) == [1, 2]
    assert topk_correct(output, target, (1, 5)) == [1, 4]  # top-5 of 3 classes is top-3
    assert accuracy(output, target, (1,)) == [25.0]


def test_average_meter_weights_by_count():
    m = AverageMeter("loss")
    m.update(1.0, 3)
    m.update(3.0, 1)
    m.add(10.0, 4)
    assert m.count == 8 and m.avg == pytest.approx((3 + 3 + 10) / 8)


# ---------------------------------------------------------------- schedules


def lrs(kind: str, epochs=4, ipe=10, warmup=0.0, step=2, gamma=0.5, base=0.4):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=base)
    sched = schedule.build_scheduler(opt, schedule.ScheduleConfig(kind, epochs, ipe, warmup, step, gamma))
    out = []
    for _ in range(epochs * ipe):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_schedule_decays_every_step_size_epochs():
    got = lrs("step")
    assert got[0] == got[19] == 0.4 and got[20] == got[39] == pytest.approx(0.2)


def test_linear_schedule_is_per_iteration_decay_to_zero():
    got = lrs("linear")
    assert [got[i] for i in (0, 10, 39)] == pytest.approx([0.4 * (1 - i / 40) for i in (0, 10, 39)])


def test_cosine_schedule_with_warmup():
    got = lrs("cosine", warmup=1.0)
    assert got[0] == pytest.approx(0.04) and got[9] == pytest.approx(0.4)
    assert got[10] == pytest.approx(0.4) and got[25] == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 15 / 30)))


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_is_atomic_and_loads_with_weights_only(tmp_path):
    model = nn.DataParallel(nn.Linear(3, 2))
    state = {"epoch": 1, "state_dict": checkpoint.unwrap(model).state_dict(), "best_acc1": 12.5,
             "args": checkpoint.plain_args(parse("--dummy", "--data", str(tmp_path)))}
    checkpoint.save_checkpoint(state, str(tmp_path), is_best=True)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth.tar", "model_best.pth.tar"]
    loaded = checkpoint.load_file(str(tmp_path / "model_best.pth.tar"))
    assert loaded["best_acc1"] == 12.5 and set(loaded["state_dict"]) == {"weight", "bias"}


def test_module_prefixes_are_stripped():
    sd = {"module.fc.weight": torch.zeros(1), "module._orig_mod.fc.bias": torch.zeros(1)}
    assert set(checkpoint.state_dict_from({"state_dict": sd})) == {"fc.weight", "fc.bias"}


class Payload:
    """Unpickling this would create a file: the attack a weights_only load must stop."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_object_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"state_dict": {}, "x": Payload(str(marker))}, f, pickle_protocol=2)
    assert not marker.exists()
    with pytest.raises(UserError, match="--unsafe-load"):
        checkpoint.load_file(str(path))
    assert not marker.exists()


def test_truncated_and_foreign_files_give_clear_errors(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(1000)}, good)
    (tmp_path / "trunc.pth").write_bytes(good.read_bytes()[:200])
    (tmp_path / "text.pth").write_text("hello")
    for name in ("trunc.pth", "text.pth"):
        with pytest.raises(UserError, match="checkpoint"):
            checkpoint.load_file(str(tmp_path / name))
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load_file(str(tmp_path / "missing.pth"))


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("arch", ["ghostnet", "resnet18", "mobilenet_v3_small", "squeezenet1_0"])
def test_create_model_and_replace_head(arch):
    model = factory.create_model(arch, num_classes=7)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    name = factory.replace_head(model, 3)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3) and name in dict(model.named_modules())


def hook_macs(model: torch.nn.Module, input_size: int) -> int:
    """A reference count by hand: output elements x (in_channels / groups) x kernel area for each Conv2d, output
    elements x in_features for each Linear, over one forward."""
    total = []

    def conv(m, _inputs, out):
        total.append(out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1])

    def linear(m, _inputs, out):
        total.append(out.numel() * m.in_features)

    handles = [m.register_forward_hook(conv if isinstance(m, torch.nn.Conv2d) else linear) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    was_training = model.training
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, input_size, input_size))
    for handle in handles:
        handle.remove()
    model.train(was_training)
    return sum(total)


@pytest.mark.parametrize("arch", ["ghostnet", "resnet18", "mobilenet_v3_small"])
def test_macs_from_flop_counter_equal_conv_and_linear_hooks(arch):
    """FlopCounterMode's count, halved, is the paper's convention: a count of Conv2d and Linear layers by hand."""
    from ghost_net import count_macs as ghost_net_macs

    model = factory.create_model(arch, num_classes=10).train()
    assert factory.count_macs(model, 64) == ghost_net_macs(model, 64) == hook_macs(model, 64) > 0
    assert model.training


def test_every_torchvision_classifier_is_offered():
    archs = factory.available_archs()
    assert "ghostnet" in archs and "resnet50" in archs and "vit_b_16" in archs and len(archs) > 50


def test_pretrained_weights_load_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = factory.create_model("resnet18", 1000)
    cached = factory.cache_path(factory.weights_url("resnet18"))
    assert cached.startswith(str(tmp_path))
    os.makedirs(os.path.dirname(cached))
    torch.save(reference.state_dict(), cached)
    model = factory.create_model("resnet18", 5, pretrained=True)
    assert torch.equal(model.conv1.weight, reference.conv1.weight) and model.fc.out_features == 5


def test_pretrained_offline_names_the_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*_args, **_kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(UserError) as err:
        factory.create_model("resnet18", 1000, pretrained=True)
    expected = factory.cache_path(factory.weights_url("resnet18"))
    assert expected in str(err.value) and "--weights" in str(err.value)


@pytest.mark.parametrize("arch", ["resnet18", "ghostnet"])
@pytest.mark.parametrize("content", ["garbage", "other model"])
def test_a_wrong_file_in_the_hub_cache_is_named_with_the_fix(tmp_path, monkeypatch, arch, content):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = factory.cache_path(factory.weights_url(arch))
    os.makedirs(os.path.dirname(cached))
    if content == "garbage":
        with open(cached, "wb") as f:
            f.write(b"<html>rate limited</html>")
    else:
        torch.save(factory.create_model("squeezenet1_1", 1000).state_dict(), cached)
    with pytest.raises(UserError) as err:
        factory.create_model(arch, 5, pretrained=True)
    assert f"the cached file {cached} is not the {arch} ImageNet weights" in str(err.value)
    assert "delete it" in str(err.value) and "\n" not in str(err.value)


def test_weights_file_with_other_head_drops_only_the_head(tmp_path, capsys):
    source = factory.create_model("ghostnet", 10)
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "arch": "ghostnet"}, path)
    model = factory.create_model("ghostnet", 4, weights_path=str(path))
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight) and model.classifier.out_features == 4
    assert "new head" in capsys.readouterr().out
    with pytest.raises(UserError, match="does not fit"):
        factory.create_model("resnet18", 4, weights_path=str(path))


def test_image_folder_decodes_cmyk_and_16_bit_and_names_a_bad_file(tmp_path):
    from PIL import Image

    from common.data.images import BadImage

    folder = tmp_path / "c"
    folder.mkdir()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(folder / "a_cmyk.jpg")
    Image.new("I;16", (8, 8), 65535).save(folder / "b_16bit.png")
    (folder / "c_empty.png").write_bytes(b"")
    ds = imagefolder.image_folder(str(tmp_path), transforms.eval_transform(8, 8, fast=False))
    red, white = ds[0][0], ds[1][0]  # normalised: invert Normalize to read the pixel values back
    mean = torch.tensor(transforms.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(transforms.IMAGENET_STD)[:, None, None]
    assert torch.allclose((red * std + mean)[:, 4, 4], torch.tensor([1.0, 0.0, 0.0]), atol=0.05)
    assert torch.allclose((white * std + mean)[:, 4, 4], torch.ones(3), atol=0.01)  # not clipped garbage
    with pytest.raises(BadImage, match=r"c_empty\.png: empty file"):
        ds[2]
