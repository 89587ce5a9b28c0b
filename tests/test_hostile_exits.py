"""Exits that did not say what happened (issue 31): the user's Dataset or model calling sys.exit, and progress output
whose reader went away (`run ... | head -1`) or whose width is absurd (COLUMNS=0). Every exit is 0 only when the work
was done, and no trial is left RUNNING."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from kronsearch.storage import load_studies
from tests.test_hostile_artifacts import error_line
from tests.test_reliability import REPO, TIMEOUT

CODE = '''
import sys

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset


class Stop(BaseException):
    """Not an Exception: as a user's own control-flow class might be."""


class Digits(Dataset):
    def __init__(self, images, labels, exit_at):
        self.images, self.labels, self.exit_at, self.calls = images, labels, exit_at, 0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        self.calls += 1
        if self.exit_at is not None and self.calls > self.exit_at:
            sys.exit(0)
        return self.images[i], self.labels[i]


def data(exit_at=None):
    x, y = load_digits(return_X_y=True)
    images, labels = torch.tensor(x[:120] / 16, dtype=torch.float32).reshape(-1, 1, 8, 8), torch.tensor(y[:120])
    split = lambda a, b: Digits(images[a:b], labels[a:b], exit_at)
    return {"train": split(0, 80), "val": split(80, 100), "test": split(100, 120), "input_shape": (1, 8, 8),
            "num_classes": 10}


class Net(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how, self.layers = how, nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x):
        if self.training and self.how == "exit":
            sys.exit(0)
        if self.training and self.how == "stop":
            raise Stop("stop here")
        return self.layers(x)


def model(input_shape, num_classes, how="none", **options):
    return Net(how)
'''


@pytest.fixture
def user_code(workdir: Path) -> Path:
    (workdir / "user_code.py").write_text(CODE, encoding="utf-8")
    return workdir


def own_code_space(write_space, how: str = "none", exit_at: int | None = None) -> Path:
    return write_space(data={"name": None, "limit": None, "factory": "user_code:data", "options": {"exit_at": exit_at}},
                       model={"name": None, "factory": "user_code:model", "options": {"how": how},
                              "include": ["layers.*"]})


@pytest.mark.parametrize("how, words", [("exit", "called sys.exit(0)"), ("stop", "raised Stop")])
def test_a_model_that_exits_while_training_fails_its_trial_with_a_line_and_exit_1(write_space, cli, user_code, how,
                                                                                   words):
    result = cli("run", own_code_space(write_space, how=how), "--quiet")
    assert result.exit_code == 1, result.output
    assert words in error_line(result) and "the trial's data or model code" in error_line(result)
    (study,) = load_studies("tiny")
    assert [t.state for t in study.trials] == [TrialState.FAIL]  # not RUNNING
    assert words in study.trials[0].user_attrs["interrupted"]


def test_a_dataset_that_exits_in_getitem_during_training_fails_its_trial(write_space, cli, user_code):
    result = cli("run", own_code_space(write_space, exit_at=100), "--quiet")  # the check reads 48 items first
    assert result.exit_code == 1, result.output
    assert "called sys.exit(0)" in error_line(result)
    (study,) = load_studies("tiny")
    assert [t.state for t in study.trials] == [TrialState.FAIL]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_a_dataset_that_exits_in_the_check_before_training_is_an_error_not_a_silent_success(write_space, cli,
                                                                                             user_code, dry_run):
    result = cli("run", own_code_space(write_space, exit_at=0), *(["--dry-run"] if dry_run else []))
    assert result.exit_code == 1, result.output
    assert "the data or model code (checked before training) called sys.exit(0)" in error_line(result)
    assert not Path("studies").exists()


def kronsearch(*args: str, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen([sys.executable, "-m", "kronsearch", *args], env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def test_a_reader_that_goes_away_after_one_line_neither_stops_the_run_nor_fails_it(write_space, workdir):
    write_space()
    proc = kronsearch("run", "tiny.yaml")  # as `kronsearch run tiny.yaml 2>&1 | head -1`
    first = proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=TIMEOUT) == 0, first
    (study,) = load_studies("tiny")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2


def test_columns_0_hides_no_progress_line(write_space, workdir):
    write_space()
    proc = kronsearch("run", "tiny.yaml", COLUMNS="0")
    out = proc.communicate(timeout=TIMEOUT)[0].decode()
    assert proc.returncode == 0, out
    assert "trial 0 epoch 1/2 (select): val" in out and "[2/2 done, best val" in out and "pick (the cheapest" in out


CALLBACK = '''
from ray import tune


class Raises(tune.Callback):
    def on_trial_result(self, iteration, trials, trial, result, **info):
        raise RuntimeError("no callback today")


def raising():
    return Raises()
'''


@pytest.mark.slow  # starts Ray, about 25 s; CI runs it (-m slow)
@pytest.mark.xdist_group("ray")
def test_a_ray_callback_that_raises_is_one_short_line_naming_its_key(write_space, workdir, cli):
    (workdir / "user_callback.py").write_text(CALLBACK, encoding="utf-8")
    space = write_space(search={"trials": 1}, backend={"name": "ray", "max_concurrent": 1,
                                                      "callbacks": ["user_callback:raising"]})
    result = cli("run", space, "--quiet")
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert line == ("error: backend.callbacks[0] 'user_callback:raising': its on_trial_result raised RuntimeError: "
                    "no callback today")
    (study,) = load_studies("tiny")
    assert TrialState.RUNNING not in [t.state for t in study.trials]
