"""Tests for kronsearch.models: shapes, Linear names, option validation, no `.weight` reads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kronsearch.models import MODELS, ModelError, build_model

DIGITS, MNIST, CIFAR = (1, 8, 8), (1, 28, 28), (3, 32, 32)
SMALL_VIT = {"dim": 32, "depth": 2, "heads": 2}
VIT_TINY = {"patch_size": 4, "dim": 192, "depth": 12, "heads": 3, "mlp_ratio": 4.0}


def small_options(name: str) -> dict:
    """Cheap options per model so the shape tests stay fast."""
    return {"mlp": {"hidden": (32, 16)}, "vit": SMALL_VIT}.get(name, {})


def linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


class NoWeightLinear(nn.Module):
    """Stand-in for a kronified layer: wraps a Linear under another name, exposes no `.weight`."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.inner = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def replace_linears(model: nn.Module) -> int:
    """Swap every nn.Linear in ``model`` for NoWeightLinear; return how many were swapped."""
    names = linear_names(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, NoWeightLinear(getattr(parent, child)))
    return len(names)


@pytest.mark.parametrize("shape", [DIGITS, MNIST, CIFAR], ids=["digits", "mnist", "cifar"])
@pytest.mark.parametrize("name", MODELS)
def test_model_produces_batch_by_classes_logits(name: str, shape: tuple[int, int, int]) -> None:
    if name == "lenet5" and shape == DIGITS:
        pytest.skip("lenet5 does not support 8x8 inputs (see test_lenet5_rejects_tiny_images)")
    model = build_model(name, shape, 10, **small_options(name))
    assert model(torch.randn(5, *shape)).shape == (5, 10)


def test_lenet5_rejects_tiny_images() -> None:
    with pytest.raises(ModelError, match="at least 12x12"):
        build_model("lenet5", DIGITS, 10)


def test_vit_tiny_has_expected_blocks_and_linear_names() -> None:
    model = build_model("vit", CIFAR, 10, **VIT_TINY)
    assert len(model.blocks) == 12
    expected = [
        f"blocks.{i}.{leaf}" for i in range(12) for leaf in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    ] + ["head"]
    assert linear_names(model) == expected
    assert isinstance(model.patch_embed, nn.Conv2d)
    assert model.blocks[0].attn.qkv.out_features == 3 * 192
    assert model.blocks[0].mlp.fc1.out_features == 768
    assert model.pos_embed.shape == (1, 8 * 8 + 1, 192)


def test_mlp_and_lenet5_linear_names() -> None:
    assert linear_names(build_model("mlp", MNIST, 10, hidden=[64, 32, 16])) == [
        "layers.0",
        "layers.1",
        "layers.2",
        "head",
    ]
    assert linear_names(build_model("lenet5", CIFAR, 10)) == ["fc1", "fc2", "fc3"]


@pytest.mark.parametrize("shape", [DIGITS, MNIST, CIFAR], ids=["digits", "mnist", "cifar"])
def test_linear_model_is_single_fc_over_flattened_input(shape: tuple[int, int, int]) -> None:
    model = build_model("linear", shape, 7)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert [n for n, _ in linears] == ["fc"]
    c, h, w = shape
    assert linears[0][1].in_features == c * h * w
    assert linears[0][1].out_features == 7


def test_lenet5_flattened_size_matches_classic_geometry() -> None:
    assert build_model("lenet5", MNIST, 10).fc1.in_features == 16 * 5 * 5
    assert build_model("lenet5", CIFAR, 10).fc1.in_features == 16 * 5 * 5


def test_unknown_model_lists_allowed_models() -> None:
    with pytest.raises(ModelError, match="unknown model 'resnet'.*linear, mlp, lenet5, vit"):
        build_model("resnet", CIFAR, 10)


@pytest.mark.parametrize(
    ("name", "allowed"),
    [("vit", "depth, dim, dropout, heads, mlp_ratio, patch_size"), ("mlp", "activation, hidden"), ("linear", "none")],
)
def test_unknown_option_lists_allowed_options(name: str, allowed: str) -> None:
    with pytest.raises(ModelError, match=f"unknown option.*'width'.*{name}.*allowed options: {allowed}"):
        build_model(name, CIFAR, 10, width=3)


def test_vit_patch_not_dividing_image_lists_allowed_patch_sizes() -> None:
    with pytest.raises(ModelError, match=r"patch_size 5 does not divide the 32x32 image.*\[1, 2, 4, 8, 16, 32\]"):
        build_model("vit", CIFAR, 10, patch_size=5)


def test_vit_dim_not_divisible_by_heads_lists_allowed_heads() -> None:
    with pytest.raises(ModelError, match=r"dim 10 is not divisible by heads 3.*\[1, 2, 5, 10\]"):
        build_model("vit", CIFAR, 10, dim=10, heads=3)


def test_mlp_unknown_activation_lists_allowed_activations() -> None:
    with pytest.raises(ModelError, match="unknown activation 'swish'.*relu"):
        build_model("mlp", MNIST, 10, activation="swish")


@pytest.mark.parametrize("name", MODELS)
def test_forward_never_reads_linear_weight(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, CIFAR, 10, **small_options(name)).eval()
    x = torch.randn(3, *CIFAR)
    with torch.no_grad():
        expected = model(x)
        assert replace_linears(model) > 0
        assert all(n.endswith(".inner") for n in linear_names(model))
        assert not any(hasattr(m, "weight") for m in model.modules() if isinstance(m, NoWeightLinear))
        assert torch.allclose(model(x), expected)
