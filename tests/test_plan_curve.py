"""One pruning curve for every trial: each reports the epochs of the plan it trains, from 1 (backends.base.PlanSteps);
a one-round trial's race epochs are not on it, so per_pattern trials, trials that train a plan of a race and racing
trials after their race are judged against each other, through the study both backends prune with. Where every
trial races (one_round, search.races: per_trial), every epoch is on it, races included."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from kronsearch import record
from kronsearch.backends.base import PlanSteps
from kronsearch.report.trials import trial_history
from kronsearch.search import run_search
from kronsearch.space import load_space
from kronsearch.study import open_study
from kronsearch.trainer import EpochReport
from tests.test_report import ONE_ROUND_DISTS, PER_PATTERN_DISTS

optuna.logging.set_verbosity(optuna.logging.WARNING)

PARAMS = {"one_round": ({"rank": 1, "lambda1": 1e-3, "lambda2": 1e-4}, ONE_ROUND_DISTS),
          "per_pattern": ({"block": "2x2", "rank": 1, "lambda2": 1e-4}, PER_PATTERN_DISTS)}


def epoch(number: int, phase: str) -> EpochReport:
    return EpochReport(epoch=number, phase=phase, train_loss=1.0, penalty=0.0, val_accuracy=0.5, block_sparsity=0.0,
                       candidate_norms={}, live_candidates={}, leaders={}, lr=0.01, seconds=0.1, train_macs_total=1)


def finished(kind: str, curve: dict[int, float]) -> optuna.trial.FrozenTrial:
    """A complete trial of `kind` with this per-epoch val accuracy curve."""
    params, dists = PARAMS[kind]
    return create_trial(value=curve[max(curve)], params=params, distributions=dists, intermediate_values=curve,
                        user_attrs={"kind": kind})


@pytest.fixture
def hybrid_study(write_space, workdir):
    """open_study(...) of a hybrid space: the study `kronsearch run` prunes with, on either backend."""
    space = load_space(write_space(search={"strategy": "hybrid", "trials": 4, "pruner": "median"}))
    return open_study(space, "hybrid", f"sqlite:///{workdir / 'p.db'}", False, workdir / "studies")


def pruned_at(study: optuna.Study, kind: str, value: float, race_of: int | None = None) -> bool:
    """Start a trial of `kind` (race_of: training a plan of that race), report `value` at step 1: would the study's
    pruner stop it?"""
    trial = study.ask()
    record.start(trial, kind)
    if race_of is not None:
        record.reuse_race(trial, race_of)
    trial.report(value, 1)
    return trial.should_prune()


RACE_THEN_TRAIN = [epoch(1, "select"), epoch(2, "select"), epoch(3, "train"), epoch(4, "train"), epoch(5, "finetune")]


def test_a_races_epochs_are_off_the_curve_and_its_winners_epochs_count_from_one(write_space):
    steps = PlanSteps(load_space(write_space()))  # one_round, races per_rank
    assert [steps(r) for r in RACE_THEN_TRAIN] == [None, None, 1, 2, 3]


def test_a_hybrid_studys_races_are_off_the_curve_whatever_search_races_says(write_space):
    steps = PlanSteps(load_space(write_space(search={"strategy": "hybrid", "races": "per_trial"})))
    assert [steps(r) for r in RACE_THEN_TRAIN] == [None, None, 1, 2, 3]


def test_where_every_trial_races_every_epoch_is_on_the_curve(write_space):
    steps = PlanSteps(load_space(write_space(search={"races": "per_trial"})))
    assert [steps(r) for r in RACE_THEN_TRAIN] == [1, 2, 3, 4, 5]


def test_a_trial_without_a_race_reports_its_epochs_as_they_are(write_space):
    steps = PlanSteps(load_space(write_space()))
    assert [steps(epoch(n, "train")) for n in (1, 2, 3)] == [1, 2, 3]


def test_a_racing_trial_records_only_its_winners_epochs(write_space):
    run_search(write_space(train={"epochs": 2}, search={"trials": 1}), progress=False)
    study = optuna.load_study(study_name="tiny:one_round", storage="sqlite:///studies/tiny.db")
    trial, = study.get_trials(states=(TrialState.COMPLETE,))
    phases = [e["phase"] for e in trial_history(study, trial)]
    assert phases[0] == "select" and phases.count("train") == 2  # the race, then its winner's 2 epochs
    assert sorted(trial.intermediate_values) == [1, 2]
    assert trial.intermediate_values[2] == trial.value


def test_hybrid_per_pattern_trials_are_pruned_against_one_round_curves(hybrid_study):
    for _ in range(3):
        hybrid_study.add_trial(finished("one_round", {1: 0.9}))
    assert pruned_at(hybrid_study, "per_pattern", 0.5)


def test_trials_that_train_a_plan_of_a_race_are_pruned_against_racing_trials(hybrid_study):
    for _ in range(3):
        hybrid_study.add_trial(finished("one_round", {1: 0.9}))  # racing trials, their winners' epochs
    assert pruned_at(hybrid_study, "one_round", 0.5, race_of=0)
    assert not pruned_at(hybrid_study, "one_round", 0.95, race_of=0)


def test_hyperband_prunes_on_the_same_curve(write_space, workdir):
    space = load_space(write_space(search={"strategy": "hybrid", "trials": 4, "pruner": "hyperband"}))
    study = open_study(space, "hybrid", f"sqlite:///{workdir / 'h.db'}", False, workdir / "studies")
    for _ in range(3):  # train.epochs 1: one bracket, one rung at step 1
        study.add_trial(create_trial(value=0.9, params=PARAMS["one_round"][0], distributions=PARAMS["one_round"][1],
                                     intermediate_values={1: 0.9}, user_attrs={"kind": "one_round"},
                                     system_attrs={"completed_rung_0": 0.9}))
    assert pruned_at(study, "per_pattern", 0.5)
