"""GhostNet model spec: official layout, parameter and multiply-add counts, forward/backward, dropout.

    python -m pytest tests/test_ghostnet.py -q
"""
import pytest
import torch
import torch.nn as nn

from ghost_net import (
    GHOSTNET_CFG,
    GhostNet,
    _make_divisible,
    count_macs,
    count_params,
    ghost_net,
)

# (key, shape) pairs read off the official ghostnet_pytorch/ghostnet.py module tree at width 1.0, 1000 classes.
OFFICIAL_KEY_SHAPES = [
    ("conv_stem.weight", (16, 3, 3, 3)),
    ("bn1.running_var", (16,)),
    # blocks.0.0: 16 -> mid 16 -> 16, stride 1, identity shortcut
    ("blocks.0.0.ghost1.primary_conv.0.weight", (8, 16, 1, 1)),
    ("blocks.0.0.ghost1.primary_conv.1.weight", (8,)),
    ("blocks.0.0.ghost1.cheap_operation.0.weight", (8, 1, 3, 3)),
    ("blocks.0.0.ghost1.cheap_operation.1.num_batches_tracked", ()),
    ("blocks.0.0.ghost2.primary_conv.0.weight", (8, 16, 1, 1)),
    # blocks.1.0: 16 -> mid 48 -> 24, stride 2: depthwise conv between the Ghost modules and a conv shortcut
    ("blocks.1.0.conv_dw.weight", (48, 1, 3, 3)),
    ("blocks.1.0.bn_dw.running_mean", (48,)),
    ("blocks.1.0.shortcut.0.weight", (16, 1, 3, 3)),
    ("blocks.1.0.shortcut.1.weight", (16,)),
    ("blocks.1.0.shortcut.2.weight", (24, 16, 1, 1)),
    ("blocks.1.0.shortcut.3.bias", (24,)),
    # blocks.3.0: 5x5, mid 72, SE with _make_divisible(72 * 0.25, 4) = 20 reduced channels
    ("blocks.3.0.conv_dw.weight", (72, 1, 5, 5)),
    ("blocks.3.0.se.conv_reduce.weight", (20, 72, 1, 1)),
    ("blocks.3.0.se.conv_reduce.bias", (20,)),
    ("blocks.3.0.se.conv_expand.weight", (72, 20, 1, 1)),
    ("blocks.3.0.se.conv_expand.bias", (72,)),
    # blocks.6.3: 80 -> mid 480 -> 112, stride 1 but channel change, so a conv shortcut and SE 120
    ("blocks.6.3.se.conv_reduce.weight", (120, 480, 1, 1)),
    ("blocks.6.3.shortcut.2.weight", (112, 80, 1, 1)),
    ("blocks.6.4.ghost2.cheap_operation.0.weight", (56, 1, 3, 3)),
    ("blocks.7.0.conv_dw.weight", (672, 1, 5, 5)),
    ("blocks.8.3.se.conv_expand.weight", (960, 240, 1, 1)),
    # the 1x1 ConvBnAct after the stages, then the bias-carrying head conv and the classifier
    ("blocks.9.0.conv.weight", (960, 160, 1, 1)),
    ("blocks.9.0.bn1.weight", (960,)),
    ("conv_head.weight", (1280, 960, 1, 1)),
    ("conv_head.bias", (1280,)),
    ("classifier.weight", (1000, 1280)),
    ("classifier.bias", (1000,)),
]

# Official state_dict size: 16 bottlenecks x 24 (two Ghost modules, each 2 convs + 2 BNs of 5 entries)
# + 4 strided blocks x 6 (conv_dw, bn_dw) + 7 SE blocks x 4 + 5 conv shortcuts x 12
# + stem 6 + blocks.9.0 6 + conv_head 2 + classifier 2 = 384 + 24 + 28 + 60 + 16 = 512.
# Cross-checked by building the official module tree in a scratch directory: same 512 keys, same order.
OFFICIAL_NUM_STATE_DICT_KEYS = 512


@pytest.fixture(scope="module")
def model_1x() -> GhostNet:
    """Width 1.0, eval mode; tests that mutate a model build their own."""
    return ghost_net().eval()


def test_width_1_has_official_parameter_count(model_1x: GhostNet) -> None:
    assert count_params(model_1x) == 5_182_508


@pytest.mark.parametrize("width, params", [(0.5, 2_587_292), (1.3, 7_358_820)])
def test_other_widths_have_the_parameter_counts_of_the_official_layout(width: float, params: int) -> None:
    # Counts measured on the official module tree built at the same width.
    assert count_params(ghost_net(width_mult=width)) == params


def test_state_dict_keys_and_shapes_match_official_layout(model_1x: GhostNet) -> None:
    state = model_1x.state_dict()
    for key, shape in OFFICIAL_KEY_SHAPES:
        assert key in state, f"missing official key {key}"
        assert tuple(state[key].shape) == shape, key


def test_state_dict_has_official_number_of_entries(model_1x: GhostNet) -> None:
    state = model_1x.state_dict()
    assert len(state) == OFFICIAL_NUM_STATE_DICT_KEYS
    # Blocks without a stride or SE carry no conv_dw / bn_dw / se entries; identity shortcuts carry none either.
    assert not any(k.startswith(("blocks.0.0.conv_dw", "blocks.0.0.se")) for k in state)
    assert not any(k.startswith("blocks.0.0.shortcut") for k in state)
    assert isinstance(model_1x.blocks[0][0].shortcut, nn.Sequential) and len(model_1x.blocks[0][0].shortcut) == 0


@pytest.mark.parametrize(
    "value, divisor, expected",
    [
        (16 * 0.5, 4, 8),
        (16 * 1.3, 4, 20),
        (72 * 0.25, 4, 20),  # 18 rounds half up to 20
        (120 * 0.25, 4, 32),  # 30 rounds half up to 32
        (184 * 1.3, 4, 240),
        (10, 8, 16),  # nearest multiple 8 is below 90% of 10, so bump by one divisor
        (3, 8, 8),  # never below the divisor
    ],
)
def test_make_divisible_rounds_like_official(value: float, divisor: int, expected: int) -> None:
    assert _make_divisible(value, divisor) == expected


def test_config_table_is_an_immutable_tuple() -> None:
    assert isinstance(GHOSTNET_CFG, tuple)
    assert all(isinstance(stage, tuple) and all(isinstance(row, tuple) for row in stage) for stage in GHOSTNET_CFG)
    assert sum(len(stage) for stage in GHOSTNET_CFG) == 16


def test_saved_state_dict_reloads_strictly_with_identical_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    source = ghost_net()
    source.train()
    with torch.no_grad():
        source(torch.randn(4, 3, 32, 32))  # move BN running stats away from their defaults
    source.eval()
    path = tmp_path / "ghostnet.pth"
    torch.save(source.state_dict(), path)

    torch.manual_seed(1)
    target = ghost_net()
    target.load_state_dict(torch.load(path, weights_only=True), strict=True)
    target.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


@pytest.mark.parametrize("size", [224, 32])
def test_forward_gives_logits_per_image(model_1x: GhostNet, size: int) -> None:
    with torch.no_grad():
        out = model_1x(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1000)
    assert torch.isfinite(out).all()


def test_forward_features_and_pre_logits_shapes(model_1x: GhostNet) -> None:
    with torch.no_grad():
        features = model_1x.forward_features(torch.randn(1, 3, 224, 224))
        pooled = model_1x.forward_head(features, pre_logits=True)
    assert features.shape == (1, 960, 7, 7)  # (N, C, H/32, W/32)
    assert pooled.shape == (1, 1280)


def test_backward_in_train_mode_gives_every_parameter_a_finite_gradient() -> None:
    torch.manual_seed(0)
    model = ghost_net().train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 7]))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("width", [0.5, 1.3])
def test_other_widths_build_and_run_at_32_px(width: float) -> None:
    model = ghost_net(width_mult=width, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_macs_at_224_match_the_papers_141m(model_1x: GhostNet) -> None:
    # The counter measures 141,150,512 MACs (convs + linear only), matching the paper's "141M FLOPs".
    macs = count_macs(model_1x, input_size=224)
    assert 135e6 <= macs <= 150e6


def test_count_macs_leaves_no_hooks_and_restores_training_mode() -> None:
    model = ghost_net().train()
    count_macs(model, input_size=32)
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())


def test_count_macs_of_a_single_conv_and_linear() -> None:
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)  # 8 x 16 x 16 outputs at 32 px, 27 MACs each
    assert count_macs(conv, input_size=32) == 8 * 16 * 16 * 3 * 3 * 3
    head = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))
    assert count_macs(head, input_size=2) == 4 * 2 * 2 * 3 + 16 * 5


def test_eval_mode_forward_is_deterministic(model_1x: GhostNet) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model_1x(x), model_1x(x))


def test_train_mode_applies_dropout_before_the_classifier() -> None:
    torch.manual_seed(0)
    model = ghost_net(dropout=0.5).train()
    features = torch.rand(2, 960, 1, 1)  # forward_head has no BatchNorm, so only dropout can differ
    with torch.no_grad():
        assert not torch.equal(model.forward_head(features), model.forward_head(features))


def test_zero_dropout_model_runs() -> None:
    model = ghost_net(dropout=0.0).train()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_reset_classifier_replaces_the_named_head() -> None:
    model = ghost_net()
    model.reset_classifier(10)
    assert model.num_classes == 10
    head = getattr(model, model.classifier_name)
    assert head is model.get_classifier() and isinstance(head, nn.Linear)
    assert head.in_features == 1280 and head.out_features == 10
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
