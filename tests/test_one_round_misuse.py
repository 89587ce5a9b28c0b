"""OneRound misuse is refused with a message saying what to do (issue 31, item 13): an optimizer that does not
train the candidates, a racing step in which no candidate trained, a validate that gives no per-example hits,
and finalize_model before the race decided."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kronsearch.layers.errors import BadInput
from kronsearch.layers.kronify import kronify
from kronsearch.layers.pattern_select import PatternSelectLinear, finalize_model
from kronsearch.one_round import OneRound
from tests.test_one_round import attached, batches, select_model, snapshot, step

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_step_in() -> tuple[nn.Module, OneRound, torch.optim.Optimizer]:
    """A model whose 6-step race has run one step."""
    model = select_model()
    one_round, optimizer = attached(model)
    step(model, optimizer, batches())
    return model, one_round, optimizer


def test_an_optimizer_of_another_model_is_refused():
    model, other = select_model(), select_model(seed=1)
    with pytest.raises(BadInput, match="the optimizer holds none of the model's parameters: it belongs to another "
                                       "model; build it from this model's parameters after kronify"):
        OneRound(model, torch.optim.AdamW(other.parameters()), select_steps=4, validate=batches())


def test_an_optimizer_built_before_kronify_is_refused_naming_the_layers_it_misses():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters())
    kronify(model, candidates=[(2, 2), (4, 4)], include=["0"])
    with pytest.raises(BadInput, match=r"the optimizer holds 0 of the 6 Kronecker tensors of the candidate layers "
                                       r"\(missing in 0\): it was built before kronify replaced the layers"):
        OneRound(model, optimizer, select_steps=4, validate=batches())


def test_a_racing_step_after_eval_mode_forwards_only_is_refused_before_anything_moves():
    model = select_model()
    _, optimizer = attached(model)
    model.eval()
    before = snapshot(model)
    with pytest.raises(BadInput, match=r"optimizer step 1 \(the race's 6 steps\) follows forwards in eval\(\) mode "
                                       r"only, which run each layer's leader and train no candidate; call "
                                       r"model.train\(\)"):
        step(model, optimizer, batches())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_racing_step_with_no_forward_pass_is_refused():
    _, one_round, optimizer = one_step_in()
    with pytest.raises(BadInput, match=r"optimizer step 2 \(the race's 6 steps\) with no forward pass of the model "
                                       r"since the last step"):
        optimizer.step()
    assert one_round.steps == 1


def test_a_closure_optimizer_whose_forward_runs_inside_step_still_races():
    model = select_model()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2)
    one_round = OneRound(model, optimizer, select_steps=3, validate=batches(), extend=1.0)  # ends at its 3 steps
    x, y = batches()[0]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    assert one_round.done and one_round.steps == 3


@pytest.mark.parametrize("answer, words", [
    (float("nan"), "it returned one number, nan, not a hit per example"),
    (0.85, "it returned one number, 0.85, not a hit per example"),
    (torch.tensor([1.0, math.nan]), "it returned values other than 0 and 1, e.g. nan"),
    (torch.tensor([0.5, 0.25]), "it returned values other than 0 and 1, e.g. 0.5"),
    ((torch.ones(4, dtype=torch.bool), math.inf), "its loss is inf, not a finite number"),
    ("high", "it returned str 'high'"),
])
def test_a_validate_that_gives_no_per_example_hits_is_refused_saying_what_is_allowed(answer, words):
    model = select_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    one_round = OneRound(model, optimizer, select_steps=2, validate=lambda m: answer)
    with pytest.raises(BadInput, match=r"validate\(model\) must return per-example hits, a bool tensor \(or 0/1 "
                                       r"values\) with one entry per validation example, or \(hits, mean loss\); "
                                       + words.replace("(", r"\(").replace(")", r"\)")):
        for _ in range(2):  # the race's first validation, wherever its evidence reads it
            step(model, optimizer, batches())
    assert not one_round.done


def test_validate_may_give_hits_as_zeros_and_ones_with_a_loss():
    model = select_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    one_round = OneRound(model, optimizer, select_steps=2, validate=lambda m: ([1, 0, 1, 1], 0.7))
    for _ in range(2):
        step(model, optimizer, batches())
    assert one_round.done


def test_finalize_model_refuses_a_layer_whose_race_has_not_decided_and_works_after_finish():
    model, one_round, _ = one_step_in()
    with pytest.raises(BadInput, match=r"finalize_model: the OneRound race of 1 layer\(s\) never decided: 0 \(2x2, "
                                       r"4x4, 8x8 live\); call one_round.finish\(\) first"):
        finalize_model(model)
    one_round.close()
    with pytest.raises(BadInput, match="never decided"):
        finalize_model(model)  # closing the race does not decide it
    one_round.finish()
    finalize_model(model)
    assert not any(isinstance(m, PatternSelectLinear) for m in model.modules())
