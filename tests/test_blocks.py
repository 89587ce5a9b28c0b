"""Pattern math and model costs agree with brute force, with real layers and with torch's flop counter."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kronsearch import KronLinear, kronify
from kronsearch.layers.blocks import (
    contraction_macs,
    format_block,
    kron_macs,
    kron_nonzeros,
    kron_params,
    parse_block,
    valid_blocks,
)
from kronsearch.layers.costs import model_cost
from kronsearch.models import build_model

FAST = settings(max_examples=50, deadline=None)
MNIST = (1, 28, 28)


def counted_macs(module: nn.Module, *inputs: torch.Tensor, exclude: str = "scaled_dot_product") -> int:
    """Multiply-adds torch's FlopCounterMode counts for module(*inputs), minus ops whose name contains `exclude`."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    excluded = sum(n for op, n in counter.get_flop_counts()["Global"].items() if exclude in str(op))
    flops = counter.get_total_flops() - excluded
    assert flops % 2 == 0
    return flops // 2


@pytest.mark.parametrize("out_features", range(1, 25))
def test_valid_blocks_are_exactly_the_divisor_pairs_in_ascending_order(out_features):
    for in_features in range(1, 25):
        brute = [(h, w) for h in range(1, out_features + 1) for w in range(1, in_features + 1)
                 if out_features % h == 0 and in_features % w == 0]
        assert valid_blocks(out_features, in_features) == brute


@FAST
@given(h=st.integers(1, 10_000), w=st.integers(1, 10_000))
def test_parse_block_inverts_format_block(h, w):
    assert parse_block(format_block((h, w))) == (h, w)
    assert parse_block([h, w]) == parse_block((h, w)) == (h, w)


def test_parse_block_accepts_upper_case_x_and_spaces():
    assert parse_block("4X8") == (4, 8)
    assert parse_block(" 4 x 8 ") == (4, 8)


@pytest.mark.parametrize("bad", [
    "4", "4x", "x4", "4x4x4", "4*4", "4 by 4", "-4x4", "4.0x4", "\u00b2x4", "", [4], [4, 4, 4], [4.0, 4],
    [True, 4], ["4", 4], 16, None,
])
def test_parse_block_rejects_bad_spellings(bad):
    with pytest.raises(ValueError, match="HxW"):
        parse_block(bad)


@pytest.mark.parametrize("bad", ["0x4", "4x0", [0, 4], (4, -4)])
def test_parse_block_rejects_sides_below_one(bad):
    with pytest.raises(ValueError, match="block sides must be >= 1"):
        parse_block(bad)


@FAST
@given(m1=st.integers(1, 6), n1=st.integers(1, 6), h=st.integers(1, 6), w=st.integers(1, 6),
       r=st.integers(1, 4), bias=st.booleans())
def test_kron_params_counts_the_trainable_parameters_of_a_real_kron_linear(m1, n1, h, w, r, bias):
    layer = KronLinear(n1 * w, m1 * h, (h, w), r, bias=bias)
    real = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert kron_params(m1 * h, n1 * w, (h, w), r, bias) == real


@FAST
@given(m1=st.integers(1, 8), n1=st.integers(1, 8), h=st.integers(1, 8), w=st.integers(1, 8),
       r=st.integers(1, 3), order=st.sampled_from([None, 1, 2]))
def test_kron_macs_equal_the_flop_counter_on_one_row_of_the_real_forward(m1, n1, h, w, r, order):
    layer = KronLinear(n1 * w, m1 * h, (h, w), r)
    if order is not None:
        layer.order = order
    expected = contraction_macs(m1, n1, h, w, r)[order - 1] if order else kron_macs(m1 * h, n1 * w, (h, w), r)
    assert counted_macs(layer, torch.randn(1, n1 * w)) == expected


@pytest.mark.parametrize("name, options", [("mlp", {"hidden": (64, 32)}), ("lenet5", {}),
                                           ("vit", {"dim": 32, "depth": 1, "heads": 2})])
@pytest.mark.parametrize("kron", [None, "block", "candidates"])
def test_model_cost_macs_equal_the_flop_counter_on_whole_models(name, options, kron):
    """Attention products (scaled_dot_product ops) are parameter-free and deliberately not counted."""
    shape = MNIST if name != "vit" else (3, 32, 32)
    torch.manual_seed(0)
    model = build_model(name, shape, 10, **options)
    if kron == "block":
        report = kronify(model, block=(2, 2), rank=2)
        assert report.replaced
    elif kron == "candidates":
        report = kronify(model, candidates=[(2, 2), (4, 4), (1, 8)], rank=1)
        assert report.replaced
    assert model_cost(model, shape).total.macs == counted_macs(model, torch.zeros(1, *shape))


def test_model_cost_layer_macs_sum_to_the_total_and_cover_every_weight_layer():
    model = build_model("lenet5", MNIST, 10)
    kronify(model, block=(2, 2))
    cost = model_cost(model, MNIST)
    assert list(cost.layers) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert sum(c.macs for c in cost.layers.values()) == cost.total.macs


def test_model_cost_params_are_the_trainable_parameter_count():
    model = build_model("mlp", MNIST, 10, hidden=(32,))
    kronify(model, block=(4, 4), rank=2, exclude=["head"])
    model.head.bias.requires_grad_(False)
    cost = model_cost(model, MNIST)
    assert cost.total.params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert cost.layers["head"].params == model.head.weight.numel()


def test_model_cost_nonzeros_count_surviving_blocks_of_kron_layers_and_every_weight_of_dense_ones():
    model = build_model("mlp", MNIST, 10, hidden=(32,))
    kronify(model, block=(4, 7), exclude=["head"])
    layer = model.layers[0]
    with torch.no_grad():
        layer.s[:, ::3] = 0.0  # 8 x 112 grid: columns 0, 3, ..., 111 -> 38 of 112 pruned
        layer.s[0, 1] = 1e-30  # not exactly 0: alive (the proximal steps leave pruned blocks at exactly 0)
    alive = 8 * (112 - 38)
    cost = model_cost(model, MNIST)
    assert cost.layers["layers.0"].nonzeros == kron_nonzeros((4, 7), alive) == alive * 28
    assert cost.layers["head"].nonzeros == 10 * 32
    assert cost.total.nonzeros == alive * 28 + 10 * 32
