"""A race that knows when it cannot decide (kronsearch/evidence.py, kronsearch/selection.py): it separates candidates
by a margin beyond the validation sample's noise and the field's pace, extends itself while candidates that still
learn are not separated, falls back at its cap and says so, and records every candidate's estimate."""

from __future__ import annotations

import pytest
import torch
from optuna.trial import FrozenTrial, create_trial
from torch import nn
from torch.utils.data import TensorDataset

from kronsearch.data import load_dataset
from kronsearch.data.batches import Batches
from kronsearch.evidence import Estimate, read, within_tolerance
from kronsearch.layers.errors import BadInput
from kronsearch.layers.kronify import kronify
from kronsearch.layers.pattern_select import PatternSelectLinear
from kronsearch.models import build_model
from kronsearch.one_round import OneRound
from kronsearch.report.show import race_lines
from kronsearch.search import fallback_note
from kronsearch.selection import DECIDED_BY, Race
from kronsearch.space import SpaceError, load_space
from kronsearch.trainer import TrainConfig, make_optimizer, seed_everything

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def estimates(accuracies: dict[str, float], n: int = 1000) -> dict[str, Estimate]:
    """Candidates right on the first accuracy * n of n shared examples: paired, so the gaps are certain."""
    return {k: Estimate(a, 1.0 - a, torch.arange(n) < round(a * n)) for k, a in accuracies.items()}


def race(select_steps: int = 8, extend: float = 2.0, fallback: str = "most_accurate") -> Race:
    seed_everything(0)
    model = nn.Sequential(PatternSelectLinear(16, 8, [(2, 2), (4, 4), (8, 8)]), nn.ReLU(), nn.Linear(8, 3))
    validation = Batches(TensorDataset(torch.randn(64, 16), torch.randint(0, 3, (64,))), 32, "cpu")
    return Race(model, make_optimizer(model, TrainConfig()), select_steps, 0.5, validation, extend=extend,
                fallback=fallback)


def measured_in_turn(monkeypatch, contest: Race, readings: list[dict[str, float]]) -> list[int]:
    """Each measurement of the race sees the next of `readings` (the last one from then on); returns the steps at
    which it measured."""
    steps = []

    def measure(name, measured=None):
        steps.append(contest.steps)
        now = readings[min(len(steps), len(readings)) - 1]
        return estimates({k: a for k, a in now.items() if k in contest.layers[name].branches})

    monkeypatch.setattr(contest, "measure_candidates", measure)
    return steps


def run(contest: Race, steps: int) -> None:
    for _ in range(steps):
        with contest.routed():
            pass
        contest.step()


# --------------------------------------------------------------------------------- the evidence


def test_a_gap_within_the_fields_pace_is_not_evidence():
    measured = estimates({"2x2": 0.40, "4x4": 0.30})
    assert within_tolerance(measured, 0.005, 2.0) == ["2x2"]  # 10 points on 1000 paired examples: separated
    assert within_tolerance(measured, 0.005, 2.0, volatility=0.08) == ["2x2", "4x4"]  # the field moves 8 a reading


def test_a_reading_knows_which_candidates_still_learn_and_the_fields_pace():
    before, now = estimates({"2x2": 0.30, "4x4": 0.50}), estimates({"2x2": 0.45, "4x4": 0.501})
    reading = read(now, before, 0.005)
    assert reading.learning == ["2x2", "*"] and reading.pace == pytest.approx(0.15) and not reading.settled
    assert read(now, now, 0.005).settled


def test_without_a_previous_reading_whether_candidates_still_learn_is_unknown():
    now = estimates({"2x2": 0.45, "4x4": 0.50})
    assert not read(now, {}, 0.005).known and not read(now, {}, 0.005).settled



def test_a_field_whose_accuracy_barely_moves_but_whose_loss_still_falls_is_still_learning():
    hits = torch.rand(400, generator=torch.Generator().manual_seed(0)) < 0.2  # near chance on 400 examples
    later = hits | (torch.arange(400) < 4)  # at most +1 point: within the accuracy's noise
    losses = torch.full((400,), 2.3) + 0.1 * torch.randn(400, generator=torch.Generator().manual_seed(1))
    before = {"2x2": Estimate(float(hits.float().mean()), 2.3, hits, losses)}
    now = {"2x2": Estimate(float(later.float().mean()), 2.2, later, losses - 0.1)}  # every example's loss fell
    assert read(now, before, 0.005).learning == ["2x2"]
    without_losses = {k: Estimate(e.accuracy, e.loss, e.correct) for k, e in now.items()}
    assert read(without_losses, before, 0.005).settled  # accuracy alone: the old reading, settled


# --------------------------------------------------------------------------------- the race


def test_the_race_reads_its_candidates_an_interval_before_its_end_and_checks_at_its_end(monkeypatch):
    contest = race(select_steps=8)
    measured = measured_in_turn(monkeypatch, contest, [{"2x2": 0.9, "4x4": 0.9, "8x8": 0.9}])
    run(contest, 8)
    assert measured == [4, 8] and contest.done and contest.decisions["0"].by == "budget"


def test_candidates_that_still_learn_and_are_not_separated_extend_the_race_an_interval_at_a_time(monkeypatch):
    contest = race(select_steps=8)
    rising = [{"2x2": 0.30, "4x4": 0.32, "8x8": 0.31}, {"2x2": 0.50, "4x4": 0.47, "8x8": 0.45},
              {"2x2": 0.70, "4x4": 0.698, "8x8": 0.62}]  # then no change: settled at step 16
    measured = measured_in_turn(monkeypatch, contest, rising)
    run(contest, 8)
    assert not contest.done and contest.extended  # at its budget they still rose by 15-20 points
    run(contest, 4)
    assert measured == [4, 8, 12] and not contest.done
    run(contest, 4)  # settled between the last two readings: 8x8 is out (8 points), 4x4 the cheapest within
    assert contest.decisions["0"].block == "4x4" and contest.decisions["0"].by == "budget"
    assert contest.decisions["0"].step == 16


def test_at_its_cap_a_race_still_learning_falls_back_to_the_most_accurate_and_says_so(monkeypatch):
    contest = race(select_steps=8, extend=2.0)
    measured_in_turn(monkeypatch, contest, [{"2x2": 0.1 * i, "4x4": 0.1 * i + 0.02, "8x8": 0.1 * i + 0.01}
                                            for i in range(1, 6)])
    run(contest, 16)
    decision = contest.decisions["0"]
    assert (decision.block, decision.by, decision.step) == ("4x4", "fallback", 16)
    assert decision.by not in ("budget", "survivor") and DECIDED_BY[-1] == "fallback"


@pytest.mark.parametrize(("fallback", "kept"), [("most_accurate", "2x2"), ("cheapest", "4x4")])
def test_at_its_cap_the_fallback_rule_keeps_the_most_accurate_or_the_cheapest_within_tolerance(monkeypatch, fallback,
                                                                                              kept):
    contest = race(select_steps=8, extend=2.0, fallback=fallback)
    # still rising 10 points an interval; at the cap 4x4 (the cheapest here) is 0.3 point under 2x2, 8x8 2 points
    measured_in_turn(monkeypatch, contest, [{"2x2": 0.1 * i + 0.02, "4x4": 0.1 * i + 0.017, "8x8": 0.1 * i}
                                            for i in range(1, 6)])
    run(contest, 16)
    assert (contest.decisions["0"].block, contest.decisions["0"].by) == (kept, "fallback")


def test_an_unknown_fallback_rule_is_refused_naming_the_rules():
    with pytest.raises(BadInput, match=r"fallback is one of most_accurate, cheapest, got 'best'"):
        race(fallback="best")


def test_a_space_with_an_unknown_race_fallback_is_refused_naming_the_rules(write_space):
    with pytest.raises(SpaceError, match=r"train\.race_fallback.*most_accurate.*cheapest"):
        load_space(write_space(train={"race_fallback": "best"}))


def test_a_candidate_far_behind_while_the_field_still_learns_is_not_removed(monkeypatch):
    contest = race(select_steps=8)
    measured_in_turn(monkeypatch, contest, [{"2x2": 0.20, "4x4": 0.06, "8x8": 0.15},
                                            {"2x2": 0.45, "4x4": 0.06, "8x8": 0.39}])  # 4x4 has not started yet
    run(contest, 8)
    assert list(contest.layers["0"].branches) == ["2x2", "4x4", "8x8"] and not contest.done


def test_finish_before_any_reading_falls_back(monkeypatch):
    contest = race(select_steps=8)
    measured_in_turn(monkeypatch, contest, [{"2x2": 0.6, "4x4": 0.5, "8x8": 0.598}])
    run(contest, 2)
    contest.finish()
    assert contest.decisions["0"].by == "fallback" and contest.decisions["0"].block == "2x2"


def test_extend_below_one_is_refused_naming_what_is_allowed():
    with pytest.raises(BadInput, match=r"extend is the race's cap as a multiple of select_steps, >= 1 \(1: never "
                                       r"extend\), got 0.5"):
        race(extend=0.5)


def test_the_record_keeps_each_candidates_accuracy_se_examples_and_steps(monkeypatch):
    contest = race(select_steps=6)
    measured_in_turn(monkeypatch, contest, [{"2x2": 0.9, "4x4": 0.895, "8x8": 0.5}])
    run(contest, 6)
    record = contest.records()["0"]
    assert record["by"] == "budget" and record["block"] == "4x4" and record["step"] == 6
    assert record["estimates"]["8x8"] == {"accuracy": 50.0, "se": pytest.approx(1.58, abs=0.01), "examples": 1000,
                                          "steps": 2}
    assert sum(e["steps"] for e in record["estimates"].values()) == 6 and record["pace"] == 0.0


# --------------------------------------------------------------------------------- the planted block


def planted_race(extend: float, seed: int = 1) -> OneRound:
    """The issue's setup through OneRound in a plain loop: a rank-1 teacher with 16x16 blocks, half zero, on a 16x64
    linear layer; six candidates, 240 race steps (40 each), batch 32. On seed 1 every candidate is at 17-25% after
    its 40 steps (the planted one last) and the planted 16x16 takes off after 60-70."""
    data = load_dataset("synthetic", block=(16, 16), sparsity=0.5, seed=seed, n_train=4000, n_test=1000)
    seed_everything(seed)
    model = build_model("linear", data.input_shape, data.num_classes)
    kronify(model, candidates=[(2, 2), (4, 4), (8, 8), (4, 8), (8, 2), (16, 16)])
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2, batch_size=32))
    one_round = OneRound(model, optimizer, select_steps=240, validate=Batches(data.val, 256, "cpu"), seed=seed,
                         extend=extend)
    generator = torch.Generator().manual_seed(seed)
    while not one_round.done:
        for x, y in Batches(data.train, 32, "cpu").shuffled(generator):
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            if one_round.done:
                break
    return one_round


def test_a_planted_block_the_race_cannot_separate_at_its_budget_is_found_by_extending_the_race():
    one_round = planted_race(extend=2.0)
    decision = one_round.decisions["fc"]
    assert decision.step > 240 and decision.block == "16x16"
    estimates = one_round.race.records()["fc"]["estimates"]
    assert max(estimates, key=lambda k: estimates[k]["accuracy"]) == "16x16"


def test_a_race_that_may_not_extend_says_it_decided_without_separating_evidence():
    decision = planted_race(extend=1.0).decisions["fc"]
    assert decision.step == 240 and decision.by == "fallback"


# --------------------------------------------------------------------------------- the run's last line


def trial_deciding(number: int, by: dict[str, str]) -> FrozenTrial:
    """A complete one-round trial whose layers' races decided as `by` says."""
    decisions = {layer: {"block": "4x4", "step": 10, "by": how, "estimates": {}} for layer, how in by.items()}
    trial = create_trial(value=0.8, user_attrs={"metrics": {"decisions": decisions}})
    trial.number = number
    return trial


def test_a_run_whose_pick_fell_back_ends_naming_its_layers_what_to_raise_and_per_pattern():
    trials = [trial_deciding(0, {"fc1": "budget"}), trial_deciding(1, {"fc1": "fallback", "fc2": "fallback"})]
    note = fallback_note(trials, pick=1)
    assert note == ("race: 1 of the study's 2 races did not separate candidates that still learned and fell back at "
                    "the cap (train.race_fallback; the pick, trial 1, in fc1, fc2); raise train.select_epochs "
                    "(or train.epochs) so each candidate trains longer, or run --strategy per_pattern to train each "
                    "block alone")


def test_the_fallback_line_names_the_race_whose_pick_the_pick_trained():
    reused = create_trial(value=0.9, user_attrs={"metrics": {"selected": {"fc1": "4x4"}}, "race_of": 0})
    reused.number = 2
    note = fallback_note([trial_deciding(0, {"fc1": "fallback"}), trial_deciding(1, {"fc1": "budget"}), reused],
                         pick=2)
    assert note.startswith("race: 1 of the study's 2 races did not separate candidates that still learned and fell "
                           "back at the cap (train.race_fallback; trial 0, whose pick the pick (trial 2) trained, "
                           "in fc1); raise")


def test_a_trial_answered_from_a_race_is_not_counted_as_a_race_of_its_own():
    answered = trial_deciding(1, {"fc1": "fallback"})  # its metrics are copied from trial 0
    answered.user_attrs["duplicate_of"] = 0
    note = fallback_note([trial_deciding(0, {"fc1": "fallback"}), answered], pick=1)
    assert note.startswith("race: 1 of the study's 1 races did not separate candidates that still learned and fell "
                           "back at the cap (train.race_fallback; trial 0, whose result the pick (trial 1) reuses, in "
                           "fc1); raise")


def test_a_run_whose_races_all_decided_by_evidence_adds_no_line():
    assert fallback_note([trial_deciding(0, {"fc1": "survivor"})], pick=0) == ""


def test_kronsearch_run_prints_the_fallback_line_after_its_summary(monkeypatch, cli, write_space):
    from kronsearch import search

    summary = search.RunSummary(["tiny:one_round"], "sqlite://", completed=1, message="study tiny:one_round: done",
                                race_note="race: in 1 of 1 complete trials ...")
    monkeypatch.setattr(search, "run_search", lambda *args, **kwargs: summary)
    done = cli("run", write_space())
    assert done.exit_code == 0 and done.stdout.splitlines()[-2:] == [summary.message, summary.race_note]


@pytest.mark.parametrize(("rule", "words"), [("cheapest", "the cheapest within tolerance"),
                                             ("most_accurate", "the most accurate"), (None, "the most accurate")])
def test_show_says_which_rule_a_race_that_fell_back_kept_its_pick_by(rule, words):
    decision = {"block": "4x4", "step": 10, "by": "fallback", "estimates": {}, **({"rule": rule} if rule else {})}
    assert race_lines({"fc1": decision}) == [f"race fc1: 4x4 by fallback (not separated by the evidence: {words}); "]


def test_a_race_that_fell_back_records_its_rule_and_its_plausible_candidates_cheapest_first(monkeypatch):
    contest = race(select_steps=8, extend=1.0, fallback="cheapest")
    measured_in_turn(monkeypatch, contest, [{"2x2": 0.1 * i, "4x4": 0.1 * i - 0.003, "8x8": 0.1 * i - 0.05}
                                            for i in range(1, 4)])  # 8x8 5 points under: not plausible
    run(contest, 8)
    record = contest.records()["0"]
    assert (record["by"], record["rule"], record["plausible"]) == ("fallback", "cheapest", ["4x4", "2x2"])
