"""Malformed trial records (issue 31, item 11): refused when written, read as missing (and said so) when another
tool wrote them, so show, compare, export and plot keep working for the rest of the study."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing

import numpy as np
import optuna
import pytest
import torch
from torch import nn

import kronsearch
from kronsearch.errors import BadInput
from kronsearch.record import SCALAR_METRICS, metrics
from kronsearch.record_check import COUNTS, FRACTIONS, SECONDS
from tests.test_report import build_search

optuna.logging.set_verbosity(optuna.logging.WARNING)


def record(**metrics):
    """record_trial on a fresh in-memory trial of a plain model; returns the trial as stored."""
    study = optuna.create_study()
    trial = study.ask()
    kronsearch.record_trial(trial, model=nn.Linear(2, 2), **{"val_accuracy": 0.5, **metrics})
    return study._storage.get_trial(trial._trial_id)  # noqa: SLF001 - the trial is still RUNNING


def test_every_scalar_metric_has_a_rule():
    assert sorted(FRACTIONS + COUNTS + SECONDS) == sorted(SCALAR_METRICS)


@pytest.mark.parametrize("name, value, words", [
    ("train_macs", "lots", "train_macs must be a whole number >= 0, got 'lots'"),
    ("final_macs", -5, "final_macs must be a whole number >= 0, got -5"),
    ("wall_time", float("inf"), "wall_time must be a finite number >= 0, got inf"),
    ("test_accuracy", float("nan"), r"test_accuracy must be a finite number in \[0, 1\], got nan"),
    ("val_accuracy", float("nan"), r"val_accuracy must be a finite number in \[0, 1\], got nan"),
    ("block_sparsity", True, "block_sparsity must be a finite number in"),
    ("train_params", 2.5, "train_params must be a whole number >= 0, got 2.5"),
    ("val_accuracy", torch.tensor([0.5, 0.6]), "val_accuracy must be one number .* Tensor of 2 elements"),
    ("test_acc", 0.5, "record_trial has no metric test_acc; it records val_accuracy, test_accuracy"),
])
def test_record_trial_refuses_a_malformed_metric_naming_it_and_what_is_allowed(name, value, words):
    with pytest.raises(BadInput, match=words):
        record(**{name: value})


def test_record_trial_stores_numpy_and_torch_scalars_as_plain_numbers():
    trial = record(val_accuracy=torch.tensor(0.5), test_accuracy=np.float32(0.25), train_macs=np.int64(7),
                   wall_time=torch.tensor([3.0]))
    assert trial.user_attrs["val_accuracy"] == 0.5 and type(trial.user_attrs["val_accuracy"]) is float
    assert trial.user_attrs["test_accuracy"] == 0.25 and trial.user_attrs["train_macs"] == 7
    assert trial.user_attrs["wall_time"] == 3.0


def corrupt(url: str, study_name: str, number: int, key: str, value: object) -> None:
    """Set a trial's user attr straight in the SQLite file, as another tool (or a hand edit) may."""
    study = optuna.load_study(study_name=study_name, storage=url)
    trial_id = study.trials[number]._trial_id  # noqa: SLF001
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db, db:
        db.execute("DELETE FROM trial_user_attributes WHERE trial_id = ? AND key = ?", (trial_id, key))
        db.execute("INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?, ?, ?)",
                   (trial_id, key, json.dumps(value)))


MALFORMED = [("metrics", "garbage", "metrics 'garbage' (not a mapping)"),
             ("val_accuracy", "high", "val_accuracy 'high' (not a finite number in [0, 1])"),
             ("train_macs", "lots", "train_macs 'lots' (not a whole number >= 0)"),
             ("final_macs", -5, "final_macs -5 (not a whole number >= 0)"),
             ("wall_time", 1e400, "wall_time inf (not a finite number >= 0)"),
             ("duplicate_of", "x", "duplicate_of 'x' (not a whole number >= 0)")]


@pytest.mark.parametrize("key, value, words", MALFORMED)
def test_a_malformed_attr_another_tool_wrote_is_flagged_and_every_read_command_goes_on(
        workdir, cli, key, value, words):
    url = build_search(workdir)
    corrupt(url, "demo:per_pattern", 2, key, value)
    line = f"trial 2 of demo:per_pattern: malformed record, read as missing: {words}"
    for args in (["compare", "demo"], ["export", "demo:per_pattern", "--out", "p.yaml"],
                 ["plot", "demo", "--out", "p"]):
        result = cli(*args)
        assert result.exit_code == 0, (args, result.output)
        assert line in " ".join(result.output.split()), (args, result.output)  # compare wraps at 80 columns
    shown = cli("show", "demo", "--format", "json")
    assert shown.exit_code == 0, shown.output
    rows = {r["number"]: r for r in json.loads(shown.stdout)[1]["trials"]}
    assert rows[2]["malformed"] == words and rows[1]["malformed"] is None
    assert f"#2 malformed record, read as missing: {words}" in " ".join(cli("show", "demo").output.split())


def test_a_malformed_metric_inside_the_metrics_attr_is_dropped_alone(workdir):
    url = build_search(workdir)
    corrupt(url, "demo:per_pattern", 2, "metrics", {"plan": {"layers.0": {"block": "2x2", "rank": 2}},
                                                    "final_params": "many", "selected": "2x2"})
    trial = optuna.load_study(study_name="demo:per_pattern", storage=url).trials[2]
    assert "final_params" not in metrics(trial) or metrics(trial)["final_params"] == 400  # the flat attr wins
    assert metrics(trial)["plan"] == {"layers.0": {"block": "2x2", "rank": 2}} and "selected" not in metrics(trial)
    assert kronsearch.record.malformed(trial) == ("metrics.final_params 'many' (not a whole number >= 0); "
                                                  "metrics.selected '2x2' (not a mapping of layer to block)")


def corrupt_study(url: str, study_name: str, key: str, value: object) -> None:
    """Set a study's user attr straight in the SQLite file."""
    study_id = optuna.load_study(study_name=study_name, storage=url)._study_id  # noqa: SLF001
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db, db:
        db.execute("DELETE FROM study_user_attributes WHERE study_id = ? AND key = ?", (study_id, key))
        db.execute("INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (?, ?, ?)",
                   (study_id, key, json.dumps(value)))


@pytest.mark.parametrize("key, value, words", [
    ("tolerance", "high", "tolerance 'high' (not a number of accuracy points in [0, 100])"),
    ("trial_config", 3, "trial_config 3 (not a mapping)"),
])
def test_a_malformed_study_attr_is_flagged_and_every_read_command_goes_on(workdir, cli, key, value, words):
    url = build_search(workdir)
    corrupt_study(url, "demo:per_pattern", key, value)
    line = f"study demo:per_pattern: malformed record, read as missing: {words}"
    for args in (["compare", "demo"], ["export", "demo:per_pattern", "--out", "p.yaml"],
                 ["plot", "demo", "--out", "p"]):
        result = cli(*args)
        assert result.exit_code == 0, (args, result.output)
        assert line in " ".join(result.output.split()), (args, result.output)
    shown = cli("show", "demo")
    assert shown.exit_code == 0, shown.output
    assert f"demo:per_pattern: malformed study record, read as missing: {words}" in " ".join(shown.output.split())


def test_a_record_read_again_after_optuna_replaced_a_value_is_checked_again():
    trial = optuna.trial.create_trial(value=0.5, user_attrs={"val_accuracy": 0.5})
    assert metrics(trial)["val_accuracy"] == 0.5
    trial.user_attrs["val_accuracy"] = "high"  # the same dict, one value replaced
    assert "val_accuracy" not in metrics(trial) and kronsearch.record.malformed(trial).startswith("val_accuracy")
