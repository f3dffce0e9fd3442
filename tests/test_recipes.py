"""Recipes and training options: each option's effect on a tiny run, checked against its formula."""
from __future__ import annotations

import csv
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from common.data import loaders, transforms, unreadable
from common.models import checkpoint, factory
from common.parallel.distributed import DistContext
from common.parallel.precision import Precision
from common.train import engine, loop, optim, resume
from common.train.step import TrainStep
from conftest import ROOT, SMALL, refusal, run_script
from ghost_net import ghost_net
from tests.conftest import fill_and_check

TRAIN = ["-a", "ghostnet", "-b", "16", "--lr", "0.02", "--seed", "0", "--no-accel", *SMALL]


def parse(*argv: str):
    import train_main

    args = train_main.get_args_parser().parse_args(["--dummy", *argv])
    fill_and_check(args, ["ghostnet", "resnet18"])
    return args


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_ghostnet_recipe_sets_published_defaults_and_scales_lr_with_the_batch():
    args = parse("--recipe", "ghostnet", "-b", "256")
    assert (args.epochs, args.momentum, args.nesterov, args.weight_decay, args.norm_weight_decay) == \
        (240, 0.9, True, 4e-5, 0.0)
    assert (args.label_smoothing, args.lr_schedule, args.warmup_epochs) == (0.1, "cosine", 5.0)
    assert args.lr == pytest.approx(0.4 * 256 / 1024)
    assert parse("--recipe", "ghostnet").lr == pytest.approx(0.4) and parse("--recipe", "ghostnet").batch_size == 1024
    overridden = parse("--recipe", "ghostnet", "-b", "256", "--lr", "0.3", "--epochs", "5", "--no-nesterov")
    assert (overridden.lr, overridden.epochs, overridden.nesterov) == (0.3, 5, False)


def test_resnet_recipe_is_the_imagenet_example_and_the_default():
    for args in (parse(), parse("--recipe", "resnet")):
        assert (args.lr, args.epochs, args.batch_size, args.weight_decay) == (0.1, 90, 256, 1e-4)
        assert (args.lr_schedule, args.lr_step_size, args.lr_gamma, args.nesterov) == ("step", 30, 0.1, False)
        assert args.norm_weight_decay is None and args.label_smoothing == 0.0
    assert parse("-b", "64").lr == 0.1  # the example does not scale its lr


def test_finetune_recipe_is_the_second_stage():
    args = parse("--recipe", "ghostnet-finetune")
    assert (args.lr, args.lr_schedule, args.epochs, args.warmup_epochs) == (0.05, "linear", 30, 0.0)


@pytest.mark.parametrize("arch", ["ghostnet", "resnet18", "mobilenet_v3_small"])
def test_no_decay_group_holds_exactly_the_norm_and_bias_parameters(arch):
    model = ghost_net(num_classes=10) if arch == "ghostnet" else torchvision.models.get_model(arch, num_classes=10)
    norm_types = (nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm, nn.GroupNorm)
    expected = {name for name, _ in model.named_parameters()
                if name.endswith(".bias") or isinstance(model.get_submodule(name.rsplit(".", 1)[0]), norm_types)}
    decay, no_decay = optim.param_groups(model, 4e-5, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == expected
    assert {names[id(p)] for p in decay["params"]} == set(names.values()) - expected
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (4e-5, 0.0)
    assert len(optim.param_groups(model, 1e-4, None)) == 1


def test_nesterov_flag_reaches_the_optimizer():
    model = nn.Linear(3, 2)
    assert optim.build_optimizer(model, optim.OptimConfig(0.1, nesterov=True)).param_groups[0]["nesterov"]
    assert not optim.build_optimizer(model, optim.OptimConfig(0.1)).param_groups[0]["nesterov"]


def small_step(model: nn.Module, **kwargs) -> TrainStep:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    return TrainStep(model, nn.CrossEntropyLoss(), opt, sched, Precision(), **kwargs)


def bn_free_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def test_accumulated_micro_batches_give_the_whole_batch_gradient():
    torch.manual_seed(1)
    x, y = torch.randn(12, 3, 16, 16), torch.randint(0, 5, (12,))
    grads = []
    for accum in (1, 3):
        model = bn_free_model()
        step = small_step(model, accum_steps=accum)
        _, loss = step(x, y)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert loss.item() == pytest.approx(F.cross_entropy(bn_free_model()(x), y).item(), rel=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_gradient_clipping_bounds_the_global_norm():
    x, y = torch.randn(8, 3, 16, 16) * 50, torch.randint(0, 5, (8,))
    model = bn_free_model()
    small_step(model, clip_grad_norm=0.01)(x, y)
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert norm.item() == pytest.approx(0.01, rel=1e-4)


def test_mixup_mixes_images_and_labels_with_the_same_weight():
    torch.manual_seed(3)
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 1])
    mixed, soft = optim.build_mix(0.4, 0.0, 5)(x, y)
    lam = soft[0, y[0]].item()
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.roll(1, 0))
    torch.testing.assert_close(soft, lam * F.one_hot(y, 5).float() + (1 - lam) * F.one_hot(y.roll(1, 0), 5).float())
    assert optim.build_mix(0.0, 0.0, 5) is None


def test_cutmix_pastes_a_box_and_weights_labels_by_its_area():
    torch.manual_seed(4)
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    mixed, soft = optim.build_mix(0.0, 1.0, 4)(x, y)
    from_other = (mixed != x).any(dim=1).float().mean(dim=(1, 2))  # share of pixels taken from the rolled batch
    torch.testing.assert_close(soft[:, y].diagonal(), 1 - from_other, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def ema_run(tiny_data, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("ema"))
    run_script("train_main.py", tiny_data, *TRAIN, "--epochs", "2", "--model-ema", "--model-ema-decay", "0.7",
               "--label-smoothing", "0.2", "--output-dir", out)
    return out


@pytest.mark.slow
def test_ema_weights_differ_from_the_raw_ones_and_are_saved_and_marked(ema_run):
    ckpt = checkpoint.load_file(os.path.join(ema_run, "checkpoint.pth.tar"))
    raw, ema = ckpt["state_dict"], ckpt["state_dict_ema"]
    assert raw.keys() == ema.keys() and ckpt["ema_updates"] == 20  # 160 images / 16 = 10 steps x 2 epochs
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())
    rows = read_csv(os.path.join(ema_run, "main.csv"))
    raw_top1, ema_top1 = float(rows[-1]["val_top1"]), float(rows[-1]["val_top1_ema"])
    assert ckpt["best_weights"] == ("ema" if ema_top1 > raw_top1 else "raw")
    assert checkpoint.state_dict_from({**ckpt, "best_weights": "ema"}) == ema  # what test.py and the sorter load
    assert checkpoint.state_dict_from({**ckpt, "best_weights": "raw"}) == raw
    best = checkpoint.load_file(os.path.join(ema_run, "model_best.pth.tar"))
    assert best["best_acc1"] == pytest.approx(max(max(float(r["val_top1"]), float(r["val_top1_ema"])) for r in rows))


@pytest.mark.slow
def test_label_smoothing_changes_the_loss_as_the_formula_says(ema_run, tiny_data):
    """Validation loss of the saved raw weights, recomputed by hand: (1 - e) * NLL + e * mean over classes of -log p."""
    import train_main

    args = train_main.get_args_parser().parse_args([tiny_data, *TRAIN, "--label-smoothing", "0.2", "--model-ema"])
    fill_and_check(args, ["ghostnet"])
    run = engine.build_run(args, DistContext(), lambda m, ctx: m)
    resume.restore(os.path.join(ema_run, "checkpoint.pth.tar"), run, "ghostnet")
    show = loop.eval_pass(run, 10)
    stats = loop.evaluate(run.model, run.val_loader, run.criterion, DistContext(), show, run.precision)
    logp, targets = [], []
    with torch.no_grad():
        for images, target, _ in run.val_loader:
            logp.append(F.log_softmax(run.model(transforms.to_model_input(images, torch.device("cpu"))), dim=1))
            targets.append(target)
    logp, target = torch.cat(logp), torch.cat(targets)
    nll = -logp.gather(1, target[:, None]).mean()
    expected = 0.8 * nll + 0.2 * (-logp.mean(dim=1)).mean()
    assert stats.loss == pytest.approx(expected.item(), rel=1e-5)
    assert abs(stats.loss - nll.item()) > 1e-3  # the smoothing term matters here


def expected_lr(it: int, base: float, iters: int, epochs: int, schedule: str, warmup: float = 0.0,
                step: int = 1, gamma: float = 0.1) -> float:
    warm = round(warmup * iters)
    if it < warm:
        return base * (it + 1) / warm
    total = epochs * iters
    if schedule == "step":
        return base * gamma ** (it // iters // step)
    progress = (it - warm) / (total - warm)
    return base * (1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress)))


@pytest.mark.slow
@pytest.mark.parametrize("schedule, extra", [
    ("cosine", ["--warmup-epochs", "1"]),
    ("step", ["--lr-step-size", "1", "--lr-gamma", "0.5"]),
    ("linear", []),
])
def test_logged_lr_follows_the_schedule_per_iteration(tiny_data, tmp_path, schedule, extra):
    out = str(tmp_path)
    run_script("train_main.py", tiny_data, *TRAIN, "--epochs", "3", "--lr-schedule", schedule, *extra, "-p", "1",
               "--output-dir", out)
    rows = read_csv(os.path.join(out, "main_steps.csv"))
    assert [int(r["iteration"]) for r in rows] == list(range(30))  # 3 epochs of 10 steps, each logged with -p 1
    gamma = 0.5 if schedule == "step" else 0.1
    warmup = 1.0 if extra[:1] == ["--warmup-epochs"] else 0.0
    for r in rows:
        want = expected_lr(int(r["iteration"]), 0.02, 10, 3, schedule, warmup, 1, gamma)
        assert float(r["lr"]) == pytest.approx(want, rel=1e-5, abs=1e-12), r


@pytest.mark.slow
def test_finetune_from_takes_weights_only_and_starts_a_fresh_run(ema_run, tiny_data, tmp_path):
    out = str(tmp_path)
    source = os.path.join(ema_run, "checkpoint.pth.tar")
    result = run_script("train_main.py", tiny_data, *TRAIN, "--finetune-from", source, "--epochs", "1", "--lr", "0",
                        "--momentum", "0", "--output-dir", out)
    assert "fine-tuning from the weights of" in result.stdout
    rows = read_csv(os.path.join(out, "main.csv"))
    assert [r["epoch"] for r in rows] == ["0"]  # a new run: epoch count and schedule start again
    before, after = (checkpoint.load_file(p)["state_dict"] for p in (source, os.path.join(out, "checkpoint.pth.tar")))
    weights = [k for k in before if k.endswith("weight") and "bn" not in k and before[k].dim() > 1]
    assert weights and all(torch.equal(before[k], after[k]) for k in weights)  # lr 0: the loaded weights, unchanged


@pytest.mark.slow
def test_header_prints_params_macs_batch_and_speed_features_and_footer_the_best(tiny_data, tmp_path):
    flags = [f for f in TRAIN if f not in ("--lr", "0.02")]
    result = run_script("train_main.py", tiny_data, *flags, "--epochs", "1", "--recipe", "ghostnet", "-b", "16",
                        "--output-dir", str(tmp_path))
    model = factory.create_model("ghostnet", 4)
    macs = factory.count_macs(model, 32) / 1e6
    assert f"{factory.count_params(model) / 1e6:.2f} M params, {macs:.1f} M MACs at 32 px" in result.stdout
    assert "recipe ghostnet (lr 0.4 per 1024 images, scaled linearly): global batch 16, lr 0.00625 cosine" \
        in result.stdout
    assert "Nesterov, wd 4e-05 (norm/bias 0), label smoothing 0.1" in result.stdout
    assert "fp32, channels_last" in result.stdout or "AMP bf16, channels_last" in result.stdout
    assert "best Acc@1" in result.stdout and "(Acc@5" in result.stdout and "at epoch 0" in result.stdout


@pytest.mark.slow
def test_tensorboard_events_and_sample_grid(tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = str(tmp_path)
    run_script("train_main.py", tiny_data, *TRAIN, "--epochs", "2", "--tensorboard", "--save-samples",
               "--output-dir", out)
    acc = EventAccumulator(os.path.join(out, "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/val", "top1/val", "top5/val", "lr/epoch", "speed/images_per_s",
            "speed/data_wait_s", "lr/step"} <= tags
    rows = read_csv(os.path.join(out, "main.csv"))
    assert [e.value for e in acc.Scalars("top1/val")] == pytest.approx([float(r["val_top1"]) for r in rows])
    from PIL import Image

    with Image.open(os.path.join(out, "train_samples.png")) as grid:
        # 16 images (one batch of the tiny set), 8 per row: tiles of at least 96 px with room for their captions
        assert grid.size == (8 * (96 + 12), 2 * (96 + 30) + 40)


@pytest.mark.slow
def test_tensorboard_missing_is_a_notice_not_a_crash(tiny_data, tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['tensorboard'] = None\n")
    env = {"PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"}
    result = run_script("train_main.py", tiny_data, *TRAIN, "--epochs", "1", "--tensorboard",
                        "--output-dir", str(tmp_path / "out"), env=env)
    assert "the tensorboard package is not installed" in result.stdout
    assert os.path.isfile(tmp_path / "out" / "main.csv")


@pytest.mark.parametrize("flags, words", [
    (["--hflip", "1.5"], "--hflip: must be a number in [0, 1], got '1.5'"),
    (["--rrc-scale", "0.5", "0.2"], "--rrc-scale 0.5 0.2"),
    (["-b", "16", "--accum-steps", "3"], "does not split into --accum-steps 3"),
    (["--finetune-from", "/nonexistent/ckpt.pth"], "--finetune-from '/nonexistent/ckpt.pth' does not exist"),
    (["--model-ema-decay", "1.5"], "--model-ema-decay: must be a number in (0, 1), got '1.5'"),
    (["--mixup-alpha", "-1"], "--mixup-alpha: must be a number >= 0, got '-1'"),
])
def test_bad_recipe_flags_are_refused_before_any_work(flags, words):
    assert words in refusal(parse, *flags)


def test_augmentation_flags_shape_the_training_pipeline(tiny_data):
    """--rrc-scale 1 1 --rrc-ratio 1 1 --hflip 0 on square images leaves nothing random; the defaults do."""
    def two_draws(*flags: str) -> tuple[torch.Tensor, torch.Tensor]:
        args = parse(*flags)
        train, _, _ = loaders.build_datasets(engine.data_config(args, unreadable.BadImageLog()))
        image = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
        tf = train.transform.transforms[-1]  # after PILToTensor (synthetic data)
        torch.manual_seed(0)
        first = tf(image)
        torch.manual_seed(1)
        return first, tf(image)

    fixed = two_draws("--rrc-scale", "1", "1", "--rrc-ratio", "1", "1", "--hflip", "0", "--train-crop-size", "32")
    assert fixed[0].shape == (3, 32, 32) and torch.equal(*fixed)
    assert not torch.equal(*two_draws("--train-crop-size", "32"))
    args = parse("--auto-augment", "randaugment", "--random-erase", "0.3", "--color-jitter", "0.4")
    steps = [type(t).__name__ for t in loaders.build_transforms(engine.data_config(args, None))[0].transforms]
    assert steps == ["PILToTensor", "Compose"]
    train_tf = loaders.build_transforms(engine.data_config(args, None))[0]
    inner = [type(t).__name__ for t in train_tf.transforms[1].transforms]
    assert inner == ["RandomResizedCrop", "RandomHorizontalFlip", "RandAugment", "ColorJitter", "RandomErasing"]
