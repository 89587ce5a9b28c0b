"""The one round's contest (kronsearch/selection.py): proximal steps, the race, removal, decisions, records."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kronsearch.data import load_dataset
from kronsearch.data.batches import Batches
from kronsearch.layers.blocks import format_block
from kronsearch.layers.costs import model_cost
from kronsearch.layers.kron_linear import KronLinear
from kronsearch.layers.kronify import kronify
from kronsearch.layers.pattern_select import PatternSelectLinear
from kronsearch.models import build_model
from kronsearch.selection import RACE_CHECKS, Estimate, Race, drop_from_optimizer, prox_l1_, within_tolerance
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


# --------------------------------------------------------------------------------- the race


def estimates(accuracies: dict[str, float], n: int = 1000) -> dict[str, Estimate]:
    """Candidates right on the first accuracy * n of n shared examples: paired, so the gaps are certain."""
    return {k: Estimate(a, 1.0 - a, torch.arange(n) < round(a * n)) for k, a in accuracies.items()}


def measured_as(monkeypatch, contest: Race, accuracies: dict[str, float]) -> None:
    """The contest's checks see these accuracies for the candidates still live."""
    monkeypatch.setattr(contest, "measure_candidates", lambda name, measured=None: estimates(
        {k: a for k, a in accuracies.items() if k in contest.layers[name].branches}))


def race(model: nn.Module, select_steps: int = 10, tolerance: float = 0.5, n: int = 64,
         checks: tuple[float, ...] = RACE_CHECKS) -> Race:
    torch.manual_seed(0)
    validation = Batches(TensorDataset(torch.randn(n, 16), torch.randint(0, 3, (n,))), 32, "cpu")
    return Race(model, make_optimizer(model, TrainConfig()), select_steps, tolerance, validation, checks=checks)


def test_within_tolerance_keeps_the_candidates_no_further_than_tolerance_plus_z_standard_errors_from_the_best():
    measured = estimates({"2x2": 0.90, "4x4": 0.897, "8x8": 0.88})
    assert within_tolerance(measured, 0.005, 0.0) == ["2x2", "4x4"]
    assert within_tolerance(measured, 0.0, 0.0) == ["2x2"]
    assert within_tolerance(measured, 0.02, 0.0) == ["2x2", "4x4", "8x8"]


def test_within_tolerance_widens_with_the_paired_noise_of_a_small_validation_set():
    noisy = {"2x2": Estimate(0.8, 0.2, torch.tensor([1, 1, 1, 1, 0], dtype=torch.bool)),
             "8x8": Estimate(0.6, 0.4, torch.tensor([0, 1, 1, 0, 1], dtype=torch.bool))}
    assert within_tolerance(noisy, 0.0, 0.0) == ["2x2"]
    assert within_tolerance(noisy, 0.0, 1.0) == ["2x2", "8x8"]  # a 20-point gap on 5 examples is not evidence


def test_each_step_routes_every_open_layer_through_one_candidate_and_cycles_through_all():
    model = select_model()
    contest = race(model)
    seen = []
    for _ in range(6):
        with contest.routed() as active:
            assert list(model[0].branches) == [active["0"]]
            seen.append(active["0"])
        assert list(model[0].branches) == ["2x2", "4x4", "8x8"]
    assert sorted(seen[:3]) == sorted(seen[3:]) == ["2x2", "4x4", "8x8"]


def test_only_the_routed_candidate_trains_and_the_others_keep_their_weights():
    model = select_model()
    contest = race(model)
    before = {k: [p.detach().clone() for p in b.parameters()] for k, b in model[0].branches.items()}
    with contest.routed() as active:
        nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 3, (8,))).backward()
    contest.optimizer.step()
    for k, branch in model[0].branches.items():
        unchanged = all(torch.equal(p, q) for p, q in zip(branch.parameters(), before[k]))
        assert unchanged == (k != active["0"])


def test_the_race_validates_its_candidates_once_at_its_end():
    assert race(select_model(), select_steps=10).checks == [10]


def test_a_clearly_worse_candidate_leaves_layer_and_optimizer_at_a_check_before_the_end(monkeypatch):
    model = select_model()
    contest = race(model, select_steps=10, checks=(0.5, 1.0))
    measured_as(monkeypatch, contest, {"2x2": 0.9, "4x4": 0.89, "8x8": 0.5})
    gone = list(model[0].branches["8x8"].parameters())
    left = [contest.step() for _ in range(contest.checks[0])]
    assert left[-1] is True and not any(left[:-1])
    assert list(model[0].branches) == ["2x2", "4x4"] and contest.open_layers == ["0"]
    in_optimizer = {id(p) for g in contest.optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in gone}


def test_at_the_budget_the_cheapest_candidate_within_tolerance_wins(monkeypatch):
    model = select_model()
    contest = race(model, select_steps=4, tolerance=0.5)
    measured_as(monkeypatch, contest, {"2x2": 0.900, "4x4": 0.896, "8x8": 0.880})
    for _ in range(4):
        contest.step()
    decision = contest.decisions["0"]
    assert (decision.block, decision.by, decision.step) == ("4x4", "budget", 4)
    assert list(model[0].branches) == ["4x4"] and contest.done


def test_tolerance_zero_keeps_the_most_accurate_whatever_it_costs(monkeypatch):
    model = select_model()
    contest = race(model, select_steps=4, tolerance=0.0)
    measured_as(monkeypatch, contest, {"2x2": 0.900, "4x4": 0.896, "8x8": 0.880})
    for _ in range(4):
        contest.step()
    assert contest.decisions["0"].block == "2x2"


def test_a_candidate_left_alone_by_the_checks_wins_as_survivor(monkeypatch):
    model = select_model()
    contest = race(model, select_steps=10)
    measured_as(monkeypatch, contest, {"2x2": 0.5, "4x4": 0.9, "8x8": 0.5})
    for _ in range(contest.checks[0]):
        contest.step()
    assert contest.decisions["0"].block == "4x4" and contest.decisions["0"].by == "survivor"


def test_measure_candidates_is_each_candidates_accuracy_alone_on_the_same_first_validation_examples():
    model = select_model()
    contest = race(model, select_steps=10, n=64)  # the race trains on 10 * 32 examples: a check spends 80 of them
    assert contest.check_examples == 80
    x, y = (t[:80 // 3] for t in contest.validation.tensors)
    measured = contest.measure_candidates("0")
    for k in ("2x2", "4x4", "8x8"):
        with model[0].only(k), torch.no_grad():
            expected = (model(x).argmax(-1) == y).float().mean().item()
        assert measured[k].accuracy == pytest.approx(expected) and len(measured[k].correct) == 80 // 3
    assert contest.eval_macs > 0


def two_select_layers(second: list[tuple[int, int]]) -> nn.Module:
    seed_everything(0)
    return nn.Sequential(PatternSelectLinear(16, 8, [(2, 2), (4, 4)]), nn.ReLU(), PatternSelectLinear(8, 8, second),
                         nn.ReLU(), nn.Linear(8, 3))


def test_stacked_layers_race_each_block_as_one_path_through_every_layer_that_has_it():
    contest = race(two_select_layers([(2, 2), (4, 4)]))
    seen = []
    for _ in range(4):
        with contest.routed() as active:
            assert active["0"] == active["2"]  # a layer after another trains on the features it will be measured with
            seen.append(active["0"])
    assert sorted(seen[:2]) == sorted(seen[2:]) == ["2x2", "4x4"]


def test_a_layer_without_the_paths_block_takes_its_own_turns():
    contest = race(two_select_layers([(2, 2), (8, 8)]))
    routings = []
    for _ in range(6):
        with contest.routed() as active:
            routings.append(dict(active))
    # two cycles of the paths 2x2 (both layers), 4x4 (layer 2 on its own turn), 8x8 (layer 0 on its own turn)
    assert [r["0"] for r in routings].count("4x4") >= 2 and [r["2"] for r in routings].count("8x8") >= 2
    assert sum(r == {"0": "2x2", "2": "2x2"} for r in routings) >= 2


def test_a_candidate_is_measured_on_its_path_once_per_check_for_every_layer_that_has_it(monkeypatch):
    model = two_select_layers([(2, 2), (4, 4)])
    contest = race(model)
    routings = []
    real = contest._alone

    def alone(examples):
        routings.append({n: list(m.branches) for n, m in contest.layers.items()})
        return real(examples)

    monkeypatch.setattr(contest, "_alone", alone)
    measured = {}
    first, second = contest.measure_candidates("0", measured), contest.measure_candidates("2", measured)
    assert routings == [{"0": ["2x2"], "2": ["2x2"]}, {"0": ["4x4"], "2": ["4x4"]}]  # two paths, measured once
    assert first == second


# --------------------------------------------------------------------------------- the trainer's run


@pytest.fixture(scope="module")
def one_round(digits):
    seed_everything(0)
    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=(32,))
    kronify(model, candidates=[(2, 2), (4, 4), (8, 8)], include=["layers.0"])
    reports = []
    result = train(model, digits, TrainConfig(epochs=4, select_epochs=1, lr=1e-2, lambda2=1e-4, progress=False),
                   callback=reports.append)
    return result, reports


def test_the_decision_its_epoch_and_every_candidates_estimated_accuracy_are_recorded(one_round):
    result, _ = one_round
    decision = result.decisions["layers.0"]
    assert decision["block"] == result.selected["layers.0"]
    assert 0 < decision["epoch"] <= 2.0 and decision["by"] in ("survivor", "budget", "fallback")
    assert set(decision["estimates"]) == {"2x2", "4x4", "8x8"}
    for estimate in decision["estimates"].values():  # accuracy ± se in points, the examples, the steps it trained
        assert 0 <= estimate["accuracy"] <= 100 and 0 <= estimate["se"] < 10
        assert estimate["examples"] > 0 and estimate["steps"] > 0


def test_the_race_ends_with_the_winner_alone_before_the_training_epochs(one_round):
    result, reports = one_round
    after = reports[math.ceil(result.decisions["layers.0"]["epoch"]) - 1:]  # the race's last epoch, then training
    assert [r.live_candidates["layers.0"] for r in after] == [[result.selected["layers.0"]]] * 5


def test_a_one_round_run_reports_its_race_epochs_then_its_training_epochs(one_round):
    result, reports = one_round
    raced = math.ceil(result.decisions["layers.0"]["epoch"])  # 1, or 2 where the race extended itself
    assert [r.phase for r in reports] == ["select"] * raced + ["train"] * 4


def test_train_macs_total_is_the_winners_training_plus_a_race_cheaper_than_every_candidate_every_step(
        one_round, digits):
    result, _ = one_round
    raced = round(len(digits.train) * result.decisions["layers.0"]["epoch"])  # examples the race trained on
    trained = len(digits.train) * 4  # four epochs of training after the race
    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=(32,))
    kronify(model, candidates=[(2, 2), (4, 4), (8, 8)], include=["layers.0"])
    every_candidate = model_cost(model, digits.input_shape).total.macs  # a step of the sum of all three
    assert result.final_macs * trained < result.train_macs_total < result.final_macs * trained + every_candidate * raced


def test_selection_epoch_reports_the_leader_alone_accuracy(digits):
    seed_everything(0)
    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=(32,))
    kronify(model, candidates=[(2, 2), (4, 4), (8, 8)], include=["layers.0"])
    seen = []

    def check(report):
        if report.phase == "select":
            probe = copy.deepcopy(model)
            with probe.layers[0].only(report.leaders["layers.0"]), torch.no_grad():
                probe.eval()
                x, y = digits.val.tensors
                seen.append((report.val_accuracy, (probe(x).argmax(-1) == y).float().mean().item()))

    train(model, digits, TrainConfig(epochs=3, select_epochs=3, lr=1e-2, progress=False), callback=check)
    assert seen and all(got == pytest.approx(expected) for got, expected in seen)


def test_a_planted_task_where_the_larger_block_is_enough_is_solved_with_the_larger_block():
    # the teacher is 8x8 block-sparse: 2x2 and 4x4 can express it too, at more MACs; measured (batch 32,
    # race over 5 of 10 epochs): 8x8 on seeds 0, 1 and 3, 4x4 on seed 2 (8x8 started slowest and left)
    data = load_dataset("synthetic", block=(8, 8), sparsity=0.5, seed=1, n_train=3000, n_test=500)
    seed_everything(1)
    model = build_model("linear", data.input_shape, data.num_classes)
    kronify(model, candidates=[(2, 2), (4, 4), (8, 8)])
    result = train(model, data, TrainConfig(epochs=10, select_epochs=5, batch_size=32, lr=1e-2, lambda2=1e-4,
                                            progress=False, seed=1))
    assert result.selected == {"fc": "8x8"}
    assert isinstance(result.model.fc, KronLinear) and format_block(result.model.fc.block) == "8x8"
