"""search.races: which one_round trials race, and how the others train a finished race's plans and record it."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState, create_trial
from rich.console import Console

from kronsearch import OneRound
from kronsearch.record import TrialRecord, write_study
from kronsearch.record import metrics as record_metrics
from kronsearch.report import plot as kplot
from kronsearch.report.show import row_notes, trial_row
from kronsearch.search import run_search
from kronsearch.space import SpaceError, load_space
from kronsearch.storage import load_studies
from kronsearch.strategies import race_plan, shared_race
from kronsearch.trainer import TrainConfig
from tests.test_ray_backend import RAY
from tests.test_report import ONE_ROUND_DISTS

optuna.logging.set_verbosity(optuna.logging.WARNING)


def trials_of(study_name: str = "tiny:one_round") -> list[optuna.trial.FrozenTrial]:
    (study,) = load_studies(study_name)
    return study.get_trials()


def history(trial: optuna.trial.FrozenTrial) -> list[dict]:
    return json.loads((Path("studies", trial.user_attrs["artifact_dir"]) / "history.json").read_text())


def test_later_trials_of_a_rank_train_the_pick_of_its_first_trials_race(write_space):
    run_search(write_space(search={"trials": 3}), progress=False)
    first, *later = trials_of()
    assert [t.state for t in (first, *later)] == [TrialState.COMPLETE] * 3
    assert TrialRecord.of(first).race_of is None and history(first)[0]["phase"] == "select"
    pick = record_metrics(first)["selected"]
    for trial in later:
        assert TrialRecord.of(trial).race_of == first.number
        assert record_metrics(trial)["selected"] == pick  # recorded as the race's trial records its pick
        assert {n: p["block"] for n, p in record_metrics(trial)["plan"].items()} == pick
        assert [e["phase"] for e in history(trial)] == ["train"]  # no race: one epoch of the pick
        assert trial.user_attrs["train_macs_total"] < first.user_attrs["train_macs_total"]


def test_per_rank_races_once_for_each_rank(write_space):
    run_search(write_space(search={"trials": 6}, space={"ranks": [1, 2]}), progress=False)
    trials = trials_of()
    first_of_rank: dict[int, int] = {}
    for trial in trials:
        first_of_rank.setdefault(trial.params["rank"], trial.number)
        expected = None if first_of_rank[trial.params["rank"]] == trial.number else first_of_rank[trial.params["rank"]]
        assert TrialRecord.of(trial).race_of == expected
    assert len(first_of_rank) == 2  # the random sampler drew both ranks: two races


def test_once_races_once_per_study_and_later_trials_keep_their_own_rank(write_space):
    run_search(write_space(search={"trials": 5, "races": "once"}, space={"ranks": [1, 2]}), progress=False)
    first, *later = trials_of()
    assert TrialRecord.of(first).race_of is None
    assert all(TrialRecord.of(t).race_of == first.number for t in later)
    assert {t.params["rank"] for t in later} == {1, 2}
    for trial in later:
        assert {p["rank"] for p in record_metrics(trial)["plan"].values()} == {trial.params["rank"]}


def test_per_trial_races_in_every_trial(write_space):
    run_search(write_space(search={"trials": 3, "races": "per_trial"}), progress=False)
    for trial in trials_of():
        assert TrialRecord.of(trial).race_of is None and history(trial)[0]["phase"] == "select"


def test_a_resumed_study_trains_the_pick_of_its_earlier_runs_race(write_space):
    path = write_space(search={"trials": 1})
    run_search(path, progress=False)
    run_search(path, trials=3, progress=False)
    first, *later = trials_of()
    assert TrialRecord.of(first).race_of is None
    assert [TrialRecord.of(t).race_of for t in later] == [first.number, first.number]


def test_fresh_races_again_and_no_trial_names_a_race_of_the_deleted_study(write_space):
    path = write_space(search={"trials": 2})
    run_search(path, progress=False)
    run_search(path, fresh=True, progress=False)
    trials = trials_of()
    assert [TrialRecord.of(t).race_of for t in trials] == [None, 0]
    assert history(trials[0])[0]["phase"] == "select"  # the new study's own race, not the deleted one's


def test_show_says_which_race_a_trial_trained_the_pick_of(write_space):
    run_search(write_space(search={"trials": 2}), progress=False)
    (study,) = load_studies("tiny:one_round")
    first, second = study.get_trials()
    assert any("race" in note and "by" in note for note in row_notes(trial_row(first, study)))
    assert "trained a plan of trial #0's race (search.races), without a race of its own" in \
        row_notes(trial_row(second, study))


def test_a_race_with_an_unknown_mode_is_refused_naming_the_allowed_ones(write_space):
    with pytest.raises(SpaceError, match=r"search\.races.*per_rank.*once.*per_trial"):
        load_space(write_space(search={"races": "sometimes"}))


def raced(number: int, rank: int, val: float, macs: int, state: TrialState = TrialState.COMPLETE,
          curve: dict[int, float] | None = None, **attrs: object) -> optuna.trial.FrozenTrial:
    """A one_round trial that raced and picked 4x4 on layers.0 (or, with attrs, reused/duplicated one), with its
    per-epoch val accuracies `curve` (step -> value)."""
    trial = create_trial(state=state, value=val if state == TrialState.COMPLETE else None,
                         params={"rank": rank, "lambda1": 1e-3, "lambda2": 1e-4}, distributions=ONE_ROUND_DISTS,
                         intermediate_values=curve or {},
                         user_attrs={"kind": "one_round", "metrics": {"selected": {"layers.0": "4x4"}},
                                     "val_accuracy": val, "final_macs": macs} | attrs)
    trial.number = number
    return trial


@pytest.fixture
def study_of(write_space):
    def make(*trials: optuna.trial.FrozenTrial, races: str = "per_rank") -> tuple[optuna.Study, object]:
        study = optuna.create_study(direction="maximize")
        for trial in trials:
            study.add_trial(trial)
        return study, load_space(write_space(search={"races": races, "tolerance": 0.5}))
    return make


def test_the_race_shared_is_the_tolerance_pick_among_the_races_of_the_rank(study_of):
    study, space = study_of(raced(0, 1, 0.90, 900), raced(1, 1, 0.898, 400), raced(2, 1, 0.80, 100),
                            raced(3, 2, 0.95, 50))
    assert shared_race(study, space, 1).number == 1  # within 0.5 point of the best and cheaper; #3 is rank 2


def test_no_race_is_shared_from_pruned_failed_duplicate_or_reusing_trials(study_of):
    study, space = study_of(raced(0, 1, 0.9, 1, TrialState.PRUNED), raced(1, 1, 0.9, 1, TrialState.FAIL),
                            raced(2, 1, 0.9, 1, duplicate_of=5), raced(3, 1, 0.9, 1, race_of=4))
    assert shared_race(study, space, 1) is None


def test_per_trial_shares_no_race_and_once_shares_across_ranks(study_of):
    assert shared_race(*study_of(raced(0, 1, 0.9, 1), races="per_trial"), 1) is None
    study, space = study_of(raced(0, 1, 0.9, 1), races="once")
    assert shared_race(study, space, 2).number == 0


def test_run_prints_that_later_trials_trained_a_races_pick(write_space):
    console = Console(record=True, width=200)
    run_search(write_space(search={"trials": 2}), progress=False, console=console)
    shown = console.export_text()
    assert "(from trial 0's race)" in shown.split("trial 1 one_round")[1].splitlines()[0]
    assert "race)" not in shown.split("trial 0 one_round")[1].splitlines()[0]


def test_export_of_a_trial_that_trained_a_races_pick_writes_that_pick(write_space, cli):
    run_search(write_space(search={"trials": 2}), progress=False)
    first, second = trials_of()
    result = cli("export", "tiny", "--trial", 1, "--out", "second.yaml")
    assert result.exit_code == 0, result.output
    exported = yaml.safe_load(Path("second.yaml").read_text())
    assert {n: p["block"] for n, p in exported["layers"].items()} == record_metrics(first)["selected"]
    assert exported["metrics"]["test_accuracy"] == second.user_attrs["test_accuracy"]


def test_export_of_a_trial_that_reused_a_race_names_that_race_in_its_provenance(write_space, cli):
    run_search(write_space(search={"trials": 2}), progress=False)
    assert cli("export", "tiny", "--trial", 1, "--out", "second.yaml").exit_code == 0
    assert cli("export", "tiny", "--trial", 0, "--out", "first.yaml").exit_code == 0
    assert yaml.safe_load(Path("second.yaml").read_text())["provenance"]["race_of"] == 0
    assert "race_of" not in yaml.safe_load(Path("first.yaml").read_text())["provenance"]


def race_trial(number: int, val: float, selected: dict[str, str], decisions: dict | None = None,
               curve: dict[int, float] | None = None, **attrs: object) -> optuna.trial.FrozenTrial:
    """A complete one_round trial of rank 1 with this pick (and its race's decisions, or a race_of in attrs)."""
    return raced(number, 1, val, 100, curve=curve, metrics={"selected": selected, "decisions": decisions or {}},
                 **attrs)


def fell_back(plausible: list[str], block: str, rule: str = "most_accurate") -> dict:
    return {"block": block, "step": 10, "by": "fallback", "rule": rule, "plausible": plausible}


def test_the_next_trials_of_a_race_that_fell_back_train_its_other_plausible_candidates_cheapest_first():
    source = race_trial(0, 0.9, {"fc1": "2x2", "fc2": "4x4"},
                        {"fc1": fell_back(["8x8", "4x4", "2x2"], "2x2"), "fc2": fell_back(["4x4"], "4x4")})
    study = optuna.create_study(direction="maximize")
    study.add_trial(source)
    assert race_plan(study, source, 1, 0.5)[0] == {"fc1": "8x8", "fc2": "4x4"}
    study.add_trial(race_trial(1, 0.85, {"fc1": "8x8", "fc2": "4x4"}, race_of=0))
    assert race_plan(study, source, 2, 0.5)[0] == {"fc1": "4x4", "fc2": "4x4"}


def test_after_its_plausible_candidates_a_races_trials_train_the_tolerance_pick_among_them():
    source = race_trial(0, 0.900, {"fc1": "2x2"}, {"fc1": fell_back(["8x8", "2x2"], "2x2")})
    study = optuna.create_study(direction="maximize")
    for trial in (source, race_trial(1, 0.897, {"fc1": "8x8"}, race_of=0, final_macs=10)):
        study.add_trial(trial)
    assert race_plan(study, source, 2, 0.5)[0] == {"fc1": "8x8"}  # within 0.5 point of 2x2 and cheaper
    assert race_plan(study, source, 2, 0.0)[0] == {"fc1": "2x2"}  # tolerance 0: the most accurate


def test_a_race_decided_by_evidence_shares_its_pick():
    source = race_trial(0, 0.9, {"fc1": "4x4"}, {"fc1": {"block": "4x4", "step": 10, "by": "budget"}})
    study = optuna.create_study(direction="maximize")
    study.add_trial(source)
    assert race_plan(study, source, 1, 0.5)[0] == {"fc1": "4x4"}


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_on_ray_later_trials_train_the_first_trials_race_pick_and_their_lines_count_no_race(write_space):
    console = Console(record=True, width=200)
    run_search(write_space(search={"trials": 3}, backend={**RAY, "max_concurrent": 1}), progress=True,
               console=console)
    first, *later = trials_of()
    assert TrialRecord.of(first).race_of is None and [TrialRecord.of(t).race_of for t in later] == [0, 0]
    assert all([e["phase"] for e in history(t)] == ["train"] for t in later)
    shown = console.export_text()
    assert "trial 1 epoch 1/1 (train)" in shown and "trial 0 epoch 2/2 (train)" in shown  # a race: 1 + 1 epochs


def test_the_selection_plot_of_a_trial_that_reused_a_race_is_that_races(write_space, tmp_path, monkeypatch):
    run_search(write_space(search={"trials": 2}), progress=False)
    titles, real_save = [], kplot._save
    monkeypatch.setattr(kplot, "_save", lambda fig, path: (titles.append(fig.get_suptitle()), real_save(fig, path))[1])
    assert kplot.plot_selection(load_studies("tiny:one_round"), tmp_path / "sel.png", trial=1) == tmp_path / "sel.png"
    assert "tiny:one_round trial 0:" in titles[-1]


def study_from_before_race_fallback(write_space) -> None:
    """A one-trial study whose stored space predates train.race_fallback (it ran as most_accurate)."""
    run_search(write_space(search={"trials": 1}, train={"race_fallback": "most_accurate"}), progress=False)
    (study,) = load_studies("tiny:one_round")
    identity = study.user_attrs["space_identity"]
    del identity["train"]["race_fallback"]
    write_study(study, space_identity=identity)


def test_a_study_from_before_race_fallback_resumes_as_made_with_most_accurate(write_space):
    study_from_before_race_fallback(write_space)
    run_search(write_space(search={"trials": 2}, train={"race_fallback": "most_accurate"}), progress=False)
    assert len(trials_of()) == 2
    with pytest.raises(SpaceError, match=r"train\.race_fallback \('most_accurate' -> 'cheapest'\) changed"):
        run_search(write_space(search={"trials": 3}, train={"race_fallback": "cheapest"}), progress=False)


def test_a_study_made_under_an_old_default_is_refused_with_the_line_that_resumes_it(write_space):
    study_from_before_race_fallback(write_space)
    with pytest.raises(SpaceError, match=r"The file leaves it to the default: to resume the study as it was made, "
                                         r"write train\.race_fallback: 'most_accurate' in the file\. Re-run with"):
        run_search(write_space(search={"trials": 2}), progress=False)
    assert len(trials_of()) == 1


def test_a_studys_undecided_race_keeps_the_cheapest_and_one_training_the_most_accurate(write_space):
    assert load_space(write_space()).train_config().race_fallback == "cheapest"
    assert TrainConfig().race_fallback == "most_accurate"
    assert inspect.signature(OneRound).parameters["fallback"].default == "most_accurate"
