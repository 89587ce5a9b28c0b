"""A model whose output does not fit the data (issue 23): one forward pass on a real batch, in --dry-run and
before any run, refuses it naming the key; a trial the run stops on still says why it failed."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from kronsearch.backends import local
from kronsearch.search import run_search
from kronsearch.storage import load_studies
from tests.test_hostile_artifacts import error_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FACTORIES = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset


def three_classes(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))


class Pair(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.flat, self.body, self.head = nn.Flatten(), nn.Linear(64, 16), nn.Linear(16, num_classes)

    def forward(self, x):
        logits = self.head(self.body(self.flat(x)))
        return logits, logits


class Items(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


def splits(num_classes=10, low=0, high=10, float_labels=False, items=False):
    labels = lambda n: torch.randint(low, high, (n,)).to(torch.float32 if float_labels else torch.int64)
    make = lambda n: (Items if items else lambda d: d)(TensorDataset(torch.randn(n, 1, 8, 8), labels(n)))
    return {"train": make(64), "val": make(16), "test": make(16), "input_shape": (1, 8, 8), "num_classes": num_classes}
'''


@pytest.fixture
def factories(workdir: Path) -> None:
    (workdir / "fit_factories.py").write_text(FACTORIES, encoding="utf-8")


@pytest.mark.parametrize("changes, key, words", [
    ({"model": {"name": None, "factory": "fit_factories:three_classes", "options": None, "include": ["1"]}},
     "model", "returns shape (16, 3) for a train batch"),
    ({"model": {"name": None, "factory": "fit_factories:Pair", "options": None, "include": ["body"]}},
     "model", "returns a tuple"),
    ({"data": {"name": None, "limit": None, "factory": "fit_factories:splits", "options": {"num_classes": 3}}},
     "data", "train labels run from 0 to 9; with num_classes 3"),
    ({"data": {"name": None, "limit": None, "factory": "fit_factories:splits", "options": {"low": -1}}},
     "data", "labels run from -1"),
    ({"data": {"name": None, "limit": None, "factory": "fit_factories:splits", "options": {"float_labels": True}}},
     "data", "train labels are torch.float32; they must be integer class indices in 0..9"),
    ({"data": {"name": None, "limit": None, "factory": "fit_factories:splits",
               "options": {"float_labels": True, "items": True}}},
     "data", "train labels are torch.float32; they must be integer class indices in 0..9"),
], ids=["3-class-head", "tuple-output", "declares-3-classes", "label-minus-1", "float-labels", "float-label-items"])
@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])
def test_a_model_whose_output_does_not_fit_the_data_is_refused_before_training(
        write_space, workdir, cli, factories, changes, key, words, dry):
    path = write_space(**changes)
    result = cli("run", path, "--quiet", *(["--dry-run"] if dry else []))
    assert result.exit_code == 2
    line = error_line(result)
    assert f"tiny.yaml: key {key}: " in line and words in line, line
    assert not Path("studies").exists()


def test_a_trial_the_run_stops_on_still_records_why(write_space, monkeypatch):
    monkeypatch.setattr(local, "run_trial", lambda *a, **k: [][0])
    with pytest.raises(IndexError):
        run_search(write_space(), progress=False)
    (study,) = load_studies("tiny:one_round")
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["interrupted"] == "stopped by an error: IndexError: list index out of range"
