"""run_search end to end on tiny spaces: what each strategy stores, resuming, and not re-training."""

from __future__ import annotations

import io
import json
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

from kronsearch.backends.base import should_prune
from kronsearch.backends.local import pruning_reporter
from kronsearch.progress import planned_epochs
from kronsearch.record import SCALAR_METRICS, full_config
from kronsearch.record import metrics as record_metrics
from kronsearch.search import describe_seed, run_search
from kronsearch.space import Space, SpaceError, load_space
from kronsearch.storage import load_studies
from kronsearch.strategies import seed_source
from kronsearch.study import open_study
from kronsearch.trainer import EpochReport, TrainConfig
from kronsearch.trial_run import TrialSpec


def trials_of(study_name: str) -> list[optuna.trial.FrozenTrial]:
    (study,) = load_studies(study_name)
    return study.get_trials()


def test_one_round_trials_record_selection_norms_and_weights(write_space):
    run_search(write_space(search={"races": "per_trial"}), progress=False)
    trials = trials_of("tiny:one_round")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:
        assert set(trial.params) == {"rank", "lambda2"}
        metrics = record_metrics(trial)
        assert set(metrics["selected"]) == {"layers.0"} and metrics["selected"]["layers.0"] in ("2x2", "4x4")
        history = json.loads((Path("studies", trial.user_attrs["artifact_dir"]) / "history.json").read_text())
        live = history[0]["live_candidates"]["layers.0"]  # a candidate may already have left in epoch 1
        assert set(history[0]["candidate_norms"]["layers.0"]) == set(live) <= {"2x2", "4x4"}
        assert metrics["selected"]["layers.0"] in live
        assert trial.values[0] == metrics["val_accuracy"]
        assert (Path("studies", trial.user_attrs["artifact_dir"]) / "model.safetensors").is_file()


def test_per_epoch_history_is_in_the_trial_folder_and_intermediate_values_not_in_user_attrs(write_space):
    run_search(write_space(train={"epochs": 2}, search={"races": "per_trial"}), progress=False)
    for trial in trials_of("tiny:one_round"):
        history = json.loads((Path("studies", trial.user_attrs["artifact_dir"]) / "history.json").read_text())
        assert [e["epoch"] for e in history] == [1, 2, 3]  # the race's epoch, then two of training
        assert trial.intermediate_values == {e["epoch"]: e["val_accuracy"] for e in history}  # every trial races
        assert "history" not in trial.user_attrs
        assert "candidate_norms" not in json.dumps(trial.user_attrs)


def test_user_attrs_keep_scalars_selection_and_plan_and_the_rest_stays_in_metrics_json(write_space):
    run_search(write_space(search={"trials": 1}), progress=False)
    (trial,) = trials_of("tiny:one_round")
    saved = json.loads((Path("studies", trial.user_attrs["artifact_dir"]) / "metrics.json").read_text())
    kept = trial.user_attrs["metrics"]
    assert "layer_sparsity" in saved and "layer_sparsity" not in kept and "val_accuracy" not in kept
    assert kept["plan"] == saved["plan"] and kept["selected"] == saved["selected"]
    assert all(trial.user_attrs[k] == v for k, v in saved.items() if isinstance(v, (int, float)))


def test_the_study_keeps_each_trials_own_config_and_the_shared_part_once(write_space):
    run_search(write_space(search={"trials": 2}), progress=False)
    (study,) = load_studies("tiny:one_round")
    for trial in study.get_trials():
        assert trial.user_attrs["config"]["train"] == {"lambda2": trial.params["lambda2"]}
        assert not {"data", "model", "seed"} & set(trial.user_attrs["config"])
        saved = json.loads((Path("studies", trial.user_attrs["artifact_dir"]) / "config.json").read_text())
        assert full_config(study, trial) == saved


def test_per_pattern_trials_train_one_block_each(write_space):
    run_search(write_space(search={"strategy": "per_pattern"}), progress=False)
    for trial in trials_of("tiny:per_pattern"):
        assert set(trial.params) == {"rank", "lambda2", "block"}
        assert trial.user_attrs["metrics"]["plan"]["layers.0"]["block"] == trial.params["block"]
        assert trial.user_attrs["metrics"]["selected"] == {}


def test_per_layer_blocks_give_one_parameter_per_layer(write_space):
    run_search(write_space(search={"strategy": "per_pattern", "per_layer_blocks": True},
                           model={"include": ["*"]}), progress=False)
    assert set(trials_of("tiny:per_pattern")[0].params) == {"rank", "lambda2", "block:layers.0", "block:head"}


def test_hybrid_message_says_what_a_mixed_selection_seeded(write_space):
    space = load_space(write_space(search={"strategy": "hybrid"}))
    source = create_trial(value=0.9, params={"rank": 1, "lambda2": 1e-4},
                          distributions={"rank": IntDistribution(1, 2), "lambda2": FloatDistribution(1e-5, 1e-3)},
                          user_attrs={"metrics": {"selected": {"a": "2x2", "b": "2x2", "c": "4x4"}}})
    text = describe_seed(space, source)
    assert "starts with block 2x2 on every layer, rank 1, lambda2 0.0001" in text
    assert "the block most layers of one_round trial" in text and "(2x2 on 2, 4x4 on 1)" in text
    assert "'s selection" not in text


def test_hybrid_seeds_per_pattern_with_the_one_round_pick(write_space):
    run_search(write_space(search={"strategy": "hybrid", "trials": 3, "one_round_trials": 1}), progress=False)
    first, seeded, _ = trials_of("tiny:hybrid")
    assert first.user_attrs["kind"] == "one_round"
    assert seeded.user_attrs["kind"] == "per_pattern"
    assert seeded.params["block"] == first.user_attrs["metrics"]["selected"]["layers.0"]
    assert seeded.params["lambda2"] == first.params["lambda2"]


def test_hybrid_s_seeded_trial_is_answered_from_the_one_round_trial_that_trained_its_plan(write_space):
    run_search(write_space(search={"strategy": "hybrid", "trials": 3, "one_round_trials": 1}), progress=False)
    first, seeded, _ = trials_of("tiny:hybrid")
    assert seeded.user_attrs["duplicate_of"] == first.number and seeded.user_attrs["seeded_from"] == first.number
    assert seeded.values == first.values and seeded.intermediate_values == {}  # not trained again


def test_hybrid_s_seeded_trial_trains_where_its_block_stands_for_a_mixed_selection(write_space, workdir):
    space = load_space(write_space(search={"strategy": "hybrid"}, model={"include": ["*"]}))
    (workdir / "studies").mkdir()
    study = open_study(space, "hybrid", "sqlite:///studies/tiny.db", False, workdir / "studies")
    dists = {"rank": IntDistribution(1, 1), "lambda2": FloatDistribution(1e-5, 1e-3, log=True)}
    study.add_trial(create_trial(value=0.9, params={"rank": 1, "lambda2": 1e-4}, distributions=dists, user_attrs={
        "kind": "one_round", "metrics": {"selected": {"layers.0": "2x2", "head": "4x4"}}}))
    study.enqueue_trial({"rank": 1, "lambda2": 1e-4, "block": "2x2"}, user_attrs={"seeded_from": 0})
    trial = study.ask()
    assert seed_source(study, trial, TrialSpec("per_pattern", 1, 1e-4, plan={"layers.0": "2x2", "head": "2x2"})) is None
    assert seed_source(study, trial, TrialSpec("per_pattern", 1, 1e-4, plan={"layers.0": "2x2", "head": "4x4"})) \
        == study.trials[0]


def test_a_pruned_trial_records_after_which_epoch_and_the_training_macs_it_spent(write_space):
    # every trial races, so every epoch is on the pruning curve, the race's too (backends.base.PlanSteps)
    path = write_space(seed=1, train={"epochs": 3}, search={"trials": 6, "pruner": "median", "races": "per_trial"},
                       space={"ranks": [1, 2]})
    run_search(path, progress=False)
    trials = trials_of("tiny:one_round")
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned
    for trial in pruned:
        epochs = len(trial.intermediate_values)
        assert epochs < 4  # a race epoch, then three
        assert trial.user_attrs["fail_reason"].startswith(f"pruned after epoch {epochs} ")
        assert 0 < trial.user_attrs["train_macs_total"]
    complete = [t.user_attrs["train_macs_total"] for t in trials if t.state == TrialState.COMPLETE]
    assert max(t.user_attrs["train_macs_total"] for t in pruned) < max(complete)  # fewer epochs, fewer MACs


def epoch(number: int, final: bool) -> EpochReport:
    """An epoch report at 50% val accuracy."""
    return EpochReport(epoch=number, phase="train", train_loss=1.0, penalty=0.0, val_accuracy=0.5, block_sparsity=0.0,
                       candidate_norms={}, live_candidates={}, leaders={}, lr=1e-3, seconds=1.0, train_macs_total=1,
                       final=final)


def always_pruning_trial() -> optuna.Trial:
    """A running trial of a study whose pruner stops every trial under 100% accuracy."""
    return optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.0)).ask()


def tiny_space(write_space) -> Space:
    return load_space(write_space())


def test_a_trial_is_pruned_before_its_last_epoch_when_the_pruner_says_so(write_space):
    with pytest.raises(optuna.TrialPruned):
        pruning_reporter(always_pruning_trial(), tiny_space(write_space))(epoch(1, final=False))


def test_a_trial_whose_training_is_over_completes_whatever_the_pruner_says(write_space):
    trial = always_pruning_trial()
    pruning_reporter(trial, tiny_space(write_space))(epoch(3, final=True))
    assert trial.study.trials[0].intermediate_values == {3: 0.5}  # reported, not pruned
    assert not should_prune(trial, final=True) and should_prune(trial, final=False)


def test_an_already_trained_configuration_is_answered_from_the_earlier_trial(write_space):
    path = write_space(search={"strategy": "per_pattern", "trials": 3}, space={"blocks": ["2x2"], "lambda2": 0.0001})
    run_search(path, progress=False)
    trials = trials_of("tiny:per_pattern")
    assert [t.user_attrs.get("duplicate_of") for t in trials] == [None, 0, 0]
    assert trials[1].values == trials[0].values


def test_running_again_resumes_and_adds_only_the_missing_trials(write_space):
    path = write_space()
    run_search(path, progress=False)
    before = trials_of("tiny:one_round")
    summary = run_search(path, trials=3, progress=False)
    after = trials_of("tiny:one_round")
    assert summary.completed == 3 and len(after) == 3
    assert [t.datetime_start for t in after[:2]] == [t.datetime_start for t in before]


def test_running_a_finished_study_again_trains_nothing(write_space):
    path = write_space()
    run_search(path, progress=False)
    run_search(path, progress=False)
    assert len(trials_of("tiny:one_round")) == 2


def test_fresh_starts_the_study_over(write_space):
    path = write_space()
    run_search(path, progress=False)
    run_search(path, fresh=True, trials=1, progress=False)
    assert len(trials_of("tiny:one_round")) == 1


def test_a_changed_space_file_does_not_resume_silently(write_space):
    run_search(write_space(), progress=False)
    with pytest.raises(SpaceError, match="changed since study 'tiny:one_round' was created"):
        run_search(write_space(train={"epochs": 2}), progress=False)


def test_a_comment_or_a_larger_budget_resumes_the_study(write_space):
    run_search(write_space(search={"trials": 1}), progress=False)
    path = write_space(search={"trials": 2, "timeout": 600}, train={"threads": 1})
    path.write_text("# tried again with one more trial\n" + path.read_text())
    run_search(path, progress=False)
    assert len(trials_of("tiny:one_round")) == 2


def test_a_real_change_is_refused_naming_the_changed_keys_and_the_ways_out(write_space):
    run_search(write_space(search={"trials": 1}), progress=False)
    with pytest.raises(SpaceError) as refused:
        run_search(write_space(train={"epochs": 2}, space={"ranks": [1, 2]}), progress=False)
    message = str(refused.value)
    assert "space.ranks (" in message and "train.epochs (" in message
    assert "changed since study 'tiny:one_round'" in message
    assert "--fresh" in message and "new name" in message


def test_a_changed_value_is_refused_showing_its_old_and_new_values(write_space):
    run_search(write_space(search={"trials": 1}, train={"lr": 0.005}), progress=False)
    with pytest.raises(SpaceError) as refused:
        run_search(write_space(train={"lr": 0.01}, space={"ranks": [1, 2]}), progress=False)
    message = str(refused.value)
    assert "space.ranks ([1] -> [1, 2]), train.lr (0.005 -> 0.01) changed since study 'tiny:one_round'" in message


def test_several_objectives_give_a_pareto_study(write_space):
    objectives = [{"metric": "val_accuracy"}, {"metric": "train_macs"}]
    summary = run_search(write_space(search={"objectives": objectives}), progress=False)
    (study,) = load_studies("tiny:one_round")
    assert len(study.directions) == 2
    assert all(len(t.values) == 2 for t in study.trials)
    assert "Pareto front" in summary.message


def test_dry_run_trains_nothing_and_writes_nothing(write_space, workdir):
    summary = run_search(write_space(), dry_run=True)
    assert "layers.0" in summary.plan_text and "2x2" in summary.plan_text
    assert not (workdir / "studies").exists()


def test_limit_caps_training_only_and_show_and_export_say_how_many_examples_scored(write_space, cli):
    run_search(write_space(search={"trials": 1}), progress=False)
    (trial,) = trials_of("tiny:one_round")
    # digits: 10% of the pool, whole test set
    assert (trial.user_attrs["val_examples"], trial.user_attrs["test_examples"]) == (144, 359)
    assert "of 144, test" in cli("show", "tiny").stdout and "of 359" in cli("show", "tiny").stdout
    exported = cli("export", "tiny:one_round", "--out", "best.yaml")
    assert "of 144, test" in exported.stdout and "of 359)" in exported.stdout


def test_a_study_made_under_the_old_limit_is_refused_saying_its_meaning_changed(write_space):
    path = write_space(search={"trials": 1})
    run_search(path, progress=False)
    (study,) = load_studies("tiny:one_round")
    identity = study.user_attrs["space_identity"]
    del identity["data"]["test_limit"]  # as stored before data.test_limit: limit then capped val and test too
    study.set_user_attr("space_identity", identity)
    with pytest.raises(SpaceError, match=r"data.limit \(its meaning changed: .* now caps the training examples only"):
        run_search(path, progress=False)


def test_scalar_metrics_are_flat_user_attrs_that_optuna_alone_sorts_by(write_space):
    run_search(write_space(search={"trials": 2}), progress=False)
    study = optuna.load_study(study_name="tiny:one_round", storage="sqlite:///studies/tiny.db")
    frame = study.trials_dataframe()
    for name in SCALAR_METRICS:  # what optuna-dashboard shows as a sortable column
        assert frame[f"user_attrs_{name}"].notna().all(), name
    for trial in study.trials:
        assert trial.user_attrs["val_accuracy"] == trial.values[0] and 0 <= trial.user_attrs["block_sparsity"] <= 1
        assert isinstance(trial.user_attrs["final_macs"], int) and trial.user_attrs["wall_time"] > 0
        assert record_metrics(trial)["val_accuracy"] == trial.user_attrs["val_accuracy"]


def test_a_study_with_nested_metrics_only_still_reads():
    old = create_trial(value=0.8, user_attrs={"kind": "per_pattern", "metrics": {"val_accuracy": 0.8, "final_macs": 7,
                                                                                   "selected": {}, "plan": {}}})
    assert record_metrics(old) == {"val_accuracy": 0.8, "final_macs": 7, "selected": {}, "plan": {}}


def test_a_run_whose_output_is_no_terminal_prints_a_plain_line_per_epoch(write_space):
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, color_system=None)
    assert not console.is_terminal
    run_search(write_space(search={"trials": 1}, train={"epochs": 2, "select_epochs": 1, "race_cap": 1}),
               console=console)  # a race of one epoch that may not extend itself: 3 epochs
    lines = [line for line in buffer.getvalue().splitlines() if line.startswith("trial 0 epoch")]
    assert [line.split(" (")[0] for line in lines] == ["trial 0 epoch 1/3", "trial 0 epoch 2/3", "trial 0 epoch 3/3"]
    assert "(select): val 0." in lines[0] and "racing " in lines[0] and "about" in lines[0] and "s left" in lines[-1]
    quiet = io.StringIO()
    run_search(write_space(search={"trials": 2}, train={"epochs": 2, "select_epochs": 1, "race_cap": 1}),
               progress=False, console=Console(file=quiet, quiet=True))
    assert "epoch" not in quiet.getvalue()


def test_a_timeout_shorter_than_the_set_up_starts_no_trial_and_says_so(write_space):
    out = io.StringIO()
    summary = run_search(write_space(search={"trials": 2, "timeout": 0.001}), console=Console(file=out))
    assert summary.completed == 0 and summary.failed
    assert "search.timeout reached: no more trials start" in out.getvalue()
    assert summary.message.startswith("study tiny:one_round: no trial finished: search.timeout (0.001 s) ran out "
                                      "before the first trial finished; raise it")  # not "Pareto front: trials []"
    assert trials_of("tiny:one_round") == []


def test_hybrid_seeds_per_pattern_with_the_cheapest_one_round_trial_within_the_tolerance(write_space, workdir):
    from kronsearch.strategies import seed_hybrid
    from kronsearch.study import open_study

    space = load_space(write_space(search={"strategy": "hybrid", "tolerance": 0.5}))
    (workdir / "studies").mkdir()
    study = open_study(space, "hybrid", "sqlite:///studies/tiny.db", False, workdir / "studies")
    dists = {"rank": IntDistribution(1, 1), "lambda2": FloatDistribution(1e-5, 1e-3, log=True)}
    for val, block, macs in ((0.900, "2x2", 1000), (0.897, "4x4", 100), (0.880, "8x8", 10)):
        study.add_trial(create_trial(
            value=val, params={"rank": 1, "lambda2": 1e-4}, distributions=dists,
            user_attrs={"kind": "one_round", "metrics": {"val_accuracy": val, "final_macs": macs, "final_params": macs,
                                                         "selected": {"layers.0": block}, "plan": {}}}))
    assert seed_hybrid(study, space) == 1  # 4x4: 0.3 point under the best at a tenth of its MACs; 8x8 is 2 under
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.system_attrs["fixed_params"]["block"] == "4x4"


def test_the_run_s_last_line_names_the_pick_s_blocks(write_space):
    summary = run_search(write_space(search={"trials": 1}), progress=False)
    pick = trials_of("tiny:one_round")[summary.best["trial"]]
    blocks = " ".join(f"{layer}:{block}" for layer, block in pick.user_attrs["metrics"]["selected"].items())
    assert f"trial {pick.number}, blocks {blocks}, val accuracy" in summary.message


def test_show_notes_when_a_real_study_s_tolerance_is_under_one_validation_example(write_space):
    from kronsearch.report import show_data
    from kronsearch.report.show import tolerance_note

    run_search(write_space(search={"trials": 1}), progress=False)
    (report,) = show_data(load_studies("tiny"))
    examples = report["trials"][0]["val_examples"]
    assert examples < 200 and report["tolerance_note"] == tolerance_note(0.5, examples) is not None


def test_a_trials_planned_epochs_count_its_race_at_the_cap_it_may_extend_to():
    config = TrainConfig(epochs=4, select_epochs=1, race_cap=2.0)
    assert planned_epochs(config, racing=True) == 2 + 4 and planned_epochs(config, racing=False) == 4
