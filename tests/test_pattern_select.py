"""PatternSelectLinear: candidate block shapes in one layer, their norms and penalty, removal, the winner."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kronsearch import KronLinear, PatternSelectLinear, finalize_model, l1_penalty
from tests.randomize import randomized

CANDIDATES = [(2, 2), (4, 4), (1, 8)]


def select_layer(rank: int = 2, bias: bool = True, seed: int = 0) -> PatternSelectLinear:
    return randomized(PatternSelectLinear(16, 8, CANDIDATES, rank=rank, bias=bias), seed)


def model_with_both_kinds() -> nn.Sequential:
    return randomized(nn.Sequential(PatternSelectLinear(16, 8, CANDIDATES, rank=2), nn.ReLU(),
                                    KronLinear(8, 4, (2, 2)), nn.Linear(4, 3)))


def hand_penalty(model: nn.Sequential, lambda2: float) -> torch.Tensor:
    """lambda2 * the sum over every S (candidates and plain KronLinear) of ||S||_1, written out."""
    select, kron = model[0], model[2]
    branches = [select.branches[name] for name in ("2x2", "4x4", "1x8")]
    return lambda2 * (sum(b.s.abs().sum() for b in branches) + kron.s.abs().sum())


def test_forward_is_the_sum_of_the_candidate_branches_plus_one_shared_bias():
    layer = select_layer()
    x = torch.randn(5, 16, dtype=torch.float64)
    expected = sum(branch(x) for branch in layer.branches.values()) + layer.bias
    torch.testing.assert_close(layer(x), expected)
    assert all(branch.bias is None for branch in layer.branches.values())


def test_l1_penalty_is_lambda2_times_every_s_l1_norm_candidates_included():
    model = model_with_both_kinds()
    torch.testing.assert_close(l1_penalty(model, 0.07), hand_penalty(model, 0.07))


def test_candidate_norms_equal_the_frobenius_norm_of_each_materialized_w_k_and_are_differentiable():
    layer = select_layer(rank=3)
    expected = torch.stack([b.materialize().norm() for b in layer.branches.values()])
    torch.testing.assert_close(layer.candidate_norms(), expected)
    s = layer.branches["4x4"].s
    got, = torch.autograd.grad(layer.candidate_norms()[1], s)
    by_hand, = torch.autograd.grad(layer.branches["4x4"].materialize().norm(), s)
    torch.testing.assert_close(got, by_hand)


@pytest.mark.parametrize("rescale", ["s_by_c_and_a_by_1_over_c", "a_by_c_and_b_by_1_over_c"])
def test_candidate_norms_do_not_change_when_factors_are_rescaled_against_each_other(rescale):
    layer = select_layer()
    before = layer.candidate_norms()
    branch = layer.branches["2x2"]
    with torch.no_grad():
        first, second = (branch.s, branch.a) if rescale.startswith("s_") else (branch.a, branch.b)
        first.mul_(7.0)
        second.div_(7.0)
    torch.testing.assert_close(layer.candidate_norms(), before)


def test_remove_drops_the_candidate_from_the_forward_and_returns_its_parameters():
    layer = select_layer()
    x = torch.randn(5, 16, dtype=torch.float64)
    gone = layer.branches["4x4"]
    params = layer.remove("4x4")
    assert list(layer.branches) == ["2x2", "1x8"]
    assert {id(p) for p in params} == {id(p) for p in gone.parameters()}
    expected = layer.branches["2x2"](x) + layer.branches["1x8"](x) + layer.bias
    torch.testing.assert_close(layer(x), expected)


def test_remove_refuses_an_unknown_or_the_last_candidate():
    layer = select_layer()
    with pytest.raises(KeyError, match="no live candidate '8x8'; live: 2x2, 4x4, 1x8"):
        layer.remove("8x8")
    layer.remove("2x2")
    layer.remove("4x4")
    with pytest.raises(ValueError, match="last candidate"):
        layer.remove("1x8")


def test_only_computes_with_one_candidate_inside_the_block_and_restores_all_after():
    layer = select_layer()
    x = torch.randn(5, 16, dtype=torch.float64)
    full = layer(x)
    with layer.only("1x8"):
        torch.testing.assert_close(layer(x), layer.branches["1x8"](x) + layer.bias)
    assert list(layer.branches) == ["2x2", "4x4", "1x8"]
    torch.testing.assert_close(layer(x), full)


def test_l1_penalty_of_a_model_without_kron_layers_is_zero():
    assert l1_penalty(nn.Linear(4, 3), 0.07).item() == 0.0


def test_candidates_that_do_not_divide_the_layer_are_dropped_with_a_warning():
    with pytest.warns(UserWarning, match=r"\['5x5', '3x3'\] do not divide \(out=12, in=16\); dropped"):
        layer = PatternSelectLinear(16, 12, [(4, 4), (5, 5), (3, 4), (4, 4), (3, 3)])
    assert layer.candidates == [(4, 4), (3, 4)]
    assert list(layer.branches) == ["4x4", "3x4"]


def test_no_candidate_dividing_the_layer_is_an_error_listing_the_valid_blocks():
    with pytest.raises(ValueError, match=r"no candidate block in \['5x5'\] divides a layer of shape "
                                         r"\(out=6, in=4\); valid blocks: 1x1, 1x2, 1x4, 2x1, .*, 6x4"):
        PatternSelectLinear(4, 6, [(5, 5)])


def test_weight_norms_equal_the_frobenius_norm_of_each_materialized_branch():
    layer = select_layer(rank=3)
    norms = layer.weight_norms()
    assert list(norms) == ["2x2", "4x4", "1x8"]
    for name, branch in layer.branches.items():
        assert norms[name] == pytest.approx(branch.materialize().norm().item(), rel=1e-9)


@pytest.mark.parametrize("boosted", ["2x2", "4x4", "1x8"])
def test_selected_picks_the_candidate_with_the_largest_weight_norm(boosted):
    layer = select_layer()
    with torch.no_grad():
        layer.branches[boosted].b.mul_(10)
    norms = {name: branch.materialize().norm().item() for name, branch in layer.branches.items()}
    block, reported = layer.selected()
    assert block == layer.branches[max(norms, key=norms.get)].block == layer.branches[boosted].block
    assert reported == pytest.approx(norms)


@pytest.mark.parametrize("bias", [True, False])
def test_finalize_returns_the_winner_alone_computing_its_branch_output_plus_the_bias(bias):
    layer = select_layer(bias=bias)
    with torch.no_grad():
        layer.branches["4x4"].b.mul_(10)
    final = layer.finalize()
    x = torch.randn(5, 16, dtype=torch.float64)
    assert type(final) is KronLinear and (final.block, final.rank) == ((4, 4), 2)
    expected = layer.branches["4x4"](x) + (layer.bias if bias else 0)
    torch.testing.assert_close(final(x), expected)


def test_finalize_model_replaces_every_select_layer_in_place_and_returns_the_selections():
    last = randomized(PatternSelectLinear(8, 8, CANDIDATES), seed=2)
    model = nn.Sequential(nn.Linear(16, 16), nn.Sequential(select_layer(seed=1)), nn.ReLU(), last).double()
    with torch.no_grad():
        model[1][0].branches["1x8"].b.mul_(10)
        model[3].branches["2x2"].b.mul_(10)
        for layer, winner in ((model[1][0], "1x8"), (model[3], "2x2")):
            for name, branch in layer.branches.items():
                if name != winner:
                    branch.s.zero_()  # the group lasso's end state: losers contribute exactly 0
    x = torch.randn(5, 16, dtype=torch.float64)
    before = model(x)
    expected = {"1.0": model[1][0].selected(), "3": model[3].selected()}

    selections = finalize_model(model)

    assert selections == expected
    assert {name: block for name, (block, _) in selections.items()} == {"1.0": (1, 8), "3": (2, 2)}
    assert type(model[1][0]) is KronLinear and model[1][0].block == (1, 8)
    assert type(model[3]) is KronLinear and model[3].block == (2, 2)
    assert not any(isinstance(m, PatternSelectLinear) for m in model.modules())
    torch.testing.assert_close(model(x), before)


def test_from_linear_starts_every_candidate_as_its_nearest_kronecker_sum():
    torch.manual_seed(0)
    dense = torch.nn.Linear(16, 8)
    layer = PatternSelectLinear.from_linear(dense, [(2, 2), (4, 4), (8, 4)], rank=2)
    for block, branch in zip(layer.candidates, layer.branches.values()):
        nearest = KronLinear.from_linear(dense, block, 2).materialize()
        torch.testing.assert_close(branch.materialize(), nearest)
    torch.testing.assert_close(layer.bias, dense.bias)


def test_from_linear_of_a_kronecker_weight_reproduces_the_dense_layer_with_each_candidate_alone():
    """At the rearrangement rank every candidate is exact."""
    torch.manual_seed(0)
    dense = torch.nn.Linear(16, 8)
    with torch.no_grad():
        dense.weight.copy_(torch.kron(torch.randn(2, 4), torch.randn(4, 4)))
    layer = PatternSelectLinear.from_linear(dense, [(4, 4), (8, 4)], rank=4)  # both exact at rank 4
    x = torch.randn(5, 16)
    for name in layer.branches:
        with layer.only(name):
            torch.testing.assert_close(layer(x), dense(x), rtol=1e-4, atol=1e-5)
