"""GhostNet, from Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020 (arXiv:1911.11907).

A Ghost module makes half of its output channels with an ordinary 1x1 convolution and the other half with a cheap
3x3 depthwise convolution of that first half. GhostNet stacks Ghost bottlenecks in a MobileNetV3-like layout.

Module names and nesting follow the official PyTorch release (huawei-noah, ghostnet_pytorch/ghostnet.py) and timm's
`ghostnet_100`, so their ImageNet state_dicts load into `ghost_net()` with `strict=True`.

Print parameters and multiply-adds for a few widths (imports nothing beyond torch):

    python ghost_net.py
    python ghost_net.py --input-size 224 --widths 0.5 1.0 1.3
"""
import argparse
import math
import os
import signal
import sys


def _interrupted(_signum, _frame) -> None:
    print("=> interrupted by Ctrl+C (SIGINT)", file=sys.stderr, flush=True)
    os._exit(128 + signal.SIGINT)  # the size table has nothing to clean up


if __name__ == "__main__":  # as a program, a Ctrl+C (while torch loads, or later) prints one line, not a traceback
    signal.signal(signal.SIGINT, _interrupted)

import torch
import torch.nn as nn
import torch.nn.functional as F

# One inner tuple per nn.Sequential in `GhostNet.blocks`; this grouping fixes the state_dict names (blocks.6.3...).
# k = depthwise kernel, t = expansion (mid) channels, c = output channels, SE = squeeze-excite ratio, s = stride.
# Spatial sizes are for a 224 px input.
GHOSTNET_CFG = (
    # k, t, c, SE, s
    ((3, 16, 16, 0.0, 1),),  # 112 px
    ((3, 48, 24, 0.0, 2),),  # 56 px
    ((3, 72, 24, 0.0, 1),),
    ((5, 72, 40, 0.25, 2),),  # 28 px
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0.0, 2),),  # 14 px
    (
        (3, 200, 80, 0.0, 1),
        (3, 184, 80, 0.0, 1),
        (3, 184, 80, 0.0, 1),
        (3, 480, 112, 0.25, 1),
        (3, 672, 112, 0.25, 1),
    ),
    ((5, 672, 160, 0.25, 2),),  # 7 px
    (
        (5, 960, 160, 0.0, 1),
        (5, 960, 160, 0.25, 1),
        (5, 960, 160, 0.0, 1),
        (5, 960, 160, 0.25, 1),
    ),
)
STEM_CHANNELS = 16
HEAD_CHANNELS = 1280  # conv_head output; not scaled by width, as in the official model


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """Round `v` to the nearest multiple of `divisor` (at least `min_value`), never going below 90% of `v`.

    Same rule as the TensorFlow MobileNet code the official GhostNet uses, so channel counts match its checkpoints.
    """
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * v:
        rounded += divisor
    return rounded


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear sigmoid relu6(x + 3) / 6, the SE gate of GhostNet."""
    return F.relu6(x + 3.0) / 6.0


class SqueezeExcite(nn.Module):
    """Channel attention: global average -> 1x1 reduce -> ReLU -> 1x1 expand -> hard-sigmoid gate."""

    def __init__(self, channels: int, se_ratio: float = 0.25, divisor: int = 4) -> None:
        super().__init__()
        reduced = _make_divisible(channels * se_ratio, divisor)
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        gate = self.conv_expand(F.relu(self.conv_reduce(gate)))
        return x * hard_sigmoid(gate)


class ConvBnAct(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU; used once, as the 1x1 layer after the last stage."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv(x)))


class GhostModule(nn.Module):
    """`out_chs` channels from a 1x1 conv making ceil(out_chs / ratio) of them plus a depthwise conv making the rest."""

    def __init__(self, in_chs: int, out_chs: int, relu: bool = True, ratio: int = 2, dw_size: int = 3) -> None:
        super().__init__()
        self.out_chs = out_chs
        primary_chs = math.ceil(out_chs / ratio)
        cheap_chs = primary_chs * (ratio - 1)
        # Index 2 holds no weights either way; the official code uses an empty Sequential where we use Identity.
        self.primary_conv = nn.Sequential(
            nn.Conv2d(in_chs, primary_chs, 1, 1, 0, bias=False),
            nn.BatchNorm2d(primary_chs),
            nn.ReLU(inplace=True) if relu else nn.Identity(),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(primary_chs, cheap_chs, dw_size, 1, dw_size // 2, groups=primary_chs, bias=False),
            nn.BatchNorm2d(cheap_chs),
            nn.ReLU(inplace=True) if relu else nn.Identity(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primary = self.primary_conv(x)
        cheap = self.cheap_operation(primary)
        # ceil() can give one channel too many when out_chs is odd.
        return torch.cat([primary, cheap], dim=1)[:, : self.out_chs]


class GhostBottleneck(nn.Module):
    """Ghost module (expand) -> [depthwise stride-s conv] -> [SE] -> Ghost module (project, linear) + shortcut."""

    def __init__(
        self, in_chs: int, mid_chs: int, out_chs: int, dw_kernel_size: int = 3, stride: int = 1, se_ratio: float = 0.0
    ) -> None:
        super().__init__()
        self.stride = stride
        self.ghost1 = GhostModule(in_chs, mid_chs, relu=True)
        # Only strided blocks have a depthwise conv between the Ghost modules (no conv_dw / bn_dw keys otherwise).
        if stride > 1:
            padding = (dw_kernel_size - 1) // 2
            self.conv_dw = nn.Conv2d(mid_chs, mid_chs, dw_kernel_size, stride, padding, groups=mid_chs, bias=False)
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        else:
            self.conv_dw = None
            self.bn_dw = None
        self.se = SqueezeExcite(mid_chs, se_ratio) if se_ratio > 0 else None
        self.ghost2 = GhostModule(mid_chs, out_chs, relu=False)
        if in_chs == out_chs and stride == 1:
            self.shortcut = nn.Sequential()  # identity, kept as an empty Sequential like the official model
        else:
            padding = (dw_kernel_size - 1) // 2
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, in_chs, dw_kernel_size, stride, padding, groups=in_chs, bias=False),
                nn.BatchNorm2d(in_chs),
                nn.Conv2d(in_chs, out_chs, 1, 1, 0, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ghost1(x)
        if self.conv_dw is not None:
            out = self.bn_dw(self.conv_dw(out))
        if self.se is not None:
            out = self.se(out)
        return self.ghost2(out) + self.shortcut(x)


class GhostNet(nn.Module):
    """GhostNet image classifier; `width` scales every channel count except the 1280-wide head."""

    classifier_name = "classifier"  # attribute holding the final nn.Linear, for code that swaps heads

    def __init__(
        self,
        cfgs: tuple = GHOSTNET_CFG,
        num_classes: int = 1000,
        width: float = 1.0,
        dropout: float = 0.2,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = dropout
        self.num_features = HEAD_CHANNELS

        stem_chs = _make_divisible(STEM_CHANNELS * width, 4)
        self.conv_stem = nn.Conv2d(in_chans, stem_chs, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.act1 = nn.ReLU(inplace=True)

        stages = []
        in_chs = stem_chs
        for stage_cfg in cfgs:
            layers = []
            for k, exp_size, c, se_ratio, s, *extra in stage_cfg:
                out_chs = _make_divisible(c * width, 4)
                mid_chs = _make_divisible(exp_size * width, 4)
                layers.append(self.make_block(in_chs, mid_chs, out_chs, k, s, se_ratio, *extra))
                in_chs = out_chs
            stages.append(nn.Sequential(*layers))
        # The 1x1 layer after the stages is blocks.<len(cfgs)>.0 and is as wide as the last block's expansion.
        self.pool_dim = _make_divisible(cfgs[-1][-1][1] * width, 4)
        stages.append(nn.Sequential(ConvBnAct(in_chs, self.pool_dim, 1)))
        self.blocks = nn.Sequential(*stages)

        self.conv_head = nn.Conv2d(self.pool_dim, self.num_features, 1, 1, 0, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.classifier = self._make_classifier(num_classes)
        self._init_weights()

    def make_block(self, in_chs: int, mid_chs: int, out_chs: int, k: int, s: int, se_ratio: float) -> nn.Module:
        """One bottleneck of the config table; GhostNetV2/V3 (ghost_net_v23.py) build theirs here, with the
        columns their table adds after SE and s."""
        return GhostBottleneck(in_chs, mid_chs, out_chs, k, s, se_ratio=se_ratio)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        """Return the final classification layer (`self.classifier`)."""
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for `num_classes` (0 gives pooled features)."""
        self.num_classes = num_classes
        self.classifier = self._make_classifier(num_classes)
        if isinstance(self.classifier, nn.Linear):
            nn.init.normal_(self.classifier.weight, 0.0, 0.01)
            nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images -> (N, pool_dim, H/32, W/32) feature map (960 channels at width 1.0)."""
        x = self.act1(self.bn1(self.conv_stem(x)))
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(N, C, h, w) feature map -> (N, num_classes) logits, or (N, 1280) features when `pre_logits`."""
        x = F.adaptive_avg_pool2d(x, 1)  # (N, C, 1, 1)
        x = self.act2(self.conv_head(x)).flatten(1)  # (N, 1280)
        # Functional dropout, as in the official model, so it adds no state_dict entries.
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def ghost_net(width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.2, **kwargs) -> GhostNet:
    """Build GhostNet at `width_mult` (0.5, 1.0 and 1.3 in the paper); extra kwargs go to `GhostNet`."""
    return GhostNet(GHOSTNET_CFG, num_classes=num_classes, width=width_mult, dropout=dropout, **kwargs)


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not); buffers such as BN running stats are not counted."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int = 224) -> int:
    """Multiply-adds for one (1, 3, input_size, input_size) image, as torch's FlopCounterMode counts them (FLOPs / 2).

    That covers convolutions and matrix products (the classifier); BatchNorm, activations, pooling, the SE gate
    product and residual additions are not counted (the usual convention, as in the paper's FLOPs). Runs one
    eval-mode forward under no_grad and restores the model's training mode.
    """
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def get_args_parser() -> argparse.ArgumentParser:
    """Flags of the size-table script."""
    parser = argparse.ArgumentParser("GhostNet parameter and multiply-add table", add_help=True)
    parser.add_argument("--input-size", default=224, type=int, help="square input resolution in pixels")
    parser.add_argument("--widths", default=[0.5, 1.0, 1.3], type=float, nargs="+", help="width multipliers")
    parser.add_argument("--num-classes", default=1000, type=int, help="classifier outputs")
    return parser


def main(args: argparse.Namespace) -> None:
    """Print width, parameter count and multiply-adds for each requested width."""
    print(f"GhostNet, {args.num_classes} classes, multiply-adds at {args.input_size}x{args.input_size} px")
    print(f"{'width':>6} {'params':>12} {'MACs':>14}")
    for width in args.widths:
        model = ghost_net(width_mult=width, num_classes=args.num_classes)
        params, macs = count_params(model), count_macs(model, args.input_size)
        print(f"{width:>6.2f} {params:>12,} {macs:>14,}  ({params / 1e6:.2f} M params, {macs / 1e6:.1f} M MACs)")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
