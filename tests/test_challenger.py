"""A race's costlier plausible candidates challenge its pick, and the study's pruner stops one that trails it."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from kronsearch.pruners import ChallengerHyperbandPruner, ChallengerMedianPruner, make_pruner, trailing_note
from kronsearch.record import TrialRecord
from kronsearch.report.show import row_notes, trial_row
from kronsearch.space import load_space
from kronsearch.strategies import race_plan, reuse
from kronsearch.trial_run import TrialSpec
from tests.test_shared_race import fell_back, race_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)


def study_with(*trials: optuna.trial.FrozenTrial) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for trial in trials:
        study.add_trial(trial)
    return study


SOURCE = race_trial(0, 0.80, {"fc1": "8x8"}, {"fc1": fell_back(["8x8", "4x4", "2x2"], "8x8", "cheapest")},
                    curve={1: 0.70, 2: 0.75, 3: 0.80})


def test_a_plausible_candidate_costlier_than_the_races_pick_challenges_it():
    assert race_plan(study_with(SOURCE), SOURCE, 1, 0.5) == ({"fc1": "4x4"}, True)


def test_a_trial_that_trains_a_challenger_of_a_race_records_it():
    study = study_with(SOURCE)
    trial = study.ask()
    spec = reuse(trial, TrialSpec("one_round", 1, 1e-4), SOURCE, 0.5)
    record = TrialRecord.of(study.get_trials()[-1])
    assert spec.plan == {"fc1": "4x4"} and (record.race_of, record.challenges) == (0, 0)


def test_a_plausible_candidate_cheaper_than_the_races_pick_does_not_challenge_it():
    source = race_trial(0, 0.8, {"fc1": "2x2"}, {"fc1": fell_back(["8x8", "4x4", "2x2"], "2x2")})
    assert race_plan(study_with(source), source, 1, 0.5) == ({"fc1": "8x8"}, False)


def test_the_tolerance_pick_trained_after_the_plausible_candidates_challenges_nothing():
    study = study_with(SOURCE, race_trial(1, 0.79, {"fc1": "4x4"}, race_of=0),
                       race_trial(2, 0.78, {"fc1": "2x2"}, race_of=0))
    assert race_plan(study, SOURCE, 3, 0.5) == ({"fc1": "8x8"}, False)


def challenger(curve: dict[int, float], challenges: int | None = 0) -> optuna.trial.FrozenTrial:
    """A running trial of SOURCE's race with these reported val accuracies."""
    attrs = {"kind": "one_round", "race_of": 0} | ({} if challenges is None else {"challenges": challenges})
    trial = create_trial(state=TrialState.RUNNING, params={"lambda2": 1e-4},
                         distributions={"lambda2": FloatDistribution(1e-5, 1e-3)}, intermediate_values=curve,
                         user_attrs=attrs)
    trial.number = 1
    return trial


PRUNER = ChallengerMedianPruner(n_startup_trials=10, n_warmup_steps=2)  # too few trials for a median verdict


def test_a_challenger_that_trails_the_picks_training_at_the_same_epoch_is_pruned():
    assert PRUNER.prune(study_with(SOURCE), challenger({1: 0.72, 2: 0.74}))


def test_a_challenger_level_with_or_ahead_of_the_picks_training_goes_on():
    assert not PRUNER.prune(study_with(SOURCE), challenger({1: 0.60, 2: 0.75}))


def test_hyperband_prunes_a_challenger_that_trails_too():
    hyperband = ChallengerHyperbandPruner(min_resource=1, max_resource=3)
    study = study_with(SOURCE, challenger({1: 0.69}))  # stored: Hyperband reads the trial back by its id
    assert hyperband.prune(study, study.get_trials()[-1])


def test_a_challenger_is_not_judged_before_the_warmup_steps():
    assert not PRUNER.prune(study_with(SOURCE), challenger({1: 0.60}))


def test_a_trial_that_challenges_nothing_is_not_judged_against_the_pick():
    assert not PRUNER.prune(study_with(SOURCE), challenger({1: 0.50, 2: 0.50}, challenges=None))


def test_the_median_rule_still_prunes_a_trial_under_the_median():
    median = ChallengerMedianPruner(n_startup_trials=1, n_warmup_steps=2)
    assert median.prune(study_with(SOURCE), challenger({1: 0.50, 2: 0.50}, challenges=None))


def test_a_challenger_past_the_picks_reported_epochs_goes_on():
    assert not PRUNER.prune(study_with(SOURCE), challenger({1: 0.60, 2: 0.74, 3: 0.7, 4: 0.7}))


def test_a_studys_median_and_hyperband_pruners_carry_the_challenger_rule_and_none_prunes_nothing(write_space):
    pruners = {kind: make_pruner(load_space(write_space(search={"pruner": kind})))
               for kind in ("median", "hyperband", "none")}
    assert isinstance(pruners["median"], ChallengerMedianPruner)
    assert isinstance(pruners["hyperband"], ChallengerHyperbandPruner)  # still a HyperbandPruner for the samplers
    assert isinstance(pruners["hyperband"], optuna.pruners.HyperbandPruner)
    assert isinstance(pruners["none"], optuna.pruners.NopPruner)


def test_the_challenge_is_recorded_on_the_trial_and_shown():
    trial = challenger({})
    assert TrialRecord.of(trial).challenges == 0
    notes = row_notes(trial_row(trial, study_with(SOURCE)))
    assert "a candidate the race found plausible, costlier than #0's plan: pruned if it trailed #0's training at an " \
           "epoch" in notes


def test_a_pruned_challengers_record_says_whose_training_it_trailed():
    study = study_with(SOURCE)
    assert trailing_note(study, challenger({}), 2, 0.74) == "; it trailed #0's training at that epoch (0.7500)"


def test_a_pruned_trial_that_did_not_trail_a_pick_gets_no_such_note():
    study = study_with(SOURCE)
    assert trailing_note(study, challenger({}), 2, 0.76) == ""
    assert trailing_note(study, challenger({}, challenges=None), 2, 0.50) == ""
