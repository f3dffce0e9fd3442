"""Mixed precision and memory format: defaults per device, and the same training to within bf16 rounding."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from common import precision, transforms
from common.errors import UserError
from common.train_step import TrainStep
from ghost_net import ghost_net

CPU = torch.device("cpu")


def test_cpu_default_is_bf16_only_for_models_without_depthwise_convolutions(monkeypatch):
    resnet, ghost = torchvision.models.resnet18(num_classes=4), ghost_net(num_classes=4)
    assert not precision.has_depthwise(resnet) and precision.has_depthwise(ghost)
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert precision.choose_precision(CPU, resnet, None).amp_dtype == torch.bfloat16
    assert precision.choose_precision(CPU, ghost, None).amp_dtype is None
    assert precision.choose_precision(CPU, ghost, True).amp_dtype == torch.bfloat16  # --amp forces it
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert precision.choose_precision(CPU, resnet, None).amp_dtype is None


def test_flags_switch_each_feature_off_and_describe_says_so():
    chosen = precision.choose_precision(CPU, nn.Linear(2, 2), False, "auto", False)
    assert (chosen.amp_dtype, chosen.channels_last, chosen.describe()) == (None, False, "fp32, NCHW")
    assert precision.choose_precision(CPU, nn.Linear(2, 2), True).describe() == "AMP bf16, channels_last"
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        precision.choose_precision(CPU, nn.Linear(2, 2), True, "fp16")
    assert not precision.Precision("cpu", torch.bfloat16).grad_scaler().is_enabled()  # bf16 needs no scaling


def loss_and_gradient(prec: precision.Precision) -> tuple[float, torch.Tensor]:
    """Loss and flattened gradient of one TrainStep (lr 0) of a seeded ResNet-18 on a fixed 64-px batch."""
    torch.manual_seed(0)
    model = prec.prepare_model(torchvision.models.resnet18(num_classes=4))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    step = TrainStep(model, nn.CrossEntropyLoss(), opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0), prec)
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (32,), generator=gen)
    x = torch.rand(32, 3, 64, 64, generator=gen) + y.view(32, 1, 1, 1) * 0.1
    _, loss = step(transforms.to_model_input(x, CPU, prec.channels_last), y)
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_bf16_channels_last_step_computes_the_fp32_loss_and_gradient_direction():
    """Measured: loss within 0.03%, gradient cosine 0.93 (bf16 keeps 8 bits of mantissa). The loss after 50 steps
    on photos is compared by benchmarks/bench_train_step.py."""
    ref_loss, ref_grad = loss_and_gradient(precision.Precision("cpu", None, False))
    loss, grad = loss_and_gradient(precision.Precision("cpu", torch.bfloat16, True))
    assert loss != ref_loss and loss == pytest.approx(ref_loss, rel=0.01)
    assert torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0) > 0.85


def test_channels_last_alone_changes_nothing_but_rounding():
    ref_loss, ref_grad = loss_and_gradient(precision.Precision("cpu", None, False))
    loss, grad = loss_and_gradient(precision.Precision("cpu", None, True))
    assert loss == pytest.approx(ref_loss, rel=1e-5)  # other kernels sum in another order: elementwise gradients of
    assert torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0) > 0.999  # a BN net at init move, not its way
