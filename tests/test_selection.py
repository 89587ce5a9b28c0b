"""The one round's contest (kronsearch/selection.py): proximal steps, gates, removal, decisions, records."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kronsearch.data import load_dataset
from kronsearch.layers.kron_linear import KronLinear
from kronsearch.layers.kronify import kronify
from kronsearch.layers.pattern_select import PatternSelectLinear
from kronsearch.models import build_model
from kronsearch.layers.blocks import format_block
from kronsearch.selection import TIE, GateSelection, drop_from_optimizer, prox_l1_
from kronsearch.trainer import TrainConfig, make_optimizer, seed_everything, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def select_model(seed: int = 0) -> nn.Module:
    seed_everything(seed)
    return nn.Sequential(PatternSelectLinear(16, 8, [(2, 2), (4, 4), (8, 8)]), nn.ReLU(), nn.Linear(8, 3))


def backward_once(model: nn.Module, seed: int = 1) -> None:
    torch.manual_seed(seed)
    x, y = torch.randn(32, 16), torch.randint(0, 3, (32,))
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()


# --------------------------------------------------------------------------------- proximal l1


def test_prox_under_sgd_soft_thresholds_by_lr_times_lambda2_and_gives_exact_zeros():
    s = nn.Parameter(torch.tensor([0.5, -0.5, 0.01, -0.02, 0.0]))
    optimizer = torch.optim.SGD([s], lr=0.1)
    prox_l1_(optimizer, [s], lambda2=0.25)  # threshold 0.025
    assert s.tolist() == pytest.approx([0.475, -0.475, 0.0, 0.0, 0.0])
    assert (s[2:] == 0).all()  # exactly 0, not small


def test_prox_under_adam_uses_adams_preconditioner_per_entry():
    s = nn.Parameter(torch.tensor([1.0, 1.0]))
    optimizer = torch.optim.Adam([s], lr=0.1)
    s.grad = torch.tensor([1e-3, 1.0])  # a weak and a strong gradient
    optimizer.step()
    before = s.detach().clone()
    v_hat = optimizer.state[s]["exp_avg_sq"] / (1 - 0.999)
    prox_l1_(optimizer, [s], lambda2=1e-3)
    expected = before - 0.1 * 1e-3 / (v_hat.sqrt() + 1e-8)
    torch.testing.assert_close(s.detach(), expected)
    assert before[0] - s[0] > 100 * (before[1] - s[1])  # the weak entry is pulled far harder


def test_prox_leaves_parameters_it_is_not_given_alone():
    s, other = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    prox_l1_(torch.optim.SGD([s, other], lr=1.0), [s], lambda2=0.5)
    assert other.tolist() == [1.0, 1.0, 1.0] and s.tolist() == [0.5, 0.5, 0.5]


def test_trained_kron_layer_has_exactly_zero_blocks_under_lambda2(digits):
    seed_everything(0)
    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=(32,))
    kronify(model, block=(2, 2), include=["layers.0"])
    result = train(model, digits, TrainConfig(epochs=2, lr=1e-2, lambda2=1e-3, progress=False))
    s = result.model.layers[0].s
    assert (s == 0).any()
    assert result.layer_sparsity["layers.0"] == pytest.approx((s == 0).float().mean().item())


# --------------------------------------------------------------------------------- optimizer


def test_drop_from_optimizer_removes_the_parameters_and_their_moments():
    keep, drop = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([keep, drop], lr=0.1)
    (keep.sum() + drop.sum()).backward()
    optimizer.step()
    drop_from_optimizer(optimizer, [drop])
    assert [id(p) for g in optimizer.param_groups for p in g["params"]] == [id(keep)]
    assert drop not in optimizer.state and keep in optimizer.state
    before = drop.detach().clone()
    optimizer.step()
    assert torch.equal(drop.detach(), before)


# --------------------------------------------------------------------------------- gates


def test_gates_move_by_the_push_against_the_layers_mean_and_candidates_norms_follow_their_gates():
    model = select_model()
    layer = model[0]
    optimizer = make_optimizer(model, TrainConfig(lr=1e-3))
    selection = GateSelection(model, optimizer, select_steps=100, lambda1=0.0)
    start = dict(selection.reference["0"])
    backward_once(model)
    selection.measure()
    pushes = dict(selection.pushes["0"])
    mean = sum(pushes.values()) / len(pushes)
    optimizer.step()
    selection.step()
    gates = selection.gates["0"]
    for k, push in pushes.items():
        assert (gates[k] > 1.0) == (push > mean)  # pulling harder than the layer's average grows
        assert layer.weight_norms()[k] == pytest.approx(gates[k] * start[k], rel=1e-5)


def test_push_is_minus_the_loss_gradient_along_each_candidates_unit_weight():
    model = select_model()
    backward_once(model)
    selection = GateSelection(model, make_optimizer(model, TrainConfig()), select_steps=10, lambda1=0.0)
    selection.measure()
    for k, branch in model[0].branches.items():
        w = branch.materialize()
        # dL/dW from dL/dS: W_k is linear in S_k, so <dL/dW, W_k> = <dL/dS_k, S_k>
        expected = -float((branch.s.grad * branch.s.detach()).sum()) / float(w.detach().norm())
        assert selection.pushes["0"][k] == pytest.approx(expected)


@pytest.mark.parametrize("rescale", ["s_by_c_and_a_by_1_over_c", "a_by_c_and_b_by_1_over_c"])
def test_pushes_do_not_change_when_a_candidates_factors_are_rescaled_against_each_other(rescale):
    model, twin = select_model(), select_model()
    branch = twin[0].branches["4x4"]
    with torch.no_grad():
        first, second = (branch.s, branch.a) if rescale.startswith("s_") else (branch.a, branch.b)
        first.mul_(5.0)
        second.div_(5.0)
    measured = []
    for m in (model, twin):
        backward_once(m)
        selection = GateSelection(m, make_optimizer(m, TrainConfig()), select_steps=10, lambda1=0.5)
        selection.measure()
        measured.append(selection.pushes["0"])
    assert measured[0] == pytest.approx(measured[1], rel=1e-4)


def test_a_candidate_whose_gate_reaches_zero_is_exactly_zero_and_leaves_layer_and_optimizer():
    model = select_model()
    optimizer = make_optimizer(model, TrainConfig())
    selection = GateSelection(model, optimizer, select_steps=4, lambda1=0.0)
    selection.gates["0"]["8x8"] = 1e-9  # one step of any negative drive ends it
    gone = model[0].branches["8x8"]
    backward_once(model)
    selection.measure()
    selection.pushes["0"]["8x8"] = -1.0
    optimizer.step()
    assert selection.step() is True
    assert list(model[0].branches) == ["2x2", "4x4"]
    assert (gone.s == 0).all()
    assert selection.removed_norms["0"] == 0.0
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in gone.parameters()}


def test_the_last_candidate_is_never_removed_even_when_every_gate_would_die():
    model = select_model()
    selection = GateSelection(model, make_optimizer(model, TrainConfig()), select_steps=1000, lambda1=1e6)
    backward_once(model)
    selection.measure()
    selection.step()
    assert len(model[0].branches) == 1
    assert selection.decisions["0"].by == "survivor"


def test_at_the_budget_the_largest_gate_wins_and_the_others_fade_to_exactly_zero():
    model = select_model()
    optimizer = make_optimizer(model, TrainConfig())
    selection = GateSelection(model, optimizer, select_steps=10, lambda1=0.0)
    fades = []
    for step in range(10 + selection.fade_steps):
        backward_once(model, seed=step)
        selection.measure()
        selection.pushes["0"] = {"2x2": 1.0, "4x4": 1.1, "8x8": 1.0}  # 4x4 ahead, too little to end the others
        optimizer.step()
        selection.step()
        fades.append(len(model[0].branches))
    decision = selection.decisions["0"]
    assert (decision.block, decision.by, decision.step) == ("4x4", "budget", 10)
    assert 0 < decision.loser_share < 1
    assert list(model[0].branches) == [decision.block]
    assert fades[:10] == [3] * 10 and fades[-1] == 1
    assert selection.removed_norms["0"] == 0.0 and selection.done


def test_at_the_budget_gates_within_tie_of_the_largest_go_to_the_cheapest_candidate():
    model = select_model()
    selection = GateSelection(model, make_optimizer(model, TrainConfig()), select_steps=1, lambda1=0.0)
    selection.gates["0"].update({"2x2": 1.0, "4x4": 1.0 - TIE / 2, "8x8": 0.5})
    selection._choose("0")
    assert selection.decisions["0"].block == "4x4"  # 2x2 leads by less than TIE, 4x4 costs fewer MACs
    assert set(selection.fading["0"]) == {"2x2", "8x8"}


def test_at_the_budget_a_lead_beyond_tie_wins_whatever_it_costs():
    model = select_model()
    selection = GateSelection(model, make_optimizer(model, TrainConfig()), select_steps=1, lambda1=0.0)
    selection.gates["0"].update({"2x2": 1.0, "4x4": 1.0 - 2 * TIE, "8x8": 0.5})
    selection._choose("0")
    assert selection.decisions["0"].block == "2x2"


# --------------------------------------------------------------------------------- the trainer's run


@pytest.fixture(scope="module")
def one_round(digits):
    seed_everything(0)
    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=(32,))
    kronify(model, candidates=[(2, 2), (4, 4), (8, 8)], include=["layers.0"])
    reports = []
    result = train(model, digits, TrainConfig(epochs=4, select_epochs=1, lr=1e-2, lambda1=0.3, lambda2=1e-4,
                                              progress=False), callback=reports.append)
    return result, reports


def test_the_decision_epoch_and_how_it_was_made_are_recorded(one_round):
    result, _ = one_round
    decision = result.decisions["layers.0"]
    assert decision["block"] == result.selected["layers.0"]
    assert 0 < decision["epoch"] <= 1.0 and decision["by"] in ("survivor", "budget")
    assert decision["loser_norm_at_removal"] == 0.0


def test_live_candidates_per_epoch_shrink_to_the_winner_within_the_budget(one_round):
    result, reports = one_round
    live = [r.live_candidates["layers.0"] for r in reports]
    assert len(live[0]) >= 1 and all(len(a) >= len(b) for a, b in zip(live, live[1:]))
    assert live[1:] == [[result.selected["layers.0"]]] * 3  # the fade is over within the next epoch


def test_one_continuous_run_reports_selection_then_training_epochs(one_round):
    _, reports = one_round
    assert [r.phase for r in reports][1:] == ["train"] * 3


def test_train_macs_total_integrates_the_shrinking_live_set(one_round, digits):
    result, _ = one_round
    samples = len(digits.train) * 4
    assert result.final_macs * samples < result.train_macs_total < result.train_macs * samples


def test_selection_epoch_reports_the_leader_alone_accuracy(digits):
    seed_everything(0)
    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=(32,))
    kronify(model, candidates=[(2, 2), (4, 4), (8, 8)], include=["layers.0"])
    seen = []

    def check(report):
        if report.phase == "select":
            live = report.live_candidates["layers.0"]
            leader = max(live, key=lambda k: report.candidate_norms["layers.0"][k])
            probe = copy.deepcopy(model)
            with probe.layers[0].only(leader), torch.no_grad():
                probe.eval()
                x, y = digits.val.tensors
                seen.append((report.val_accuracy, (probe(x).argmax(-1) == y).float().mean().item()))

    train(model, digits, TrainConfig(epochs=3, select_epochs=3, lr=1e-2, lambda1=0.0, progress=False),
          callback=check)
    assert seen and all(got == pytest.approx(expected) for got, expected in seen)


def test_planted_block_is_recovered_when_it_is_the_largest_candidate():
    # measured (10 epochs, n_train 3000): planted 8x8 picked on seeds 0-4 at lambda1 0.3 and 1.0
    data = load_dataset("synthetic", block=(8, 8), sparsity=0.5, seed=1, n_train=3000, n_test=500)
    seed_everything(1)
    model = build_model("linear", data.input_shape, data.num_classes)
    kronify(model, candidates=[(2, 2), (4, 4), (8, 8)])
    result = train(model, data, TrainConfig(epochs=10, lr=1e-2, lambda1=0.3, lambda2=1e-4, progress=False, seed=1))
    assert result.selected == {"fc": "8x8"}
    assert isinstance(result.model.fc, KronLinear) and format_block(result.model.fc.block) == "8x8"
