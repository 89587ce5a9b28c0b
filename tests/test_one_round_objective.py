"""Your own Optuna objective: kronsearch.suggest samples from a space file, kronsearch.record_trial writes the
standard trial record, and `kronsearch show/compare/export` read the user's study as one of their own."""

from __future__ import annotations

import json
import re

import optuna
import pytest
import yaml
from torch import nn
from typer.testing import CliRunner

import kronsearch
from examples import own_objective
from kronsearch.cli import app
from kronsearch.layers.errors import BadInput
from kronsearch.report import plot as kplot

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def users_study(workdir):
    """Two trials of examples/own_objective.py: a user's objective, loop and model (search_spaces/own_model.yaml)."""
    url = f"sqlite:///{workdir / 'mine.db'}"
    return own_objective.main(url, trials=2, epochs=1, select_steps=8), url


def test_suggest_samples_rank_and_lambda2_from_the_space_section_and_gives_its_candidates(write_space):
    study = optuna.create_study()
    trial = study.ask()
    spec = kronsearch.suggest(trial, write_space())
    assert spec.kind == "one_round" and spec.rank == 1 and 1e-5 <= spec.lambda2 <= 1e-3
    assert spec.blocks() == [(2, 2), (4, 4)] and set(trial.params) == {"rank", "lambda2"}
    assert trial.user_attrs["kind"] == "one_round" and study.user_attrs["strategy"] == "one_round"


def test_suggest_refuses_an_unknown_kind_naming_the_allowed_ones(write_space):
    with pytest.raises(BadInput, match="kind must be one of one_round, per_pattern, got 'hybrid'"):
        kronsearch.suggest(optuna.create_study().ask(), write_space(), kind="hybrid")


def test_record_trial_writes_the_selection_plan_and_costs_of_a_users_trial(users_study):
    study, _ = users_study
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and 0 <= trial.value <= 1
    metrics = trial.user_attrs["metrics"]
    assert {n: p["block"] for n, p in metrics["plan"].items()} == metrics["selected"]
    assert list(metrics["selected"]) == ["1", "3"]  # the space's include: the two hidden layers
    assert trial.user_attrs["final_macs"] > 0 and trial.user_attrs["val_accuracy"] == trial.value
    assert 0 <= trial.user_attrs["block_sparsity"] <= 1


def test_show_and_export_read_a_study_a_users_objective_wrote(users_study, workdir):
    _, url = users_study
    runner = CliRunner()
    shown = runner.invoke(app, ["show", "own-objective", "--storage", url, "--format", "json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)[0]
    assert report["strategy"] == "one_round" and report["counts"] == {"COMPLETE": 2}
    assert report["pick"] is not None and all(row["selected"] for row in report["trials"])
    compared = runner.invoke(app, ["compare", "own-objective", "--storage", url])
    assert compared.exit_code == 0, compared.output
    exported = runner.invoke(app, ["export", "own-objective", "--storage", url, "--out", str(workdir / "best.yaml")])
    assert exported.exit_code == 0, exported.output
    layers = yaml.safe_load((workdir / "best.yaml").read_text())["layers"]
    assert list(layers) == ["1", "3"] and kronsearch.load_plan(workdir / "best.yaml")


def test_show_prints_how_each_layers_race_decided_with_every_candidates_estimate(users_study):
    _, url = users_study
    runner = CliRunner(env={"COLUMNS": "250"})
    shown = runner.invoke(app, ["show", "own-objective", "--storage", url, "--format", "json"])
    race = json.loads(shown.stdout)[0]["trials"][0]["race"]
    assert set(race) == {"1", "3"}
    for decision in race.values():
        assert decision["by"] in ("survivor", "budget", "fallback")
        assert set(decision["estimates"]) == {"2x2", "4x4", "8x8"}
        assert all({"accuracy", "se", "examples", "steps"} <= set(e) for e in decision["estimates"].values())
    text = runner.invoke(app, ["show", "own-objective", "--storage", url]).stdout
    assert re.search(r"#0 race 1, 3: \dx\d by (survivor|budget|fallback)[^;]*; 2x2 [\d.]+ ± [\d.]+% \([\d,]+ ex, "
                     r"\d+ steps\), 4x4 [\d.]+ ± ", text)


def test_the_selection_plot_draws_the_accuracies_that_decided_each_race(users_study, workdir, monkeypatch):
    study, _ = users_study
    drawn = {}
    real_save = kplot._save

    def spy(fig, path):
        drawn["titles"] = [ax.get_title() for ax in fig.axes if ax.get_visible()]
        drawn["points"] = [[bar.lines[0].get_ydata()[0] for bar in ax.containers] for ax in fig.axes
                           if ax.get_visible()]
        return real_save(fig, path)

    monkeypatch.setattr(kplot, "_save", spy)
    assert kplot.plot_selection([study], workdir / "sel.png") == workdir / "sel.png"
    best = max((t for t in study.trials if t.value is not None), key=lambda t: t.value)
    decisions = best.user_attrs["metrics"]["decisions"]
    assert drawn["titles"] == [f"{layer}: {d['block']} by {d['by']}" for layer, d in decisions.items()]
    assert drawn["points"][0] == [e["accuracy"] for e in decisions["1"]["estimates"].values()]


def test_record_trial_refuses_an_accuracy_in_points():
    with pytest.raises(BadInput, match=r"val_accuracy must be a finite number in \[0, 1\], got 85"):
        kronsearch.record_trial(optuna.create_study().ask(), val_accuracy=85, model=nn.Linear(2, 2))
