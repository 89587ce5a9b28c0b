"""kronify swaps a model's nn.Linear layers, in place, for the patterns asked; plans round-trip through YAML."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kronsearch import KronLinear, LayerPattern, PatternSelectLinear, finalize_model, kronify, load_plan, model_plan


class Net(nn.Module):
    """enc.0: 32x16, enc.1: ReLU, enc.2: 16x32, head: 10x16 (weights are out x in)."""

    def __init__(self, dtype=torch.float32) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(16, 32, dtype=dtype), nn.ReLU(), nn.Linear(32, 16, dtype=dtype))
        self.head = nn.Linear(16, 10, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x))


def kinds(model: nn.Module) -> dict[str, type]:
    return {name: type(model.get_submodule(name)) for name in ("enc.0", "enc.2", "head")}


def test_block_replaces_every_matching_linear_the_block_divides():
    model = Net()
    report = kronify(model, block=(4, 4), rank=2)
    assert kinds(model) == {"enc.0": KronLinear, "enc.2": KronLinear, "head": nn.Linear}
    assert [c.name for c in report.replaced] == ["enc.0", "enc.2"]
    assert model.enc[0].block == (4, 4) and model.enc[0].rank == 2
    assert (model.enc[0].in_features, model.enc[0].out_features) == (16, 32)
    assert model(torch.randn(3, 16)).shape == (3, 10)


def test_a_layer_the_block_does_not_divide_stays_dense_with_the_reason_in_the_report():
    model = Net()
    report = kronify(model, block=(4, 4))
    [dense] = report.dense
    assert (dense.name, dense.shape, dense.kind) == ("head", (10, 16), "dense")
    assert "4x4 does not divide" in dense.reason
    assert "head: 10x16 -> dense (block 4x4 does not divide it)" in str(report)


def test_include_and_exclude_globs_select_the_layers_to_replace():
    model = Net()
    report = kronify(model, block=(2, 2), include=["enc.*"], exclude=["enc.2"])
    assert kinds(model) == {"enc.0": KronLinear, "enc.2": nn.Linear, "head": nn.Linear}
    assert {c.name: c.reason for c in report.dense} == {
        "enc.2": "not matched by include/exclude", "head": "not matched by include/exclude"}


PLAN = {"enc.0": {"block": "4x2", "rank": 2}, "head": {"block": [5, 4]}}


def test_plan_gives_each_named_layer_its_own_block_and_rank_and_leaves_the_others_dense():
    model = Net()
    report = kronify(model, PLAN)
    assert kinds(model) == {"enc.0": KronLinear, "enc.2": nn.Linear, "head": KronLinear}
    assert (model.enc[0].block, model.enc[0].rank) == ((4, 2), 2)
    assert (model.head.block, model.head.rank) == ((5, 4), 1)
    assert {c.name: c.reason for c in report.dense} == {"enc.2": "not in the plan"}


@pytest.mark.parametrize("name", ["enc.1", "enc", "", "missing"])
def test_a_plan_naming_something_that_is_not_a_linear_is_rejected_and_the_model_is_untouched(name):
    model = Net()
    with pytest.raises(ValueError, match=r"not nn.Linear.*'enc.0', 'enc.2', 'head'"):
        kronify(model, {"enc.0": {"block": "2x2"}, name: {"block": "1x1"}})
    assert kinds(model) == {"enc.0": nn.Linear, "enc.2": nn.Linear, "head": nn.Linear}


def test_a_plan_block_that_does_not_divide_its_layer_is_rejected_and_the_model_is_untouched():
    model = Net()
    with pytest.raises(ValueError, match=r"plan block 4x4 does not divide layer 'head' of shape \(out=10, in=16\)"
                                         r"; valid blocks: 1x1, .*, 10x16"):
        kronify(model, {"enc.0": {"block": "2x2"}, "head": {"block": "4x4"}})
    assert kinds(model) == {"enc.0": nn.Linear, "enc.2": nn.Linear, "head": nn.Linear}


def test_candidates_create_a_pattern_select_linear_with_the_candidates_that_divide_each_layer():
    model = Net()
    report = kronify(model, candidates=[(4, 4), (2, 4), (3, 3)], rank=2)
    assert kinds(model) == {"enc.0": PatternSelectLinear, "enc.2": PatternSelectLinear, "head": PatternSelectLinear}
    assert model.enc[0].candidates == [(4, 4), (2, 4)]
    assert model.head.candidates == [(2, 4)]
    assert model.head.rank == 2
    assert [c.blocks for c in report.replaced] == [[(4, 4), (2, 4)], [(4, 4), (2, 4)], [(2, 4)]]


def test_a_layer_no_candidate_divides_stays_dense_with_the_reason():
    model = Net()
    report = kronify(model, candidates=[(4, 4), (3, 3)])
    [dense] = report.dense
    assert dense.name == "head" and dense.reason == "no candidate of [4x4, 3x3] divides it"


def test_dense_init_at_full_rank_preserves_the_model_function():
    torch.manual_seed(0)
    model = Net(torch.float64)
    x = torch.randn(5, 16, dtype=torch.float64)
    before = model(x)
    kronify(model, block=(4, 4), rank=16, init="dense")  # 16 = min(m1*n1, h*w) for enc.0 and enc.2
    assert kinds(model)["enc.0"] is KronLinear
    torch.testing.assert_close(model(x), before, rtol=1e-10, atol=1e-10)


def test_dense_init_at_low_rank_approximates_instead_of_reinitializing():
    torch.manual_seed(0)
    model = Net(torch.float64)
    weight = model.enc[0].weight.detach().clone()
    kronify(model, {"enc.0": {"block": "4x4", "rank": 1}}, init="dense")
    error = (model.enc[0].materialize() - weight).norm() / weight.norm()
    fresh = (KronLinear(16, 32, (4, 4), 1, dtype=torch.float64).materialize() - weight).norm() / weight.norm()
    assert error < 1 < fresh


@pytest.mark.parametrize("kwargs", [{}, {"plan": PLAN, "block": (2, 2)}, {"block": (2, 2), "candidates": [(2, 2)]},
                                    {"plan": PLAN, "candidates": [(2, 2)]}])
def test_exactly_one_of_plan_block_and_candidates_is_required(kwargs):
    with pytest.raises(ValueError, match="exactly one of"):
        kronify(Net(), **kwargs)


def test_an_unknown_init_is_rejected():
    with pytest.raises(ValueError, match="init must be"):
        kronify(Net(), block=(2, 2), init="zeros")


def test_model_plan_returns_the_plan_that_was_applied():
    model = Net()
    kronify(model, PLAN)
    assert model_plan(model) == {"enc.0": LayerPattern((4, 2), 2), "head": LayerPattern((5, 4), 1)}
    rebuilt = Net()
    kronify(rebuilt, model_plan(model))
    assert model_plan(rebuilt) == model_plan(model)


def test_model_plan_after_finalize_model_holds_each_layers_winner():
    model = Net()
    kronify(model, candidates=[(4, 4), (2, 4)])
    selections = finalize_model(copy.deepcopy(model))
    finalize_model(model)
    assert model_plan(model) == {name: LayerPattern(block, 1) for name, (block, _) in selections.items()}


def write(tmp_path, text: str):
    path = tmp_path / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_plan_reads_the_layers_mapping_of_a_yaml_file(tmp_path):
    path = write(tmp_path, "model: net\nlayers:\n  enc.0: {block: 4x2, rank: 2}\n  head:\n    block: [5, 4]\n")
    plan = load_plan(path)
    assert plan == {"enc.0": LayerPattern((4, 2), 2), "head": LayerPattern((5, 4), 1)}
    model = Net()
    kronify(model, plan)
    assert model_plan(model) == plan


@pytest.mark.parametrize("text, message", [
    ("enc.0: {block: 4x2}\n", "'layers' mapping"),
    ("layers: [enc.0, head]\n", "'layers' mapping"),
    ("- layers\n", "'layers' mapping"),
    ("", "'layers' mapping"),
    ("layers: {enc.0: 4x2}\n", "plan layer 'enc.0': expected"),
    ("layers: {enc.0: {rank: 2}}\n", "plan layer 'enc.0': expected"),
    ("layers: {enc.0: {block: 4x2, ranks: 2}}\n", "plan layer 'enc.0': expected"),
    ("layers: {enc.0: {block: 4by2}}\n", "plan layer 'enc.0': a block is written"),
    ("layers: {enc.0: {block: [0, 2]}}\n", "plan layer 'enc.0': block sides must be >= 1"),
    ("layers: {enc.0: {block: 4x2, rank: 0}}\n", "plan layer 'enc.0': block sides and rank"),
    ("layers: {enc.0: {block: 4x2, rank: '2'}}\n", "plan layer 'enc.0': block sides and rank"),
    ("layers: {enc.0: {block: 4x2, rank: true}}\n", "plan layer 'enc.0': block sides and rank"),
    ("layers: {enc.0: [unclosed\n", "invalid YAML"),
])
def test_load_plan_rejects_malformed_files_with_a_clear_message(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_plan(write(tmp_path, text))


def test_load_plan_rejects_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read the plan file"):
        load_plan(tmp_path / "nope.yaml")
