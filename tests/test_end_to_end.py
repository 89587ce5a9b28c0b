"""The README's workflow through the real CLI on tiny spaces: run each strategy, then show, compare,
export and plot the result, and apply the exported pattern to a fresh model."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from kronsearch import kronify, load_plan
from kronsearch.cli import app
from kronsearch.data.batches import Batches
from kronsearch.models import build_model
from kronsearch.space import load_space
from kronsearch.storage import load_studies
from kronsearch.trainer import accuracy
from kronsearch.trial_run import load_space_data


def invoke(*args) -> object:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


@pytest.fixture
def searched(write_space):
    """tiny.yaml run with every strategy into studies/tiny.db."""
    path = write_space(search={"trials": 2, "one_round_trials": 1})
    for strategy in ("one_round", "per_pattern", "hybrid"):
        invoke("run", path, "--strategy", strategy, "--quiet")
    return path


def test_each_strategy_lands_in_its_own_study(searched):
    names = [s.study_name for s in load_studies("tiny")]
    assert names == ["tiny:one_round", "tiny:per_pattern", "tiny:hybrid"]


def test_show_compare_and_plot_work_on_a_real_search(searched, workdir):
    shown = json.loads(invoke("show", "tiny", "--format", "json").stdout)
    assert {s["study"] for s in shown} == {"tiny:one_round", "tiny:per_pattern", "tiny:hybrid"}
    compared = json.loads(invoke("compare", "tiny:one_round", "tiny:per_pattern", "--format", "json").stdout)
    assert set(compared["one_round"]["selected"]) == {"layers.0"}
    assert compared["agreement"]["patterns"] >= 1
    invoke("plot", "tiny:one_round", "--out", workdir / "plots")
    assert sorted(p.name for p in (workdir / "plots").glob("*.png"))


def test_exported_pattern_and_weights_reproduce_the_trials_accuracy(searched, workdir):
    invoke("export", "tiny:one_round", "--out", workdir / "best.yaml", "--weights", workdir / "best.safetensors")
    (study,) = load_studies("tiny:one_round")
    best = study.best_trial
    space = load_space(searched)
    model = build_model("mlp", space.input_shape, space.num_classes, hidden=[16])
    kronify(model, load_plan(workdir / "best.yaml"))
    model.load_state_dict(load_file(str(workdir / "best.safetensors")))
    data = load_space_data(space)
    test_accuracy = accuracy(model, Batches(data.test, 64, "cpu"))
    assert test_accuracy == pytest.approx(best.user_attrs["test_accuracy"])
