"""The tolerance pick: the cheapest complete trial within search.tolerance accuracy points of the best val
accuracy, as show, compare and export read a study, and search.tolerance as a space key."""

from __future__ import annotations

import optuna
import pytest
import yaml
from optuna.trial import TrialState, create_trial

from kronsearch.record import full_config, tolerance_pick, write_study
from kronsearch.report import compare_data, default_trial, render_show, show_data
from kronsearch.report.export import export_trial
from kronsearch.search import run_search
from kronsearch.space import SpaceError, load_space
from kronsearch.storage import load_studies
from tests.test_report import (
    OBJECTIVES_2,
    ONE_ROUND_DISTS,
    PER_PATTERN_DISTS,
    build_hybrid,
    build_search,
    metrics_for,
    plan_for,
    render,
    trial_attrs,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

KIND_PARAMS = {"one_round": ({"rank": 1, "lambda1": 1e-3, "lambda2": 1e-4}, ONE_ROUND_DISTS),
               "per_pattern": ({"block": "2x2", "rank": 1, "lambda2": 1e-4}, PER_PATTERN_DISTS)}


def scored(val: float, final_macs: int, final_params: int = 400, kind: str = "one_round",
           state: TrialState = TrialState.COMPLETE, more_values: tuple = ()) -> optuna.trial.FrozenTrial:
    """A trial of `kind` with these val accuracy and final costs (nothing trained, nothing on disk);
    more_values: its further objective values."""
    params, dists = KIND_PARAMS[kind]
    metrics = {"val_accuracy": val, "test_accuracy": val - 0.01, "final_macs": final_macs,
               "final_params": final_params, "selected": {}, "plan": {}}
    return create_trial(state=state, values=[val, *more_values] if state == TrialState.COMPLETE else None,
                        params=params, distributions=dists, user_attrs={"kind": kind, "metrics": metrics})


def study_of(strategy: str, trials: list, objectives: list[dict] = OBJECTIVES_2[:1],
             tolerance: float | None = None) -> optuna.Study:
    """An in-memory study recorded as kronsearch writes one: its strategy, objectives and tolerance."""
    study = optuna.create_study(study_name=f"t:{strategy}", directions=[o["direction"] for o in objectives])
    write_study(study, strategy=strategy, objectives=objectives)
    if tolerance is not None:
        write_study(study, tolerance=tolerance)
    for trial in trials:
        study.add_trial(trial)
    return study


# ----------------------------------------------------------------------------- the rule


def test_the_pick_is_the_cheapest_trial_within_the_tolerance_of_the_best():
    trials = [scored(0.860, 900), scored(0.857, 500), scored(0.856, 300), scored(0.850, 100)]
    assert tolerance_pick(trials, 0.5) is trials[2]  # .850 is 1 point below the best: out


def test_the_tolerance_boundary_is_inclusive():
    trials = [scored(0.86, 900), scored(0.855, 300)]
    assert tolerance_pick(trials, 0.5) is trials[1]


def test_cost_ties_go_to_fewer_final_params_then_the_higher_accuracy_then_the_lower_number():
    assert tolerance_pick([scored(0.86, 300, 500), scored(0.858, 300, 400)], 0.5).values == [0.858]
    assert tolerance_pick([scored(0.858, 300), scored(0.86, 300)], 0.5).values == [0.86]
    first, second = scored(0.86, 300), scored(0.86, 300)
    study = study_of("one_round", [first, second])
    assert tolerance_pick(study.get_trials(), 0.5).number == 0


def test_tolerance_zero_picks_the_most_accurate_and_breaks_its_ties_by_cost():
    trials = [scored(0.857, 100), scored(0.86, 900), scored(0.86, 700)]
    assert tolerance_pick(trials, 0) is trials[2]


def test_only_complete_trials_are_picked():
    trials = [scored(0.9, 10, state=TrialState.PRUNED), scored(0.8, 900)]
    assert tolerance_pick(trials, 50) is trials[1]
    assert tolerance_pick([scored(0.9, 10, state=TrialState.FAIL)], 0.5) is None


# ----------------------------------------------------------------------------- show and export


@pytest.mark.parametrize("strategy", ["one_round", "per_pattern", "hybrid"])
def test_show_picks_the_cheapest_within_the_tolerance_for_every_strategy(strategy):
    kinds = ["one_round", "per_pattern"] if strategy == "hybrid" else [strategy, strategy]
    study = study_of(strategy, [scored(0.86, 900, kind=kinds[0]), scored(0.857, 400, kind=kinds[1]),
                                scored(0.80, 100, kind=kinds[0])])
    (report,) = show_data([study])
    assert [r["number"] for r in report["best"]["trials"]] == [1]
    assert report["pick"]["trial"]["number"] == 1 and report["pick"]["most_accurate"]["number"] == 0
    assert report["pick"]["tolerance"] == 0.5 and report["pick"]["best_val"] == 0.86
    assert default_trial(study).number == 1


def test_show_says_which_rule_picked_at_what_tolerance_and_names_the_most_accurate_trial():
    study = study_of("one_round", [scored(0.8510, 900), scored(0.8490, 500)])
    text = render(render_show, show_data([study]))
    assert "pick (cheapest within 0.5 points of the best val 85.10%): #1  val 84.90%" in text
    assert "most accurate: #0  val 85.10%" in text


def test_show_names_no_other_trial_when_the_pick_is_the_most_accurate():
    study = study_of("one_round", [scored(0.86, 100), scored(0.80, 50)])
    (report,) = show_data([study])
    assert report["pick"]["trial"]["number"] == 0 and report["pick"]["most_accurate"] is None
    assert "most accurate" not in render(render_show, [report])


def test_a_multi_objective_study_shows_its_pareto_front_and_the_pick_among_all_complete_trials():
    objectives = [OBJECTIVES_2[0], {"metric": "train_params", "direction": "minimize"}]
    trials = [scored(0.86, 900, more_values=(100,)), scored(0.857, 400, more_values=(300,)),  # #0 dominates #1
              scored(0.85, 100, more_values=(50,))]
    study = study_of("per_pattern", trials, objectives)
    (report,) = show_data([study])
    assert report["best"]["kind"] == "pareto_front"
    assert [r["number"] for r in report["best"]["trials"]] == [0, 2]
    assert report["pick"]["trial"]["number"] == 1
    assert "pick among all complete trials (cheapest within 0.5 points" in render(render_show, [report])


def test_the_tolerance_is_the_studys_own_and_0_5_for_a_study_without_one():
    trials = [scored(0.86, 900), scored(0.85, 500), scored(0.84, 100)]
    assert show_data([study_of("one_round", trials, tolerance=1.5)])[0]["pick"]["trial"]["number"] == 1
    assert show_data([study_of("one_round", trials)])[0]["pick"]["tolerance"] == 0.5


def test_the_tolerance_option_overrides_the_studys():
    study = study_of("one_round", [scored(0.86, 900), scored(0.85, 500), scored(0.84, 100)], tolerance=1.5)
    assert show_data([study], tolerance=2)[0]["pick"]["trial"]["number"] == 2
    assert show_data([study], tolerance=0)[0]["pick"]["trial"]["number"] == 0


@pytest.fixture
def demo(tmp_path, monkeypatch) -> optuna.Study:
    """build_search's demo:one_round (#1 .85 is the most accurate) with #4: .848, half #1's final MACs."""
    monkeypatch.chdir(tmp_path)
    build_search(tmp_path)
    one, _ = load_studies("demo")
    plan = {"layers.0": {"block": "2x2", "rank": 1}, "head": {"block": "2x2", "rank": 1}}
    one.add_trial(create_trial(
        value=0.848, params={"rank": 1, "lambda1": 5e-3, "lambda2": 1e-4}, distributions=ONE_ROUND_DISTS,
        user_attrs=trial_attrs("one_round", tmp_path, 4, metrics_for(0.848, plan, selected={}, macs=500))))
    return one


def test_export_without_a_trial_number_exports_the_pick(demo, tmp_path):
    result = export_trial(demo, tmp_path / "pick.yaml")
    assert result.trial == 4
    assert yaml.safe_load(result.pattern.read_text())["metrics"]["val_accuracy"] == 0.848


def test_export_at_tolerance_zero_exports_the_most_accurate(demo, tmp_path):
    assert export_trial(demo, tmp_path / "best.yaml", tolerance=0).trial == 1


def test_the_cli_exports_the_pick_and_takes_a_tolerance(cli, demo):
    assert "exported trial 4 of demo:one_round" in cli("export", "demo:one_round", "--out", "a.yaml").output
    assert "exported trial 1 of demo:one_round" in cli("export", "demo:one_round", "--out", "b.yaml",
                                                       "--tolerance", "0").output


@pytest.mark.parametrize("command", [("show", "demo"), ("compare", "demo"), ("export", "demo:one_round", "--out",
                                                                          "x.yaml", "--trial", "1")])
@pytest.mark.parametrize("value", ["101", "-0.5", "nan"])
def test_a_tolerance_option_out_of_range_exits_2_naming_the_option_and_the_range(cli, demo, command, value):
    result = cli(*command, "--tolerance", value)
    assert result.exit_code == 2
    assert "--tolerance must be a number of accuracy points in [0, 100]" in result.stderr


# ----------------------------------------------------------------------------- compare


@pytest.fixture
def hybrid(tmp_path, monkeypatch) -> optuna.Study:
    """build_hybrid's study (one_round #0 .81 picks 4x4; per_pattern 2x2 .84, 4x4 .83) with #3, a 4x4 r2
    per_pattern trial at .838 for 40% of 2x2's final MACs, and #4, a cheaper one_round trial at .808."""
    monkeypatch.chdir(tmp_path)
    build_hybrid(tmp_path)
    (study,) = load_studies("hyb")
    study.add_trial(create_trial(
        value=0.838, params={"block": "4x4", "rank": 2, "lambda2": 1e-4}, distributions=PER_PATTERN_DISTS,
        user_attrs=trial_attrs("per_pattern", tmp_path, 3, metrics_for(0.838, plan_for("4x4", 2), macs=400))))
    study.add_trial(create_trial(
        value=0.808, params={"rank": 2, "lambda1": 1e-2, "lambda2": 1e-4}, distributions=ONE_ROUND_DISTS,
        user_attrs=trial_attrs("one_round", tmp_path, 4, metrics_for(
            0.808, {"layers.0": {"block": "2x2", "rank": 2}}, selected={"layers.0": "2x2"}, macs=200))))
    return study


def test_compare_picks_the_per_pattern_best_pattern_by_the_tolerance_rule(hybrid):
    data = compare_data([hybrid])
    assert data["per_pattern"]["ranking"][0]["label"] == "2x2 r1"  # the ranking stays by val accuracy
    assert data["per_pattern"]["pick"]["label"] == "4x4 r2" and data["per_pattern"]["pick"]["trial"] == 3
    assert data["agreement"]["best_label"] == "4x4 r2"


def test_compare_picks_the_one_round_side_by_the_same_rule(hybrid):
    data = compare_data([hybrid])
    assert data["one_round"]["trial"] == 4 and data["one_round"]["selected"] == {"layers.0": "2x2"}


def test_compare_at_tolerance_zero_picks_the_most_accurate_on_both_sides(hybrid):
    data = compare_data([hybrid], tolerance=0)
    assert data["one_round"]["trial"] == 0 and data["per_pattern"]["pick"]["label"] == "2x2 r1"
    assert data["tolerance"] == 0


def test_compare_notes_studies_recorded_with_different_tolerances(tmp_path):
    first = study_of("one_round", [scored(0.86, 900)], tolerance=1)
    second = optuna.create_study(study_name="u:per_pattern")
    write_study(second, strategy="per_pattern", objectives=OBJECTIVES_2[:1], tolerance=2)
    data = compare_data([first, second])
    assert data["tolerance"] == 1
    assert any("search.tolerance differ (t:one_round 1, u:per_pattern 2)" in n for n in data["notes"])


# ----------------------------------------------------------------------------- the space key


@pytest.mark.parametrize("value", [101, -1, "half", True, None])
def test_a_bad_search_tolerance_names_the_file_the_key_and_the_range(write_space, value):
    path = write_space(search={"tolerance": value} if value is not None else {})
    if value is None:  # absent: the default
        assert load_space(path).search["tolerance"] == 0.5
        return
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert f"{path}: search.tolerance: must be a number of accuracy points in [0, 100]" in str(err.value)


def test_search_tolerance_reaches_every_trials_train_config_and_the_study(write_space):
    path = write_space(search={"trials": 1, "tolerance": 1.5})
    assert load_space(path).train_config().tolerance == 1.5
    run_search(path, progress=False)
    (study,) = load_studies("tiny:one_round")
    assert show_data([study])[0]["pick"]["tolerance"] == 1.5
    assert full_config(study, study.get_trials()[0])["train"]["tolerance"] == 1.5


def test_changing_search_tolerance_is_refused_naming_the_key(write_space):
    run_search(write_space(search={"trials": 1}), progress=False)
    with pytest.raises(SpaceError, match=r"search.tolerance \(0.5 -> 1.0\) changed since study 'tiny:one_round'"):
        run_search(write_space(search={"trials": 1, "tolerance": 1}), progress=False)


def test_a_study_from_before_search_tolerance_resumes_at_0_5(write_space):
    path = write_space(search={"trials": 1})
    run_search(path, progress=False)
    (study,) = load_studies("tiny:one_round")
    identity = study.user_attrs["space_identity"]
    del identity["search"]["tolerance"]
    write_study(study, space_identity=identity, tolerance=None)
    run_search(path, trials=2, progress=False)
    (study,) = load_studies("tiny:one_round")
    assert len(study.get_trials()) == 2 and study.user_attrs["tolerance"] == 0.5
