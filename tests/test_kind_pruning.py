"""Pruning by kind: a hybrid study's per_pattern trials are judged against per_pattern trials only, and its
one_round trials against one_round trials, through the study both backends prune with (trial.should_prune)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import create_trial

from kronsearch import record
from kronsearch.space import load_space
from kronsearch.study import open_study
from tests.test_report import ONE_ROUND_DISTS, PER_PATTERN_DISTS

optuna.logging.set_verbosity(optuna.logging.WARNING)

PARAMS = {"one_round": ({"rank": 1, "lambda1": 1e-3, "lambda2": 1e-4}, ONE_ROUND_DISTS),
          "per_pattern": ({"block": "2x2", "rank": 1, "lambda2": 1e-4}, PER_PATTERN_DISTS)}


def finished(kind: str, curve: dict[int, float], race_of: int | None = None,
             **system_attrs: float) -> optuna.trial.FrozenTrial:
    """A complete trial of `kind` with this per-epoch val accuracy curve (race_of: it trained a plan of that race)."""
    params, dists = PARAMS[kind]
    return create_trial(value=curve[max(curve)], params=params, distributions=dists, intermediate_values=curve,
                        user_attrs={"kind": kind, **({} if race_of is None else {"race_of": race_of})},
                        system_attrs=system_attrs)


@pytest.fixture
def hybrid_study(write_space, workdir):
    """open_study(...) of a hybrid space: the study `kronsearch run` prunes with, on either backend."""
    def make(pruner: str) -> optuna.Study:
        space = load_space(write_space(search={"strategy": "hybrid", "trials": 4, "pruner": pruner}))
        return open_study(space, "hybrid", f"sqlite:///{workdir / 'p.db'}", False, workdir / "studies")

    return make


def pruned_at(study: optuna.Study, kind: str, value: float, epoch: int = 1, race_of: int | None = None) -> bool:
    """Start a trial of `kind` (race_of: training a plan of that race), report `value` at `epoch`: would the study's
    pruner stop it?"""
    trial = study.ask()
    record.start(trial, kind)
    if race_of is not None:
        record.reuse_race(trial, race_of)
    trial.report(value, epoch)
    return trial.should_prune()


def test_hybrid_per_pattern_trials_are_not_pruned_by_one_round_curves(hybrid_study):
    study = hybrid_study("median")
    for _ in range(3):
        study.add_trial(finished("one_round", {1: 0.9}))
    assert not pruned_at(study, "per_pattern", 0.5)
    # the same report in a plain median pruner's eyes: below the one-round median, pruned
    assert optuna.pruners.MedianPruner(n_startup_trials=3).prune(study, study.get_trials()[-1])


def test_hybrid_per_pattern_trials_are_pruned_against_per_pattern_trials(hybrid_study):
    study = hybrid_study("median")
    for _ in range(3):
        study.add_trial(finished("one_round", {1: 0.3}))
        study.add_trial(finished("per_pattern", {1: 0.8}))
    assert pruned_at(study, "per_pattern", 0.5)
    assert not pruned_at(study, "one_round", 0.5)


def test_hyperband_prunes_each_kind_against_its_own_kind(hybrid_study):
    study = hybrid_study("hyperband")  # train.epochs 1: one bracket, one rung at epoch 1
    for _ in range(3):
        study.add_trial(finished("one_round", {1: 0.9}, completed_rung_0=0.9))
    assert not pruned_at(study, "per_pattern", 0.5)
    assert pruned_at(study, "one_round", 0.5)


def test_one_round_trials_that_train_a_races_pick_are_not_pruned_by_racing_curves(hybrid_study):
    study = hybrid_study("median")
    for _ in range(3):
        study.add_trial(finished("one_round", {1: 0.9}))  # racing trials
    assert not pruned_at(study, "one_round", 0.5, race_of=0)


def test_one_round_trials_that_train_a_races_pick_are_pruned_against_each_other(hybrid_study):
    study = hybrid_study("median")
    for _ in range(3):
        study.add_trial(finished("one_round", {1: 0.3}))
        study.add_trial(finished("one_round", {1: 0.8}, race_of=0))
    assert pruned_at(study, "one_round", 0.5, race_of=0)
    assert not pruned_at(study, "one_round", 0.5)  # a racing trial: above the racing trials' median
