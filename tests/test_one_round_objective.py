"""Your own Optuna objective: kronsearch.suggest samples from a space file, kronsearch.record_trial writes the
standard trial record, and `kronsearch show/compare/export` read the user's study as one of their own."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

import kronsearch
from kronsearch.cli import app
from kronsearch.data import load_dataset
from kronsearch.data.batches import Batches
from kronsearch.layers.errors import BadInput
from kronsearch.layers.kronify import kronify
from kronsearch.layers.pattern_select import finalize_model
from kronsearch.models import build_model
from kronsearch.trainer import accuracy, seed_everything

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=300)


def users_objective(space_path, data):
    """An objective as a user writes it: their model, their loop, the one round by hooks."""

    def objective(trial: optuna.Trial) -> float:
        spec = kronsearch.suggest(trial, space_path)
        seed_everything(trial.number)
        model = build_model("mlp", data.input_shape, data.num_classes, hidden=(16,))
        kronify(model, candidates=spec.blocks(), rank=spec.rank, include=["layers.*"])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        val = Batches(data.val, 64, "cpu")
        one_round = kronsearch.OneRound(model, optimizer, select_steps=4, validate=val, lambda2=spec.lambda2)
        generator = torch.Generator().manual_seed(0)
        for x, y in Batches(data.train, 32, "cpu").shuffled(generator):
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        one_round.close()
        finalize_model(model)
        return kronsearch.record_trial(trial, one_round, val_accuracy=accuracy(model, val), model=model,
                                       input_shape=data.input_shape, test_accuracy=accuracy(model, Batches(
                                           data.test, 64, "cpu")))

    return objective


@pytest.fixture
def users_study(write_space, workdir, digits):
    url = f"sqlite:///{workdir / 'mine.db'}"
    study = optuna.create_study(study_name="mine", storage=url, direction="maximize")
    study.optimize(users_objective(write_space(), digits), n_trials=2)
    return study, url


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
    assert list(metrics["selected"]) == ["layers.0"]  # the head (10 x 16) is not divided by the blocks
    assert trial.user_attrs["final_macs"] > 0 and trial.user_attrs["val_accuracy"] == trial.value


def test_show_and_export_read_a_study_a_users_objective_wrote(users_study, workdir):
    _, url = users_study
    runner = CliRunner()
    shown = runner.invoke(app, ["show", "mine", "--storage", url, "--format", "json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)[0]
    assert report["strategy"] == "one_round" and report["counts"] == {"COMPLETE": 2}
    assert report["pick"] is not None and all(row["selected"] for row in report["trials"])
    compared = runner.invoke(app, ["compare", "mine", "--storage", url])
    assert compared.exit_code == 0, compared.output
    exported = runner.invoke(app, ["export", "mine", "--storage", url, "--out", str(workdir / "best.yaml")])
    assert exported.exit_code == 0, exported.output
    layers = yaml.safe_load((workdir / "best.yaml").read_text())["layers"]
    assert list(layers) == ["layers.0"] and kronsearch.load_plan(workdir / "best.yaml")


def test_record_trial_refuses_an_accuracy_in_points(users_study):
    study, _ = users_study
    with pytest.raises(BadInput, match=r"val_accuracy is a fraction in \[0, 1\], got 85"):
        kronsearch.record_trial(study.ask(), val_accuracy=85, model=nn.Linear(2, 2))
