"""Optimisers and the step-decay schedule against hand computations of a few steps (and timm's RMSpropTF)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from common.train import optim, schedule


def run_steps(optimizer: torch.optim.Optimizer, param: torch.Tensor, grads: list[float]) -> list[float]:
    out = []
    for g in grads:
        param.grad = torch.full_like(param, g)
        optimizer.step()
        out.append(param.item())
    return out


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_rmsproptf_follows_tensorflows_update_by_hand(momentum):
    lr, alpha, eps, wd = 0.1, 0.9, 1e-3, 0.01
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = optim.RMSpropTF([{"params": [p], "weight_decay": wd}], lr, alpha=alpha, eps=eps, momentum=momentum)
    grads = [0.5, -0.2, 0.8]
    got = run_steps(opt, p, grads)
    value, ms, buf, expected = 1.0, 1.0, 0.0, []  # TensorFlow: the mean square starts at 1
    for g in grads:
        g = g + wd * value
        ms = alpha * ms + (1 - alpha) * g * g
        buf = momentum * buf + lr * g / math.sqrt(ms + eps)  # eps inside the root, lr inside the momentum
        value -= buf
        expected.append(value)
    assert got == pytest.approx(expected, rel=1e-6)


def test_rmsproptf_equals_timms_on_a_model_over_several_steps():
    timm_optim = pytest.importorskip("timm.optim")
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    theirs = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    theirs.load_state_dict(ours.state_dict())
    a = optim.build_optimizer(ours, optim.OptimConfig(0.05, momentum=0.9, weight_decay=1e-3, opt="rmsproptf",
                                                      eps=1e-3))
    b = timm_optim.RMSpropTF(theirs.parameters(), lr=0.05, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=1e-3)
    for step in range(6):
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        for model, opt in ((ours, a), (theirs, b)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            for group in opt.param_groups:  # a changing lr, as a schedule makes it
                group["lr"] = 0.05 * (0.9 ** (step + 1))
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_adamw_is_torchs_with_decoupled_decay_per_group():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    opt = optim.build_optimizer(model, optim.OptimConfig(1e-3, weight_decay=0.05, norm_weight_decay=0.0,
                                                         opt="adamw"))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0] and opt.param_groups[0]["eps"] == 1e-8
    p = torch.nn.Parameter(torch.tensor([2.0]))
    adamw = optim.build_optimizer(nn.ParameterList([p]), optim.OptimConfig(0.1, weight_decay=0.5, opt="adamw"))
    run_steps(adamw, p, [0.3])
    # step 1: m_hat = g, v_hat = g^2, so the Adam step is lr * g / (|g| + eps); the decay is lr * wd * p first
    assert p.item() == pytest.approx(2.0 * (1 - 0.1 * 0.5) - 0.1 * 0.3 / (0.3 + 1e-8), rel=1e-6)


def test_step_schedule_decays_every_fractional_epochs_after_linear_warm_up():
    cfg = schedule.ScheduleConfig("step", epochs=10, iters_per_epoch=4, warmup_epochs=1, step_size=2.4, gamma=0.973)
    factors = [schedule.lr_factor(it, cfg) for it in range(40)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    by_epoch = [factors[4 * e] for e in range(1, 10)]
    # epoch e gets 0.973 ** floor(e / 2.4): epochs 1-2 -> 0, 3-4 -> 1, 5-7 -> 2, 8-9 -> 3
    assert by_epoch == pytest.approx([1, 1, 0.973, 0.973, 0.973 ** 2, 0.973 ** 2, 0.973 ** 2, 0.973 ** 3,
                                      0.973 ** 3])
    assert factors[5] == factors[4] and factors[11] == factors[8]  # constant within an epoch


def test_ghostnetv2_recipe_is_the_published_command_and_flags_still_win():
    from test_recipes import parse

    args = parse("--recipe", "ghostnetv2")
    assert (args.opt, args.opt_eps, args.lr, args.batch_size, args.epochs) == ("rmsproptf", 1e-3, 0.064, 1024, 450)
    assert (args.lr_schedule, args.lr_step_size, args.lr_gamma, args.warmup_epochs) == ("step", 2.4, 0.973, 3.0)
    assert (args.weight_decay, args.norm_weight_decay, args.label_smoothing, args.dropout) == (1e-5, 0.0, 0.1, 0.2)
    assert (args.model_ema, args.model_ema_decay, args.auto_augment, args.random_erase) == \
        (True, 0.9999, "randaugment", 0.2)
    mine = parse("--recipe", "ghostnetv2", "-b", "256", "--no-model-ema", "--random-erase", "0.5", "--opt", "adamw")
    assert (mine.lr, mine.model_ema, mine.random_erase, mine.opt) == (pytest.approx(0.016), False, 0.5, "adamw")


def test_ghostnetv3_recipe_has_distillation_weights_ema_and_no_mixing():
    from test_recipes import parse

    args = parse("--recipe", "ghostnetv3")
    assert (args.opt, args.lr, args.batch_size, args.epochs, args.lr_schedule) == ("sgd", 0.05, 1024, 300, "cosine")
    assert (args.weight_decay, args.warmup_epochs, args.label_smoothing, args.color_jitter) == (2e-5, 3.0, 0.1, 0.4)
    assert (args.model_ema, args.mixup_alpha, args.cutmix_alpha) == (True, 0.0, 0.0)
    assert (args.kd_temperature, args.kd_loss_weight, args.task_loss_weight) == (1.0, 1.0, 1.0)
    assert parse().model_ema is None and parse().opt == "sgd"  # the default recipe leaves EMA off


def test_nesterov_with_another_optimiser_is_refused():
    from conftest import refusal
    from test_recipes import parse

    assert "--nesterov is SGD's" in refusal(parse, "--opt", "rmsproptf", "--nesterov")
