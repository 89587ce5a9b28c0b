"""Tests for kronsearch.report: show and compare data, and their rich rendering.

`build_search` writes a small but complete search (the storage contract of `kronsearch run`) into
studies/<name>.db under the working directory, with real trained-shape weights; the export, plot
and CLI tests import it from here.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import socket
import sqlite3
import tempfile
from contextlib import closing
from functools import partial
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console
from safetensors.torch import save_file

from kronsearch import kronify, record
from kronsearch.models import build_model
from kronsearch.processes import process_started
from kronsearch.report import (
    best_trials,
    compare_data,
    cost_curve,
    default_trial,
    describe_blocks,
    pattern_ranking,
    reach,
    render_compare,
    render_show,
    same_blocks,
    show_data,
    strategy_compute,
    trial_history,
    trial_pattern,
)
from kronsearch.report.show import row_notes, tolerance_note
from kronsearch.storage import load_studies

optuna.logging.set_verbosity(optuna.logging.WARNING)

CONFIG = {
    "data": {"name": "digits", "input_shape": [1, 8, 8], "num_classes": 10},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "train": {"epochs": 3, "lambda1": 0.0, "lambda2": 0.0, "threshold": 0.01},
}
ONE_ROUND_DISTS = {"rank": IntDistribution(1, 2), "lambda1": FloatDistribution(1e-5, 1e-1, log=True),
                   "lambda2": FloatDistribution(1e-5, 1e-1, log=True)}
PER_PATTERN_DISTS = {"block": CategoricalDistribution(["2x2", "4x4"]), "rank": IntDistribution(1, 2),
                     "lambda2": FloatDistribution(1e-5, 1e-1, log=True)}
OBJECTIVES_2 = [{"metric": "val_accuracy", "direction": "maximize"},
                {"metric": "train_macs", "direction": "minimize"}]


def plan_for(block: str, rank: int) -> dict:
    """The final plan of the test MLP (layers.0: 16x64, head: 10x16) for a global block; 4x4 leaves head dense."""
    plan = {"layers.0": {"block": block, "rank": rank}}
    if block in ("2x2", "2x4"):
        plan["head"] = {"block": block, "rank": rank}
    return plan


def save_weights(folder: Path, plan: dict) -> None:
    """A real state dict of the test MLP kronified with `plan`, as the trial's model.safetensors."""
    model = build_model("mlp", (1, 8, 8), 10, hidden=[16])
    kronify(model, plan)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))


def metrics_for(val: float, plan: dict, *, selected: dict | None = None, macs: int = 1000,
                wall: float = 10.0, macs_total: int = 10**6) -> dict:
    return {
        "val_accuracy": val, "test_accuracy": val - 0.01, "block_sparsity": 0.5,
        "layer_sparsity": {layer: 0.5 for layer in plan}, "train_params": 500, "train_macs": macs,
        "train_macs_total": macs_total, "final_params": 400, "final_macs": macs // 2, "inference_nonzeros": 300,
        "selected": selected or {}, "plan": plan, "wall_time": wall,
    }


def selection_history(selected: dict) -> list[dict]:
    """Three selection epochs (the winner's norm grows, the others shrink) and one fine-tune epoch."""
    candidates = {"layers.0": ["2x2", "4x4", "8x8"], "head": ["2x2", "2x4"]}
    history = []
    for epoch in (1, 2, 3):
        norms = {layer: {b: (1.0 + epoch if b == selected[layer] else 1.0 / epoch) for b in blocks}
                 for layer, blocks in candidates.items()}
        history.append({"epoch": epoch, "phase": "select", "train_loss": 1.0 / epoch, "penalty": 0.1,
                        "val_accuracy": 0.5 + 0.1 * epoch, "block_sparsity": 0.1 * epoch,
                        "candidate_norms": norms, "lr": 1e-3, "seconds": 1.0})
    history.append({"epoch": 4, "phase": "finetune", "train_loss": 0.2, "penalty": 0.0, "val_accuracy": 0.85,
                    "block_sparsity": 0.3, "candidate_norms": {}, "lr": 1e-4, "seconds": 1.0})
    return history


def trial_attrs(kind: str, root: Path, number: int, metrics: dict | None, **extra) -> dict:
    config = {**CONFIG, "train": {**CONFIG["train"]}}
    return {"kind": kind, "metrics": metrics, "config": config,
            "artifact_dir": str(root / f"trial-{number}") if metrics else None, **extra}


def save_history(folder: Path, history: list[dict]) -> None:
    """The trial's history.json, as kronsearch.trial_run.save_artifacts writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "history.json").write_text(json.dumps(history), encoding="utf-8")


def new_study(storage: optuna.storages.BaseStorage, name: str, strategy: str, objectives: list[dict],
              artifacts: Path) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=name,
                                directions=[o["direction"] for o in objectives])
    for key, value in {"space_hash": "ab" * 32, "space_path": "/spaces/demo.yaml", "space": {"name": "demo"},
                       "strategy": strategy, "objectives": objectives, "kronsearch_version": "0.1.0",
                       "artifacts_dir": str(artifacts)}.items():
        study.set_user_attr(key, value)
    return study


_TEMPLATES: dict[tuple, Path] = {}


def build_search(root: Path, name: str = "demo", weights: bool = True) -> str:
    """studies/<name>.db with <name>:one_round (1 objective) and <name>:per_pattern (2 objectives).

    one_round: #0 val .80 picks 4x4/2x4 (r1); #1 val .85 picks 2x2/2x2 (r2, the best, with weights);
    #2 FAIL; #3 PRUNED. per_pattern: #0 4x4 r1 .83; #1 2x2 r1 .86 (weights); #2 2x2 r2 .84;
    #3 4x4 r1 .82; #4 duplicate of #1; #5 FAIL. Returns the storage URL.

    Writing a study costs a second of SQLite commits, so each search is written once per session and
    copied under `root`, with the absolute artifact paths in the copy pointed at `root`.
    """
    return _from_template(root, name, ("search", name, weights), lambda folder: _write_search(folder, name, weights))


def _from_template(root: Path, name: str, key: tuple, write) -> str:
    """Copy the studies/ written once by write(folder) under root; point its absolute paths at root."""
    if key not in _TEMPLATES:
        template = Path(tempfile.mkdtemp(prefix="kronsearch-test-")).resolve()
        atexit.register(shutil.rmtree, template, True)
        write(template)
        _TEMPLATES[key] = template
    template, root = _TEMPLATES[key], Path(root).resolve()
    shutil.copytree(template / "studies", root / "studies", dirs_exist_ok=True)
    with closing(sqlite3.connect(root / "studies" / f"{name}.db")) as db, db:
        for table in ("study_user_attributes", "trial_user_attributes"):
            db.execute(f"UPDATE {table} SET value_json = replace(value_json, ?, ?)",
                       (json.dumps(str(template))[1:-1], json.dumps(str(root))[1:-1]))
    return f"sqlite:///{root / 'studies' / f'{name}.db'}"


def _write_search(root: Path, name: str, weights: bool) -> str:
    """build_search's study, written trial by trial."""
    studies = root / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{studies / f'{name}.db'}"
    storage = optuna.storages.RDBStorage(url)  # one storage object for both studies: opening one is slow
    one_dir, per_dir = (studies / name / "one_round").resolve(), (studies / name / "per_pattern").resolve()

    one = new_study(storage, f"{name}:one_round", "one_round", OBJECTIVES_2[:1], one_dir)
    picks = [({"layers.0": "4x4", "head": "2x4"}, 1, 0.80), ({"layers.0": "2x2", "head": "2x2"}, 2, 0.85)]
    for number, (selected, rank, val) in enumerate(picks):
        plan = {layer: {"block": b, "rank": rank} for layer, b in selected.items()}
        params = {"rank": rank, "lambda1": 1e-3 * (number + 1), "lambda2": 1e-4}
        one.add_trial(create_trial(
            value=val, params=params, distributions=ONE_ROUND_DISTS,
            intermediate_values={1: val - 0.2, 2: val - 0.1, 3: val},
            user_attrs=trial_attrs("one_round", one_dir, number,
                                   metrics_for(val, plan, selected=selected, wall=20.0, macs_total=5 * 10**6))))
        save_history(one_dir / f"trial-{number}", selection_history(selected))
        if weights and number == 1:
            save_weights(one_dir / "trial-1", plan)
    one.add_trial(create_trial(state=TrialState.FAIL, params={"rank": 1, "lambda1": 0.05, "lambda2": 1e-4},
                               distributions=ONE_ROUND_DISTS,
                               user_attrs=trial_attrs("one_round", one_dir, 2, None,
                                                      fail_reason="diverged at [epoch 2]")))
    one.add_trial(create_trial(state=TrialState.PRUNED, params={"rank": 1, "lambda1": 0.01, "lambda2": 1e-3},
                               distributions=ONE_ROUND_DISTS, intermediate_values={1: 0.3, 2: 0.35},
                               user_attrs=trial_attrs("one_round", one_dir, 3, None)))

    per = new_study(storage, f"{name}:per_pattern", "per_pattern", OBJECTIVES_2, per_dir)
    rows = [("4x4", 1, 0.83, 800), ("2x2", 1, 0.86, 1200), ("2x2", 2, 0.84, 1500), ("4x4", 1, 0.82, 800)]
    for number, (block, rank, val, macs) in enumerate(rows):
        plan = plan_for(block, rank)
        per.add_trial(create_trial(
            values=[val, macs], params={"block": block, "rank": rank, "lambda2": 1e-4}, distributions=PER_PATTERN_DISTS,
            user_attrs=trial_attrs("per_pattern", per_dir, number, metrics_for(val, plan, macs=macs, wall=100.0))))
        if weights and number == 1:
            save_weights(per_dir / "trial-1", plan)
    per.add_trial(create_trial(  # reused #1's result: same params and metrics, no training of its own
        values=[0.86, 1200], params={"block": "2x2", "rank": 1, "lambda2": 1e-4}, distributions=PER_PATTERN_DISTS,
        user_attrs={**trial_attrs("per_pattern", per_dir, 1, metrics_for(0.86, plan_for("2x2", 1), macs=1200,
                                                                          wall=100.0)), "duplicate_of": 1}))
    per.add_trial(create_trial(state=TrialState.FAIL, params={"block": "4x4", "rank": 2, "lambda2": 1e-4},
                               distributions=PER_PATTERN_DISTS,
                               user_attrs=trial_attrs("per_pattern", per_dir, 5, None, fail_reason="out of memory")))
    return url


def build_hybrid(root: Path, name: str = "hyb") -> str:
    """studies/<name>.db with one hybrid study holding a one_round trial (picks 4x4) and per_pattern trials."""
    return _from_template(root, name, ("hybrid", name), lambda folder: _write_hybrid(folder, name))


def _write_hybrid(root: Path, name: str) -> str:
    studies = root / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{studies / f'{name}.db'}"
    artifacts = (studies / name / "hybrid").resolve()
    study = new_study(storage, f"{name}:hybrid", "hybrid", OBJECTIVES_2[:1], artifacts)
    selected = {"layers.0": "4x4"}
    study.add_trial(create_trial(
        value=0.81, params={"rank": 1, "lambda1": 1e-3, "lambda2": 1e-4}, distributions=ONE_ROUND_DISTS,
        user_attrs=trial_attrs("one_round", artifacts, 0,
                               metrics_for(0.81, {"layers.0": {"block": "4x4", "rank": 1}}, selected=selected,
                                           wall=30.0, macs_total=3 * 10**6))))
    for number, (block, val) in enumerate([("2x2", 0.84), ("4x4", 0.83)], 1):
        study.add_trial(create_trial(
            value=val, params={"block": block, "rank": 1, "lambda2": 1e-4}, distributions=PER_PATTERN_DISTS,
            user_attrs=trial_attrs("per_pattern", artifacts, number,
                                   metrics_for(val, plan_for(block, 1), wall=50.0, macs_total=4 * 10**6))))
    return storage


@pytest.fixture
def search(tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    return build_search(tmp_path)


def render(fn, data) -> str:
    buffer = io.StringIO()
    fn(data, Console(file=buffer, width=250, color_system=None))
    return buffer.getvalue()


def test_trial_history_is_read_from_the_trial_folder_else_from_intermediate_values(search):
    one, _ = load_studies("demo")
    trained, _, _, pruned = one.get_trials()
    assert "history" not in trained.user_attrs
    assert [e["epoch"] for e in trial_history(one, trained)] == [1, 2, 3, 4]
    assert trial_history(one, trained)[0]["candidate_norms"]["layers.0"]["4x4"] == 2.0
    assert trial_history(one, pruned) == [{"epoch": 1, "val_accuracy": 0.3}, {"epoch": 2, "val_accuracy": 0.35}]


# ----------------------------------------------------------------------------- show


def test_show_data_lists_every_trial_with_metrics_and_states(search):
    one, per = show_data(load_studies("demo"))
    assert [one["study"], per["study"]] == ["demo:one_round", "demo:per_pattern"]
    assert one["counts"] == {"COMPLETE": 2, "FAIL": 1, "PRUNED": 1}
    assert [r["state"] for r in one["trials"]] == ["COMPLETE", "COMPLETE", "FAIL", "PRUNED"]
    best = one["trials"][1]
    assert best["kind"] == "one_round" and best["params"]["rank"] == 2
    assert best["val_accuracy"] == 0.85 and best["test_accuracy"] == pytest.approx(0.84)
    assert best["selected"] == {"layers.0": "2x2", "head": "2x2"}
    assert best["train_macs"] == 1000 and best["duration"] == 20.0
    assert one["trials"][2]["fail_reason"] == "diverged at [epoch 2]" and one["trials"][2]["val_accuracy"] is None
    assert per["trials"][4]["duplicate_of"] == 1
    assert per["trials"][1]["values"] == {"val_accuracy": 0.86, "train_macs": 1200}


def test_show_data_best_trial_single_objective_and_pareto_front_for_several(search):
    one, per = show_data(load_studies("demo"))
    assert one["best"]["kind"] == "best" and [r["number"] for r in one["best"]["trials"]] == [1]
    # (val, macs): #0 (.83, 800), #1 (.86, 1200), #2 (.84, 1500) dominated by #1, #3 (.82, 800) by #0, #4 = #1.
    assert per["best"]["kind"] == "pareto_front"
    assert [r["number"] for r in per["best"]["trials"]] == [0, 1, 4]


def test_show_data_is_json_serializable(search):
    text = json.dumps(show_data(load_studies("demo:per_pattern")))
    assert json.loads(text)[0]["trials"][0]["params"] == {"block": "4x4", "rank": 1, "lambda2": 1e-4}


def test_default_trial_is_the_best_or_the_highest_val_pareto_trial(search):
    one, per = load_studies("demo")
    assert default_trial(one).number == 1
    assert default_trial(per).number == 1  # .86 ties with its duplicate #4; the lower number wins
    assert [t.number for t in best_trials(one)] == [1]


def test_default_trial_without_complete_trials_raises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    study = optuna.create_study(storage=storage, study_name="e:one_round", direction="maximize")
    study.add_trial(create_trial(state=TrialState.FAIL))
    assert best_trials(study) == []
    with pytest.raises(ValueError, match="no complete trial"):
        default_trial(study)


def test_render_show_prints_trials_and_best(search):
    text = render(render_show, show_data(load_studies("demo")))
    assert "demo:one_round: 4 trials (2 complete, 1 fail, 1 pruned)" in text
    assert "pick (cheapest within 0.5 points of the best val 85.00%): #1  val 85.00%" in text
    assert "pick among all complete trials (cheapest within 0.5 points of the best val 86.00%): #1" in text
    assert "Pareto front of demo:per_pattern (3 trials)" in text
    assert "diverged at [epoch 2]" in text  # brackets are shown, not eaten as rich markup
    assert "#4 same configuration as #1" in text and "#1 selected layers.0:2x2 head:2x2" in text


def test_a_duplicate_trial_names_its_source_and_leaves_the_race_to_it():
    race = {"layers.0": {"block": "4x4", "by": "budget", "accuracy": {"4x4": 80.0, "8x8": 79.0}}}
    row = {"selected": {"layers.0": "4x4"}, "race": race, "race_of": None, "fail_reason": None,
           "interrupted": None, "last_epoch": None}
    source, duplicate = row_notes({**row, "duplicate_of": None}), row_notes({**row, "duplicate_of": 0})
    assert any(n.startswith("race layers.0: 4x4 by budget") for n in source)
    assert not any(n.startswith("race ") for n in duplicate)
    assert "same configuration as #0: its result reused, nothing trained" in duplicate


def test_show_s_legend_spells_out_the_params_its_rows_use(search):
    one, per = show_data(load_studies("demo"))
    assert "r rank, l2 lambda2 (the l1 penalty on S), l1 lambda1 (the group penalty" in render(render_show, [one])
    text = render(render_show, [per])
    assert "r rank, l2 lambda2 (the l1 penalty on S); --wide" in text and "l1 lambda1" not in text
    assert "l1/l2 lambdas" not in text


@pytest.mark.parametrize("points, examples, warned", [(0.5, 144, True), (0.7, 144, False), (0, 144, False),
                                                      (0.5, 200, False), (0.05, 1000, True)])
def test_a_tolerance_under_one_validation_example_is_noted(points, examples, warned):
    note = tolerance_note(points, examples)
    assert (note is not None) == warned
    if warned:
        assert f"the tolerance, {points:g} points, is under one validation example ({100 / examples:.2f} points" in note


def test_show_prints_the_tolerance_note_under_the_pick(search):
    one, _ = show_data(load_studies("demo"))
    assert one["tolerance_note"] is None  # the demo's trials recorded no validation count
    text = render(render_show, [{**one, "tolerance_note": tolerance_note(0.5, 144)}])
    assert "note: the tolerance, 0.5 points, is under one validation example (0.69 points of 144)" in text


def test_show_fits_80_columns_with_notes_on_their_own_lines(search):
    buffer = io.StringIO()
    render_show(show_data(load_studies("demo")), Console(file=buffer, width=80, color_system=None))
    lines = buffer.getvalue().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert "…" not in buffer.getvalue()
    assert "#2 diverged at [epoch 2]" in lines and "#5 out of memory" in lines


def test_show_says_at_once_which_trials_were_interrupted_and_how_far_a_running_one_got(search):
    (study,) = load_studies("demo:one_round")
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"interrupted": "interrupted by Ctrl-C"}))
    gone = {"worker": f"{socket.gethostname()}:{os.getpid()}", "worker_started": "0"}  # this pid, another start
    study.add_trial(create_trial(state=TrialState.RUNNING, user_attrs=gone))
    alive = {"worker": f"{socket.gethostname()}:{os.getpid()}", "worker_started": process_started(os.getpid())}
    study.add_trial(create_trial(state=TrialState.RUNNING, user_attrs=alive, intermediate_values={1: 0.5, 2: 0.625}))
    (report,) = show_data([study])
    assert [r["state"] for r in report["trials"][-3:]] == ["INTERRUPTED", "INTERRUPTED", "RUNNING"]
    buffer = io.StringIO()
    render_show([report], Console(file=buffer, width=80, color_system=None))
    lines = buffer.getvalue().splitlines()
    assert "#4 interrupted: interrupted by Ctrl-C" in lines and "2 interrupted" in buffer.getvalue()
    assert any(line.startswith("#5 interrupted: process ") for line in lines) and "is gone" in buffer.getvalue()
    assert "#6 running: epoch 2 reported, val 62.50%" in lines  # a running trial's progress, at once


def test_show_never_cuts_a_number_even_when_squeezed(search):
    buffer = io.StringIO()
    render_show(show_data(load_studies("demo")), Console(file=buffer, width=50, color_system=None), wide=True)
    text = buffer.getvalue()
    for number in ("85.00%", "84.00%", "1.2K", "20.0s", "1m40s"):
        assert number in text
    assert "…" not in text


def test_show_wide_has_every_column(search):
    text = render(lambda data, console: render_show(data, console, wide=True), show_data(load_studies("demo")))
    header = next(line for line in text.splitlines() if line.startswith("#"))
    for column in ("kind", "params", "train params", "train MACs", "selected", "duration", "note"):
        assert column in header
    assert "rank=2 lambda1=0.002 lambda2=0.0001" in text


# ----------------------------------------------------------------------------- compare


def test_pattern_ranking_groups_by_pattern_and_keeps_the_best(search):
    _, per = load_studies("demo")
    ranking = pattern_ranking((per.study_name, t) for t in per.get_trials())
    assert [(e["label"], e["val_accuracy"], e["trial"], e["trials"]) for e in ranking] == [
        ("2x2 r1", 0.86, 1, 2), ("2x2 r2", 0.84, 2, 1), ("4x4 r1", 0.83, 0, 2)]
    assert [e["position"] for e in ranking] == [1, 2, 3]


def test_compare_data_pick_ranking_and_agreement(search):
    data = compare_data(load_studies("demo"))
    assert data["one_round"]["trial"] == 1 and data["one_round"]["selected"] == {"layers.0": "2x2", "head": "2x2"}
    agreement = data["agreement"]
    # Same blocks as the per-pattern best (2x2 everywhere), but rank 2 against the best's rank 1.
    assert agreement["same_as_best"] is True and agreement["position"] == 1
    assert agreement["one_round_rank"] == 2 and agreement["best_rank"] == 1
    assert agreement["same_rank_as_best"] is False and agreement["position_with_rank"] == 2


def test_notes_on_missing_training_macs_say_which_trials_stopped_early(search):
    assert compare_data(load_studies("demo"))["notes"] == [
        "1 failed and 1 pruned one_round trial(s) stopped before recording train_macs_total: their training MACs "
        "are missing from the MACs sums (a lower bound), their wall time is counted",
        "1 failed per_pattern trial(s) stopped before recording train_macs_total: their training MACs "
        "are missing from the MACs sums (a lower bound), their wall time is counted"]


def test_compare_data_compute_sums_finished_trials_without_duplicates(search):
    compute = compare_data(load_studies("demo"))["compute"]
    one, per = compute["one_round"], compute["per_pattern"]
    assert one["trials"] == 4 and one["duplicates"] == 0  # 2 complete + fail + pruned (the last two cost ~0s)
    assert one["wall_time"] == pytest.approx(40.0, abs=1.0) and one["train_macs_total"] == 10 * 10**6
    assert one["without_macs"] == {"fail": 1, "pruned": 1}
    assert per["trials"] == 5 and per["duplicates"] == 1
    assert per["wall_time"] == pytest.approx(400.0, abs=1.0) and per["train_macs_total"] == 4 * 10**6
    assert compute["ratio"]["train_macs_total"] == pytest.approx(0.4)
    assert compute["ratio"]["wall_time"] == pytest.approx(10.0, rel=0.05)


def test_compare_data_pick_that_is_not_the_best(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_hybrid(tmp_path)
    data = compare_data(load_studies("hyb"))
    assert data["one_round"]["selected"] == {"layers.0": "4x4"}
    assert [e["label"] for e in data["per_pattern"]["ranking"]] == ["2x2 r1", "4x4 r1"]
    assert data["agreement"]["same_as_best"] is False and data["agreement"]["position"] == 2
    assert data["agreement"]["same_rank_as_best"] is True
    assert data["compute"]["one_round"]["train_macs_total"] == 3 * 10**6
    assert data["compute"]["per_pattern"]["train_macs_total"] == 8 * 10**6


def test_compare_ranks_blocks_by_their_best_trial_of_either_strategy(tmp_path, monkeypatch):
    """Issue 34: per_pattern trained 4x4 once, worse than 2x2, while a one_round trial ending with 4x4 was the
    best model of both: 4x4 ranks first among blocks, with the trials behind each block counted."""
    monkeypatch.chdir(tmp_path)
    build_hybrid(tmp_path)
    study = load_studies("hyb")[0]
    study.add_trial(create_trial(
        value=0.90, params={"rank": 1, "lambda1": 1e-3, "lambda2": 1e-4}, distributions=ONE_ROUND_DISTS,
        user_attrs=trial_attrs("one_round", tmp_path, 3, metrics_for(0.90, plan_for("4x4", 1),
                                                                     selected={"layers.0": "4x4"}))))
    data = compare_data([study])
    assert data["agreement"]["position"] == 2 and data["agreement"]["position_trials"] == 1  # per pattern only
    assert [(e["label"], e["val_accuracy"], e["kind"], e["trial"], e["trials"]) for e in data["blocks"]] == [
        ("layers.0:4x4", 0.90, "one_round", 3, {"one_round": 2, "per_pattern": 1}),
        ("head:2x2 layers.0:2x2", 0.84, "per_pattern", 1, {"one_round": 0, "per_pattern": 1})]
    text = render(partial(render_compare, wide=True), data)
    assert "its blocks rank 2 of 2 patterns trained per pattern (by that pattern's best of 1 trial)" in text
    assert "hyb:hybrid #3 (one_round)" in text
    assert ("by their best trial of either strategy, the one-round pick's blocks rank 1 of 2 (3 trials: "
            "2 one_round, 1 per_pattern)") in text
    assert "blocks ranked by their best trial" in render(render_compare, data)


def test_compare_data_with_one_side_only_says_so(search):
    data = compare_data(load_studies("demo:one_round"))
    assert data["agreement"] is None and data["per_pattern"]["ranking"] == []
    assert any("no complete per_pattern trial" in n for n in data["notes"])
    assert data["compute"]["ratio"] == {"wall_time": None, "train_macs_total": None}  # nothing to divide


def test_same_blocks_compares_per_layer_and_global_blocks():
    per_layer = {"block": None, "layer_blocks": {"a": "2x2", "b": "4x4"}, "rank": 1}
    assert same_blocks({"a": "2x2", "b": "4x4"}, per_layer)
    assert not same_blocks({"a": "2x2", "b": "2x2"}, per_layer)
    assert same_blocks({"a": "4x4", "b": "4x4"}, {"block": "4x4", "layer_blocks": {}, "rank": 3})
    assert not same_blocks({}, {"block": "4x4", "layer_blocks": {}, "rank": 1})


def test_trial_pattern_reads_per_layer_block_params():
    trial = create_trial(value=0.5, params={"block:fc2": "4X4", "block:fc1": "2x2", "rank": 2},
                         distributions={"block:fc2": CategoricalDistribution(["4X4"]),
                                        "block:fc1": CategoricalDistribution(["2x2"]), "rank": IntDistribution(1, 2)})
    assert trial_pattern(trial) == {"block": None, "layer_blocks": {"fc1": "2x2", "fc2": "4x4"}, "rank": 2}


def test_describe_blocks_is_compact_for_many_layers():
    assert describe_blocks({"a": "2x2"}) == "a:2x2"
    assert describe_blocks({f"l{i}": "4x4" for i in range(10)}) == "4x4 (all 10)"
    many = {f"l{i}": ("2x2" if i < 7 else "4x4") for i in range(10)}
    other = {f"l{i}": ("2x2" if i > 2 else "4x4") for i in range(10)}
    assert describe_blocks(many).startswith("2x2×7 4x4×3 #")
    assert describe_blocks(many) != describe_blocks(other)  # same counts, different layers: told apart


def test_strategy_compute_of_nothing_is_zero():
    assert strategy_compute([]) == {"trials": 0, "duplicates": 0, "wall_time": 0.0, "train_macs_total": 0,
                                    "without_macs": {}}


def test_render_compare_shows_both_sides_and_the_ratio(search):
    text = render(partial(render_compare, wide=True), compare_data(load_studies("demo")))
    assert "demo:one_round #1: val 85.00%, rank 2" in text
    assert "per-pattern ranking" in text
    rows = {label: next(line for line in text.splitlines() if f"│ {label} " in line)
            for label in ("2x2 r1", "2x2 r2", "4x4 r1")}
    assert "same as one-round" in text  # every column has a header
    assert rows["2x2 r1"].split("│")[-2].strip() == "blocks"
    assert rows["2x2 r2"].split("│")[-2].strip() == "blocks and rank" and rows["4x4 r1"].split("│")[-2].strip() == ""
    assert "one-round pick equals the per-pattern pick (2x2 r1) by blocks; its blocks rank 1 of 3" in text
    assert "rank: one-round r2, per-pattern pick r1 (different)" in text
    assert "per_pattern / one_round" in text and "0.40x" in text


def test_ties_on_val_accuracy_go_to_the_cheaper_pattern_and_are_noted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_hybrid(tmp_path)
    study = load_studies("hyb")[0]
    study.add_trial(create_trial(  # 4x4 r2 reaches the 2x2 r1 best (.84) with fewer training MACs
        value=0.84, params={"block": "4x4", "rank": 2, "lambda2": 1e-4}, distributions=PER_PATTERN_DISTS,
        user_attrs=trial_attrs("per_pattern", tmp_path, 3, metrics_for(0.84, plan_for("4x4", 2), macs=400))))
    data = compare_data([study])
    assert [e["label"] for e in data["per_pattern"]["ranking"]] == ["4x4 r2", "2x2 r1", "4x4 r1"]
    assert data["agreement"]["same_as_best"] is True and data["agreement"]["same_rank_as_best"] is False
    assert any("ties on val accuracy with 2x2 r1" in n for n in data["notes"])


def test_compare_ranks_the_majority_pick_among_global_patterns():
    from kronsearch.report.compare import _agreement

    one_round = {"selected": {"a": "4x4", "b": "4x4", "c": "2x2"}, "rank": 1}
    ranking = [{"block": b, "layer_blocks": {}, "rank": 1, "label": f"{b} r1", "position": i}
               for i, b in enumerate(["2x2", "4x4"], 1)]
    agreement = _agreement(one_round, ranking, ranking[0])
    assert agreement["position"] is None  # a mixed per-layer pick is no global pattern
    assert agreement["majority_block"] == "4x4" and agreement["majority_position"] == 2


def test_agreement_of_a_pick_no_pattern_matches_is_a_sentence(search):
    data = compare_data(load_studies("demo"))
    data["agreement"]["position"] = None
    text = render(partial(render_compare, wide=True), data)
    assert "its blocks are none of the 3 patterns trained per pattern" in text
    assert "rank at" not in text


# ----------------------------------------------------------------------------- cost curves


def test_cost_curve_is_best_val_accuracy_against_cumulative_macs_and_time_in_trial_order(search):
    one, per = load_studies("demo")
    curve = cost_curve(one)
    assert [p["trial"] for p in curve["points"]] == [0, 1, 2, 3]
    assert [p["best"] for p in curve["points"]] == [0.80, 0.85, 0.85, 0.85]
    assert [p["train_macs"] for p in curve["points"]] == [5 * 10**6, 10**7, 10**7, 10**7]
    assert [p["wall_time"] for p in curve["points"]][:2] == [20.0, 40.0]
    assert curve["macs_unknown"] == 2  # the failed and the pruned trial
    reused = cost_curve(per)["points"]
    assert reused[4]["train_macs"] == reused[3]["train_macs"]  # a duplicate trained nothing


def test_a_pruned_trial_adds_the_macs_of_the_epochs_it_trained_to_the_sums_and_the_curve():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    record.prune(trial, 2, 0.35, 3 * 10**6)
    study.tell(trial, state=TrialState.PRUNED)
    curve = cost_curve(study)
    assert curve["points"][0]["train_macs"] == 3 * 10**6 and curve["macs_unknown"] == 0
    compute = strategy_compute(("one_round", t) for t in study.get_trials())
    assert compute["train_macs_total"] == 3 * 10**6 and compute["without_macs"] == {}


def test_reach_says_what_each_strategy_paid_for_the_lower_final_best(search):
    reached = reach([cost_curve(s) for s in load_studies("demo")])
    assert reached["target"] == 0.85
    assert reached["by_study"]["demo:one_round"] == {"trial": 1, "train_macs": 10**7, "wall_time": 40.0}
    assert reached["by_study"]["demo:per_pattern"] == {"trial": 1, "train_macs": 2 * 10**6, "wall_time": 200.0}


def test_compare_shows_the_cost_curves_and_what_reaching_the_target_cost(search):
    text = render(partial(render_compare, wide=True), compare_data(load_studies("demo")))
    assert "best val accuracy vs cumulative training cost (trial order)" in text
    assert "to reach 85.00% val accuracy (the lowest final best):" in text
    assert "demo:per_pattern: after trial 1, 2M training MACs, 3m20s" in text
