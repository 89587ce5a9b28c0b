"""kronsearch.OneRound: the one round attached to a model and optimizer by hooks, inside a user's own loop."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kronsearch
from examples import own_loop
from kronsearch.data import load_dataset
from kronsearch.data.batches import Batches
from kronsearch.layers.compute import default_compute_as
from kronsearch.layers.errors import BadInput
from kronsearch.layers.kronify import kronify
from kronsearch.layers.pattern_select import PatternSelectLinear, finalize_model
from kronsearch.layers.plan import parse_plan
from kronsearch.models import build_model
from kronsearch.one_round import OneRound
from kronsearch.trainer import TrainConfig, lr_factor, make_optimizer, seed_everything, train
from tests.docblocks import code_blocks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def select_model(seed: int = 0) -> nn.Module:
    seed_everything(seed)
    return nn.Sequential(PatternSelectLinear(16, 8, [(2, 2), (4, 4), (8, 8)]), nn.ReLU(), nn.Linear(8, 3))


def batches(n: int = 32, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=generator)
    return [(x[i:i + 8], (x[i:i + 8, :3].argmax(-1))) for i in range(0, n, 8)]


def attached(model: nn.Module, select_steps: int = 6, **options) -> tuple[OneRound, torch.optim.Optimizer]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return OneRound(model, optimizer, select_steps=select_steps, validate=batches(), **options), optimizer


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    """The candidates (branch names) of layer 0 whose parameters moved."""
    now = model.state_dict()
    return {k.split(".")[2] for k, v in before.items() if k.startswith("0.branches.") and k in now
            and not torch.equal(v, now[k])}


def step(model: nn.Module, optimizer: torch.optim.Optimizer, data: list, micro: int = 1) -> None:
    for x, y in data[:micro]:
        nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad()


# --------------------------------------------------------------------------------- the public object


def test_kronsearch_exports_one_round_lazily():
    assert kronsearch.OneRound is OneRound and "OneRound" in kronsearch.__all__


def test_a_plain_loop_trains_one_candidate_per_step_and_decides_at_the_budget():
    model = select_model()
    one_round, optimizer = attached(model, select_steps=6)
    data = batches()
    for _ in range(6):
        step(model, optimizer, data)
    assert one_round.done and one_round.steps == 6
    assert [r.step for r in one_round.records] == list(range(1, 7))
    assert all(set(r.trained) == {"0"} for r in one_round.records)
    assert sorted(r.trained["0"] for r in one_round.records[:3]) == ["2x2", "4x4", "8x8"]
    decision = one_round.decisions["0"]
    assert one_round.live == {"0": [decision.block]} and decision.step <= 6
    assert one_round.records[decision.step - 1].decided == {"0": decision.block}


def test_candidates_that_leave_leave_the_optimizers_param_groups_and_state():
    model = select_model()
    one_round, optimizer = attached(model, select_steps=3)
    gone = {k: list(b.parameters()) for k, b in model[0].branches.items()}
    data = batches()
    while not one_round.done:  # the race may extend itself past select_steps
        step(model, optimizer, data)
    winner = one_round.decisions["0"].block
    left = [p for k, ps in gone.items() if k != winner for p in ps]
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert left and not in_groups & {id(p) for p in left}
    assert not set(map(id, optimizer.state)) & {id(p) for p in left}
    assert {id(p) for p in gone[winner]} <= in_groups


def test_gradient_accumulation_advances_the_race_once_per_optimizer_step_and_trains_one_candidate_per_step():
    model = select_model()
    one_round, optimizer = attached(model, select_steps=6)
    data = batches()
    for _ in range(2):
        before = snapshot(model)
        step(model, optimizer, data, micro=4)
        assert changed(before, model) == {one_round.records[-1].trained["0"]}
    assert one_round.steps == 2 and len(one_round.records) == 2


def test_an_eval_mode_forward_runs_each_layers_leader_alone():
    model = select_model()
    one_round, _ = attached(model)
    x = torch.randn(4, 16)
    model.eval()
    with torch.no_grad(), model[0].only(one_round.leader("0")):
        expected = model(x)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    assert list(model[0].branches) == ["2x2", "4x4", "8x8"]  # routing ends with the forward


def test_candidates_that_sat_out_do_not_move_even_when_zero_grad_keeps_zero_gradients():
    model = select_model()
    one_round, optimizer = attached(model)
    data = batches()
    for _ in range(3):
        before = snapshot(model)
        for x, y in data[:1]:
            nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        assert changed(before, model) == {one_round.records[-1].trained["0"]}


@pytest.mark.parametrize("compute", ["factored", "merged"])
def test_bf16_autocast_on_cpu_runs_the_race_to_a_decision(compute):
    model = select_model()
    model[0].compute = compute
    one_round, optimizer = attached(model, select_steps=4, extend=1.0)  # it decides at its 4th step
    data = batches()
    for _ in range(4):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(data[0][0]), data[0][1])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert one_round.done and model[0].branches[one_round.decisions["0"].block].s.dtype == torch.float32


def test_a_grad_scaler_step_skipped_on_inf_neither_advances_the_race_nor_moves_a_candidate():
    model = select_model()
    one_round, optimizer = attached(model, select_steps=4)
    scaler = torch.amp.GradScaler("cpu")
    x, y = batches()[0]
    with torch.autocast("cpu", dtype=torch.float16):
        loss = nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    trained = one_round.race.active["0"]
    model[0].branches[trained].s.grad[0, 0] = math.inf
    before = snapshot(model)
    scaler.step(optimizer)  # skipped: optimizer.step() is never called
    scaler.update()
    optimizer.zero_grad()
    assert one_round.steps == 0 and not one_round.records and changed(before, model) == set()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert one_round.steps == 1 and one_round.records[0].trained == {"0": trained}  # the same turn, retried
    assert changed(before, model) == {trained}


def test_gradient_clipping_and_a_users_scheduler_keep_working_across_removals():
    model = select_model()
    one_round, optimizer = attached(model, select_steps=4, extend=1.0)  # ends at its budget, whatever it reads
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    data = batches()
    for _ in range(6):
        for x, y in data[:1]:
            nn.functional.cross_entropy(model(x), y).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    assert one_round.done and one_round.steps == 4  # the race counts its own steps only
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 ** 6)


def test_lambda2_soft_thresholds_s_after_every_step_of_the_candidate_that_trained():
    model = select_model()
    one_round, optimizer = attached(model, lambda2=10.0)  # a threshold larger than any Adam step
    step(model, optimizer, batches())
    trained = one_round.records[0].trained["0"]
    for k, branch in model[0].branches.items():
        assert bool((branch.s == 0).all()) == (k == trained)


def test_finish_decides_a_race_the_loop_ended_early_and_plan_gives_the_exported_pattern():
    model = select_model()
    one_round, optimizer = attached(model, select_steps=100)
    step(model, optimizer, batches())
    with pytest.raises(BadInput, match="race is open at step 1 of 100 in 0; call finish"):
        one_round.plan()
    decisions = one_round.finish()
    plan = one_round.plan()
    assert set(plan) == {"0"} and decisions["0"].step == 1
    assert parse_plan({n: p.to_dict() for n, p in plan.items()}) == plan
    assert plan["0"].to_dict() == {"block": decisions["0"].block, "rank": 1}


def test_validate_may_be_a_callable_giving_per_example_hits():
    model = select_model()
    x, y = torch.randn(40, 16), torch.randint(0, 3, (40,))
    seen = []

    def validate(m: nn.Module) -> torch.Tensor:
        seen.append(list(m[0].branches))
        return m(x).argmax(-1) == y

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    one_round = OneRound(model, optimizer, select_steps=2, validate=validate)
    for _ in range(2):  # the race's two steps: a reading after the first, its check at its end
        step(model, optimizer, batches())
    assert sorted(seen) == [["2x2"], ["2x2"], ["4x4"], ["4x4"], ["8x8"], ["8x8"]]  # each candidate alone, twice
    assert len(one_round.race.estimates["0"]["2x2"].correct) == 40


def test_a_data_loader_validates_on_its_first_examples_at_the_check():
    model = select_model()
    loader = DataLoader(TensorDataset(torch.randn(64, 16), torch.randint(0, 3, (64,))), batch_size=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    one_round = OneRound(model, optimizer, select_steps=2, validate=loader, check_examples=30)
    for _ in range(2):  # the race's two steps: its check is at its end
        step(model, optimizer, batches())
    assert {len(e.correct) for e in one_round.race.estimates["0"].values()} == {10}  # 30 over 3 candidates


def test_close_removes_every_hook():
    model = select_model()
    one_round, optimizer = attached(model)
    one_round.close()
    step(model, optimizer, batches())
    assert one_round.steps == 0 and not model[0]._forward_pre_hooks and not optimizer._optimizer_step_post_hooks


def test_a_layer_races_under_one_one_round_at_a_time():
    model = select_model()
    first, _ = attached(model)
    with pytest.raises(BadInput, match="layers 0 already race under another OneRound; close\\(\\) it first"):
        attached(model)
    first.close()
    assert attached(model)[0].live == {"0": ["2x2", "4x4", "8x8"]}


@pytest.mark.parametrize("model, steps, message", [
    (nn.Linear(4, 2), 5, "the model has no PatternSelectLinear layer; give it candidates first"),
    (None, 0, "select_steps must be an integer >= 1 (optimizer steps), got 0"),
])
def test_bad_input_names_what_is_wrong_and_what_is_allowed(model, steps, message):
    model = model or select_model()
    with pytest.raises(BadInput, match=re.escape(message)):
        OneRound(model, torch.optim.SGD(model.parameters(), lr=0.1), select_steps=steps, validate=batches())


# --------------------------------------------------------------------------------- the trainer's own


def test_a_hand_written_loop_gives_the_trainers_decisions_and_final_weights():
    data = load_dataset("digits", limit=400)
    config = TrainConfig(epochs=1, select_epochs=1, batch_size=64, lr=1e-2, lambda2=1e-4, compute="factored",
                         progress=False)

    def fresh() -> nn.Module:
        seed_everything(0)
        model = build_model("mlp", data.input_shape, data.num_classes, hidden=(16,))
        kronify(model, candidates=[(2, 2), (4, 4)], include=["layers.0"])
        return model

    result = train(fresh(), data, config)

    model = fresh()
    optimizer = make_optimizer(model, config)
    train_batches, val = Batches(data.train, 64, "cpu"), Batches(data.val, 64, "cpu")
    steps = math.ceil(len(data.train) / 64)
    one_round = OneRound(model, optimizer, select_steps=steps, validate=val, lambda2=config.lambda2,
                         check_examples=min(2048, round(0.25 * steps * 64)))
    generator = torch.Generator().manual_seed(0)
    with default_compute_as("factored"):
        for schedule in ("constant", "cosine"):  # the race at a constant rate, then the winner's cosine
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s, shape=schedule: lr_factor(s, steps, 0, shape))
            for _ in range(2 if schedule == "constant" else 1):  # the race may extend itself to twice its steps
                if schedule == "constant" and one_round.done:
                    break
                for x, y in train_batches.shuffled(generator):
                    optimizer.zero_grad(set_to_none=True)
                    nn.functional.cross_entropy(model(x), y).backward()
                    optimizer.step()
                    scheduler.step()
                    if schedule == "constant" and one_round.done:
                        break  # the trainer's training starts as the race ends
    one_round.close()
    finalize_model(model)
    assert {n: d.block for n, d in one_round.decisions.items()} == result.selected
    assert {n: p.to_dict() for n, p in one_round.plan().items()} == result.plan
    for (name, mine), theirs in zip(model.state_dict().items(), result.model.state_dict().values()):
        assert torch.equal(mine, theirs), name


# --------------------------------------------------------------------------------- the example


def test_the_own_loop_example_runs_and_prints_its_decision_and_plan(capsys):
    result = own_loop.main(epochs=2, select_steps=8)
    out = capsys.readouterr().out
    assert re.search(r"decisions: \{'0': '\dx\d at step \d+ \((survivor|budget|fallback)\)'\}", out)
    assert re.search(r"plan: \{'0': \{'block': '\dx\d', 'rank': 1\}\}", out)
    assert result["decisions"]["0"].step <= 16 and 0.5 < result["accuracy"] <= 1  # the race's cap: twice its steps


def test_the_own_loop_page_snippet_runs_as_written(capsys):
    code = code_blocks("docs/own-loop.md", "python")[0]
    namespace: dict = {}
    exec(compile(code, "docs/own-loop.md", "exec"), namespace)
    assert namespace["one_round"].done and "Decision(block=" in capsys.readouterr().out
    assert isinstance(namespace["model"][0], kronsearch.KronLinear)
