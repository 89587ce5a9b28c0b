"""The read commands read a study once: the storage queries of show, compare, export and plot do not grow with
the study's trials (issue 33: show made 6,017 queries on 3,003 trials). Their time is benchmarks/read_scale.py's."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState, create_trial
from rich.console import Console

from kronsearch.report import compare_data, render_compare, render_show, show_data
from kronsearch.report.export import export_trial
from kronsearch.report.plot import plot_studies
from kronsearch.storage import load_studies
from tests.test_report import OBJECTIVES_2, ONE_ROUND_DISTS, metrics_for, new_study, plan_for, trial_attrs

STUDY = "demo:one_round"


def study_of(folder: Path, trials: int) -> str:
    """A one_round study of `trials` complete trials (each with metrics and a plan) in folder/demo.db."""
    url = f"sqlite:///{folder / 'demo.db'}"
    storage = optuna.storages.RDBStorage(url)
    study = new_study(storage, STUDY, "one_round", OBJECTIVES_2[:1], folder / "artifacts")
    plan = plan_for("2x2", 1)
    study.add_trials([create_trial(
        state=TrialState.COMPLETE, value=0.5 + number / (4 * trials),
        params={"rank": 1, "lambda1": 1e-3, "lambda2": 1e-4},
        distributions=ONE_ROUND_DISTS, intermediate_values={1: 0.5},
        user_attrs=trial_attrs("one_round", folder, number, metrics_for(0.5 + number / (4 * trials), plan)))
        for number in range(trials)])
    return url


@contextmanager
def counted() -> Iterator[list[str]]:
    """Every SQL statement any engine runs inside the block."""
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        statements.append(statement)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", count)


def read_commands(url: str, out: Path) -> dict[str, int]:
    """Each read command's storage queries, run as the CLI runs it."""
    commands = {
        "show": lambda: render_show(show_data(load_studies(STUDY, url)), Console(file=io.StringIO())),
        "compare": lambda: render_compare(compare_data(load_studies(STUDY, url)), Console(file=io.StringIO())),
        "export": lambda: export_trial(load_studies(STUDY, url)[0], out / "best.yaml", storage_url=url),
        "plot": lambda: plot_studies(load_studies(STUDY, url), out / "plots"),
    }
    found = {}
    for name, command in commands.items():
        with counted() as statements:
            command()
        found[name] = len(statements)
    return found


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The same study with 3 and with 60 trials."""
    return (study_of(tmp_path_factory.mktemp("small"), 3), study_of(tmp_path_factory.mktemp("large"), 60))


def test_read_commands_make_as_many_storage_queries_for_60_trials_as_for_3(studies, tmp_path):
    small, large = (read_commands(url, tmp_path) for url in studies)
    assert large == small
    assert all(count < 40 for count in large.values()), large


def test_a_study_is_read_once_by_each_read_command(studies, tmp_path, monkeypatch):
    reads = []
    original = optuna.storages.RDBStorage._get_trials

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN202
        reads.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, "_get_trials", spy)
    read_commands(studies[1], tmp_path)
    assert len(reads) == 4  # one per command: show, compare, export, plot
