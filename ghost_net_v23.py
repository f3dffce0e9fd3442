"""GhostNetV2 and GhostNetV3, the successors of GhostNet (ghost_net.py) by the same authors:

- GhostNetV2: Tang et al., "GhostNetV2: Enhance Cheap Operation with Long-Range Attention", NeurIPS 2022
  (arXiv:2211.12905). From the third bottleneck on, the expanding Ghost module is multiplied by a sigmoid gate,
  "DFC attention": the input pooled to half size, a 1x1 conv, then a 1x5 and a 5x1 depthwise conv (each with
  BatchNorm), upsampled back. Everything else is GhostNet v1.
- GhostNetV3: Liu et al., "GhostNetV3: Exploring the Training Strategies for Compact Models" (arXiv:2404.11202).
  Same layout as V2, but each convolution of a Ghost module and each strided depthwise conv is trained as parallel
  branches (three conv+BN of the full kernel, a 1x1 conv+BN, and for the cheap depthwise conv a BN of its input),
  which ``GhostNetV3.reparameterize()`` folds into one convolution with a bias for deployment. The folded model
  computes the same function (to float rounding) with the cost of the V2-like network.

Module names follow timm 1.0's ``ghostnetv2_*`` and ``ghostnetv3_*`` (which follow the official releases), so their
state_dicts load with ``strict=True``; after ``reparameterize()`` the names are those of timm's deployed form.
Imports torch and the GhostNet v1 file only (it shares the stem, head, SE and v1 bottleneck).

Print parameters (training form and folded) and multiply-adds (folded) for each version and width:

    python ghost_net_v23.py
    python ghost_net_v23.py --versions v3 --widths 1.0 --input-size 160
"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ghost_net import GhostBottleneck, GhostModule, GhostNet, count_macs, count_params

# GhostNet v1's table with one more column. Grouping as in ghost_net.py (one inner tuple per nn.Sequential).
# k = depthwise kernel, t = expansion (mid) channels, c = output channels, SE = squeeze-excite ratio, s = stride,
# DFC = the expanding Ghost module has DFC attention (every bottleneck from the third on, as in both papers).
GHOSTNET_V23_CFG = (
    # k, t, c, SE, s, DFC
    ((3, 16, 16, 0.0, 1, False),),  # 112 px
    ((3, 48, 24, 0.0, 2, False),),  # 56 px
    ((3, 72, 24, 0.0, 1, True),),
    ((5, 72, 40, 0.25, 2, True),),  # 28 px
    ((5, 120, 40, 0.25, 1, True),),
    ((3, 240, 80, 0.0, 2, True),),  # 14 px
    (
        (3, 200, 80, 0.0, 1, True),
        (3, 184, 80, 0.0, 1, True),
        (3, 184, 80, 0.0, 1, True),
        (3, 480, 112, 0.25, 1, True),
        (3, 672, 112, 0.25, 1, True),
    ),
    ((5, 672, 160, 0.25, 2, True),),  # 7 px
    (
        (5, 960, 160, 0.0, 1, True),
        (5, 960, 160, 0.25, 1, True),
        (5, 960, 160, 0.0, 1, True),
        (5, 960, 160, 0.25, 1, True),
    ),
)
REP_BRANCHES = 3  # parallel full-kernel conv+BN branches of each re-parameterisable conv in GhostNetV3
VERSIONS = ("v2", "v3")


def dfc_branch(in_chs: int, out_chs: int) -> nn.Sequential:
    """DFC attention's convolutions: 1x1 conv, 1x5 then 5x1 depthwise ("decoupled fully connected"), each + BN."""
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.Conv2d(out_chs, out_chs, (1, 5), 1, (0, 2), groups=out_chs, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.Conv2d(out_chs, out_chs, (5, 1), 1, (2, 0), groups=out_chs, bias=False),
        nn.BatchNorm2d(out_chs),
    )


def dfc_gate(branch: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` (N, C, H, W) times the sigmoid of ``branch`` on ``x`` pooled to (H/2, W/2), upsampled (nearest)."""
    gate = torch.sigmoid(branch(F.avg_pool2d(x, kernel_size=2, stride=2)))
    return out * F.interpolate(gate, size=(out.shape[-2], out.shape[-1]), mode="nearest")


class GhostModuleV2(GhostModule):
    """GhostNet's Ghost module with its output gated by DFC attention computed from its input."""

    def __init__(self, in_chs: int, out_chs: int, relu: bool = True) -> None:
        super().__init__(in_chs, out_chs, relu=relu)
        self.short_conv = dfc_branch(in_chs, out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dfc_gate(self.short_conv, x, super().forward(x))


class GhostBottleneckV2(GhostBottleneck):
    """GhostNet's bottleneck whose expanding Ghost module has DFC attention when ``dfc``."""

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, dw_kernel_size: int = 3, stride: int = 1,
                 se_ratio: float = 0.0, dfc: bool = True) -> None:
        super().__init__(in_chs, mid_chs, out_chs, dw_kernel_size, stride, se_ratio)
        if dfc:
            self.ghost1 = GhostModuleV2(in_chs, mid_chs, relu=True)


class ConvBn(nn.Module):
    """One re-parameterisable branch: conv (no bias) -> BatchNorm, no activation."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv(x))


def _fold_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one convolution computing conv(weight) followed by ``bn`` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def fuse_branches(branches: list[ConvBn], kernel_size: int, skip: nn.BatchNorm2d | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the single ``kernel_size`` convolution equal to the sum of ``branches`` (smaller kernels are
    zero-padded to the centre) plus ``skip``, a BatchNorm of the input (a depthwise conv whose kernel is 1 at the
    centre). All branches share stride and groups; each output channel of a depthwise skip reads its own input."""
    weight, bias = 0.0, 0.0
    for branch in branches:
        w, b = _fold_bn(branch.conv.weight, branch.bn1)
        pad = (kernel_size - w.shape[-1]) // 2
        weight, bias = weight + F.pad(w, [pad, pad, pad, pad]), bias + b
    if skip is not None:
        identity = torch.zeros(skip.num_features, 1, kernel_size, kernel_size, dtype=skip.weight.dtype,
                               device=skip.weight.device)
        identity[:, 0, kernel_size // 2, kernel_size // 2] = 1.0
        w, b = _fold_bn(identity, skip)
        weight, bias = weight + w, bias + b
    return weight, bias


def folded_conv(like: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A convolution shaped as ``like`` (channels, kernel, stride, padding, groups) with ``weight`` and a ``bias``."""
    conv = nn.Conv2d(like.in_channels, like.out_channels, like.kernel_size, like.stride, like.padding,
                     like.dilation, like.groups, bias=True, device=weight.device, dtype=weight.dtype)
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(bias)
    return conv


class GhostModuleV3(nn.Module):
    """A Ghost module (``out_chs`` channels: half from a 1x1 conv, half from a 3x3 depthwise conv of that half) whose
    two convolutions are trained as parallel branches: the 1x1 as ``REP_BRANCHES`` conv+BN; the depthwise as
    ``REP_BRANCHES`` 3x3 conv+BN, a 1x1 conv+BN and a BN of its input. ``dfc`` adds V2's DFC attention gate.
    ``reparameterize()`` folds the branches into ``primary_conv`` and ``cheap_operation`` (conv with bias + act)."""

    def __init__(self, in_chs: int, out_chs: int, relu: bool = True, dfc: bool = False, dw_size: int = 3) -> None:
        super().__init__()
        self.out_chs = out_chs
        self.dw_size = dw_size
        self.deployed = False
        primary_chs = math.ceil(out_chs / 2)
        self.primary_conv = nn.Identity()  # the folded (conv, act) after reparameterize()
        self.cheap_operation = nn.Identity()
        self.primary_rpr_conv = nn.ModuleList([ConvBn(in_chs, primary_chs, 1) for _ in range(REP_BRANCHES)])
        self.primary_activation = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.cheap_rpr_skip = nn.BatchNorm2d(primary_chs)
        self.cheap_rpr_conv = nn.ModuleList(
            [ConvBn(primary_chs, primary_chs, dw_size, groups=primary_chs) for _ in range(REP_BRANCHES)])
        self.cheap_rpr_scale = ConvBn(primary_chs, primary_chs, 1, groups=primary_chs)
        self.cheap_activation = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.short_conv = dfc_branch(in_chs, out_chs) if dfc else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            primary = self.primary_conv(x)
            cheap = self.cheap_operation(primary)
        else:
            primary = self.primary_rpr_conv[0](x)
            for branch in self.primary_rpr_conv[1:]:
                primary = primary + branch(x)
            primary = self.primary_activation(primary)
            cheap = self.cheap_rpr_scale(primary) + self.cheap_rpr_skip(primary)
            for branch in self.cheap_rpr_conv:
                cheap = cheap + branch(primary)
            cheap = self.cheap_activation(cheap)
        out = torch.cat([primary, cheap], dim=1)[:, : self.out_chs]
        return out if self.short_conv is None else dfc_gate(self.short_conv, x, out)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one 1x1 and one depthwise conv with biases; the output stays the same in eval."""
        if self.deployed:
            return
        weight, bias = fuse_branches(list(self.primary_rpr_conv), 1)
        self.primary_conv = nn.Sequential(folded_conv(self.primary_rpr_conv[0].conv, weight, bias),
                                          self.primary_activation)
        weight, bias = fuse_branches([*self.cheap_rpr_conv, self.cheap_rpr_scale], self.dw_size, self.cheap_rpr_skip)
        self.cheap_operation = nn.Sequential(folded_conv(self.cheap_rpr_conv[0].conv, weight, bias),
                                             self.cheap_activation)
        del self.primary_rpr_conv, self.cheap_rpr_skip, self.cheap_rpr_conv, self.cheap_rpr_scale
        self.deployed = True


class GhostBottleneckV3(GhostBottleneck):
    """GhostNet's bottleneck with GhostModuleV3s, and its strided depthwise conv trained as ``REP_BRANCHES`` conv+BN
    and a 1x1 conv+BN in parallel (``dw_rpr_*``), folded into ``conv_dw`` (with a bias) by ``reparameterize()``."""

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, dw_kernel_size: int = 3, stride: int = 1,
                 se_ratio: float = 0.0, dfc: bool = True) -> None:
        super().__init__(in_chs, mid_chs, out_chs, dw_kernel_size, stride, se_ratio)
        self.deployed = False
        self.dw_kernel_size = dw_kernel_size
        self.ghost1 = GhostModuleV3(in_chs, mid_chs, relu=True, dfc=dfc)
        self.ghost2 = GhostModuleV3(mid_chs, out_chs, relu=False)
        self.conv_dw = nn.Identity()  # the folded strided depthwise conv after reparameterize()
        self.bn_dw = nn.Identity()
        self.dw_rpr_conv = nn.ModuleList()
        self.dw_rpr_scale = None
        if stride > 1:
            self.dw_rpr_conv.extend(ConvBn(mid_chs, mid_chs, dw_kernel_size, stride, groups=mid_chs)
                                    for _ in range(REP_BRANCHES))
            self.dw_rpr_scale = ConvBn(mid_chs, mid_chs, 1, stride, groups=mid_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ghost1(x)
        if self.stride > 1:
            if self.deployed:
                out = self.bn_dw(self.conv_dw(out))
            else:
                dw = self.dw_rpr_scale(out)
                for branch in self.dw_rpr_conv:
                    dw = dw + branch(out)
                out = dw
        if self.se is not None:
            out = self.se(out)
        return self.ghost2(out) + self.shortcut(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the strided depthwise branches into ``conv_dw`` (the Ghost modules fold themselves)."""
        if self.deployed:
            return
        if self.stride > 1:
            weight, bias = fuse_branches([*self.dw_rpr_conv, self.dw_rpr_scale], self.dw_kernel_size)
            self.conv_dw = folded_conv(self.dw_rpr_conv[0].conv, weight, bias)
        del self.dw_rpr_conv, self.dw_rpr_scale
        self.deployed = True


class GhostNetV2(GhostNet):
    """GhostNetV2: GhostNet whose bottlenecks from the third on have DFC attention (``GHOSTNET_V23_CFG``)."""

    def make_block(self, in_chs: int, mid_chs: int, out_chs: int, k: int, s: int, se_ratio: float,
                   dfc: bool = False) -> nn.Module:
        return GhostBottleneckV2(in_chs, mid_chs, out_chs, k, s, se_ratio, dfc)


class GhostNetV3(GhostNet):
    """GhostNetV3: the GhostNetV2 layout with re-parameterisable branches; ``reparameterize()`` folds them."""

    def make_block(self, in_chs: int, mid_chs: int, out_chs: int, k: int, s: int, se_ratio: float,
                   dfc: bool = False) -> nn.Module:
        return GhostBottleneckV3(in_chs, mid_chs, out_chs, k, s, se_ratio, dfc)

    @property
    def deployed(self) -> bool:
        """Whether the branches are folded (inference only: training the folded form is not the paper's model)."""
        return all(m.deployed for m in self.modules() if isinstance(m, (GhostModuleV3, GhostBottleneckV3)))

    def reparameterize(self) -> "GhostNetV3":
        """Fold every parallel branch into single convolutions, in place, and return the model. The outputs in eval
        mode stay the same up to float rounding (tests/test_ghost_net_v23.py: 1e-9 of the largest logit in float64,
        1e-4 in float32); in training mode they differ, as BatchNorm then uses batch statistics, so fold only for
        inference."""
        for module in list(self.modules()):
            if isinstance(module, (GhostModuleV3, GhostBottleneckV3)):
                module.reparameterize()
        return self


def ghost_net_v23(version: str = "v3", width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.2,
                  **kwargs) -> GhostNet:
    """Build GhostNetV2 (``version="v2"``; published widths 1.0, 1.3, 1.6) or GhostNetV3 (``"v3"``; 0.5, 1.0, 1.3,
    1.6) at ``width_mult``, in training form; extra kwargs go to ``GhostNet``."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, not {version!r}")
    cls = GhostNetV2 if version == "v2" else GhostNetV3
    return cls(GHOSTNET_V23_CFG, num_classes=num_classes, width=width_mult, dropout=dropout, **kwargs)


def get_args_parser() -> argparse.ArgumentParser:
    """Flags of the size-table script."""
    parser = argparse.ArgumentParser("GhostNetV2/V3 parameter and multiply-add table", add_help=True)
    parser.add_argument("--versions", default=list(VERSIONS), nargs="+", choices=VERSIONS, help="which models")
    parser.add_argument("--input-size", default=224, type=int, help="square input resolution in pixels")
    parser.add_argument("--widths", default=[0.5, 1.0, 1.3, 1.6], type=float, nargs="+", help="width multipliers")
    parser.add_argument("--num-classes", default=1000, type=int, help="classifier outputs")
    return parser


def main(args: argparse.Namespace) -> None:
    """Print parameters in training form and folded, and multiply-adds of the folded model, per version and width."""
    print(f"GhostNetV2/V3, {args.num_classes} classes, multiply-adds at {args.input_size}x{args.input_size} px")
    print(f"{'model':>6} {'width':>6} {'params':>12} {'folded':>12} {'MACs':>14}")
    for version in args.versions:
        for width in args.widths:
            model = ghost_net_v23(version, width_mult=width, num_classes=args.num_classes).eval()
            params = count_params(model)
            if isinstance(model, GhostNetV3):
                model.reparameterize()
            folded, macs = count_params(model), count_macs(model, args.input_size)
            print(f"{version:>6} {width:>6.2f} {params:>12,} {folded:>12,} {macs:>14,}  ({macs / 1e6:.1f} M MACs)")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
