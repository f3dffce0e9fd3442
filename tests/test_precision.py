"""Mixed precision and memory format: defaults per device, and the same training to within bf16 rounding."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from common.data import transforms
from common.errors import UserError
from common.models import factory
from common.parallel import precision
from common.train.step import TrainStep
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


@pytest.mark.slow
def test_channels_last_alone_changes_nothing_but_rounding():
    ref_loss, ref_grad = loss_and_gradient(precision.Precision("cpu", None, False))
    loss, grad = loss_and_gradient(precision.Precision("cpu", None, True))
    assert loss == pytest.approx(ref_loss, rel=1e-5)  # other kernels sum in another order: elementwise gradients of
    assert torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0) > 0.999  # a BN net at init move, not its way


def randomise_batchnorms(model: torch.nn.Module) -> None:
    """Running statistics and affine terms far from the identity, as a trained model has them."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ghostnet", "resnet18", "mobilenet_v3_small"])
def test_folded_batchnorm_gives_the_same_outputs_without_a_batchnorm(arch):
    torch.manual_seed(0)
    model = factory.create_model(arch, 10).eval()
    randomise_batchnorms(model)
    folded = factory.fold_batchnorm(model)
    bns = [type(m) for m in folded.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns == [] and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # a copy is folded
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        expected, got = model(x), folded(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_a_model_torch_fx_cannot_trace_is_not_folded():
    class DataDependent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x  # control flow on values: fx cannot trace it

    assert factory.fold_batchnorm(DataDependent()) is None
