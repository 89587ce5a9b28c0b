"""Several machines on one PostgreSQL study, against a real server the tests start (tests/postgres.py: initdb and
pg_ctl as a non-root user, 127.0.0.1, a free port, a temp folder). Each "machine" is a `kronsearch run` process in
a folder of its own; they share the study and one artifact folder (--artifacts). Without a server binary the
tests skip with the reason, except on CI (CI=true), where they fail: CI must run them."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState
from safetensors.torch import load_file

from kronsearch import kronify, load_plan
from kronsearch.data.batches import Batches
from kronsearch.models import build_model
from kronsearch.record import TrialRecord, counts_toward_budget
from kronsearch.space import load_space
from kronsearch.storage import load_studies
from kronsearch.trainer import accuracy
from kronsearch.trial_run import load_space_data
from tests.conftest import TINY_SPACE, merge
from tests.postgres import PostgresServer, skip_unless_available

ROOT = Path(__file__).resolve().parents[1]
STUDY = "tiny:one_round"
TIMEOUT = 300
# A `kronsearch run` on another host: its trials' pid cannot be checked here, only their heartbeat
OTHER_HOST = ("import socket, sys; socket.gethostname = lambda: 'machine-b'; from kronsearch.cli import main; "
              "sys.argv = ['kronsearch'] + sys.argv[1:]; main()")


@pytest.fixture(scope="module")
def server():
    """A PostgreSQL server for this file's tests; skipped with the reason where none can start (failed on CI)."""
    skip_unless_available()
    started = PostgresServer()
    try:
        started.start()
        yield started
    finally:
        started.stop()


@pytest.fixture
def database(server, request) -> str:
    """A new, empty database on the server, for one test."""
    return server.database(f"t{abs(hash(request.node.name)) % 10**9}")


@pytest.fixture
def machines(tmp_path: Path):
    """machines(*names) -> a folder per machine, with the tiny space file; the shared artifact folder is
    tmp_path/shared. Processes started by run() are killed at teardown if still running."""
    started: list[subprocess.Popen] = []

    def folders(*names: str, **changes) -> list[Path]:
        made = []
        for name in names:
            folder = tmp_path / name
            folder.mkdir()
            (folder / "tiny.yaml").write_text(yaml.safe_dump(merge(TINY_SPACE, changes)), encoding="utf-8")
            made.append(folder)
        return made

    def run(folder: Path, *args: str, host: str | None = None) -> subprocess.Popen:
        code = OTHER_HOST if host else "from kronsearch.cli import main; import sys; sys.argv[0] = 'kronsearch'; main()"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(tmp_path / "ray"), "RAY_AUTH_MODE": "disabled"}
        proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=folder, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(proc)
        return proc

    folders.run = run
    folders.shared = tmp_path / "shared"
    yield folders
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_the_server_is_a_real_postgresql_on_localhost(server):
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres") as connection:
        assert connection.execute("select version()").fetchone()[0].startswith("PostgreSQL")


def run_args(url: str, shared: Path, *more: str) -> list[str]:
    return ["run", "tiny.yaml", "--storage", url, "--artifacts", str(shared), "--quiet", *more]


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    return out


def trials_of(url: str) -> list:
    (study,) = load_studies(STUDY, url)
    return study.get_trials()


@pytest.mark.slow  # three machines training six trials, about 30 s; CI runs it (-m slow)
def test_machines_sharing_a_study_and_an_artifact_folder_hold_the_budget_and_any_machine_exports(
        database, machines, tmp_path):
    a, b, c = machines("a", "b", "c", search={"trials": 6})
    procs = [machines.run(folder, *run_args(database, machines.shared)) for folder in (a, b)]
    for proc in procs:
        finish(proc)
    every = trials_of(database)
    done = [t for t in every if counts_toward_budget(t)]
    assert len(done) == 6 and not [t for t in every if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    trained = [t for t in complete if TrialRecord.of(t).duplicate_of is None]
    assert len({tuple(sorted(t.params.items())) for t in trained}) == len(trained)  # none trained twice
    assert {TrialRecord.of(t).worker.rpartition(":")[2] for t in every} == {str(p.pid) for p in procs}  # both worked
    assert sorted(p.name for p in (machines.shared / "tiny" / "one_round").glob("trial-*")) == sorted(
        f"trial-{t.number}" for t in trained)  # every trial's folder in the shared one; none anywhere else
    assert not list(a.glob("studies")) and not list(b.glob("studies"))

    # a third machine exports every machine's trials: the trial's test accuracy from its weights
    for trial in {t.user_attrs["worker"]: t for t in trained}.values():
        export = machines.run(c, "export", STUDY, "--storage", database, "--artifacts", str(machines.shared),
                              "--trial", str(trial.number), "--out", "best.yaml", "--weights", "best.safetensors")
        finish(export)
        space = load_space(c / "tiny.yaml")
        model = build_model("mlp", space.input_shape, space.num_classes, hidden=[16])
        kronify(model, load_plan(c / "best.yaml"))
        model.load_state_dict(load_file(str(c / "best.safetensors")))
        test = accuracy(model, Batches(load_space_data(space).test, 64, "cpu"))
        assert test == pytest.approx(trial.user_attrs["test_accuracy"])


@pytest.mark.slow  # two runs and an export in fresh processes
def test_a_machine_that_cannot_reach_the_artifact_folder_is_told_which_trial_and_where(database, machines):
    (a, c) = machines("a", "c", search={"trials": 1})
    finish(machines.run(a, *run_args(database, machines.shared)))
    elsewhere = c / "not-mounted"
    export = machines.run(c, "export", STUDY, "--storage", database, "--artifacts", str(elsewhere),
                          "--out", "best.yaml", "--weights", "best.safetensors")
    _, err = export.communicate(timeout=TIMEOUT)
    assert export.returncode == 1 and len(err.strip().splitlines()) == 1
    assert f"trial 0 of '{STUDY}'" in err and str(elsewhere / "tiny" / "one_round" / "trial-0") in err
    run = machines.run(c, *run_args(database, elsewhere, "--trials", "2"))
    _, err = run.communicate(timeout=TIMEOUT)
    assert run.returncode == 1 and "not under the --artifacts folder given" in err
    assert len(trials_of(database)) == 1  # refused before it trained a trial where no other machine sees it


@pytest.mark.slow  # a run and an export in fresh processes
def test_a_study_records_its_artifact_folder_so_a_machine_needs_no_option_where_it_is_mounted_alike(
        database, machines):
    (a, c) = machines("a", "c", search={"trials": 1})
    finish(machines.run(a, *run_args(database, machines.shared)))
    export = machines.run(c, "export", STUDY, "--storage", database, "--out", "best.yaml", "--weights", "w.safetensors")
    assert "exported trial 0" in finish(export)
    (study,) = load_studies(STUDY, database)
    assert study.user_attrs["artifacts_root"] == str(machines.shared.resolve())
    assert study.user_attrs["artifacts_dir"] == "tiny/one_round"  # the same layout on every machine


@pytest.mark.slow  # a run killed at a seeded random moment and the heartbeat's grace period, about 30 s
def test_a_machine_killed_at_a_random_moment_is_recovered_by_its_heartbeat_and_nothing_stays_running(
        database, machines):
    (a, b) = machines("a", "b", search={"trials": 3}, backend={"heartbeat": 1})
    rng = random.Random(33)
    other = machines.run(b, *run_args(database, machines.shared), host="machine-b")
    deadline = time.monotonic() + TIMEOUT
    while not any(t.state == TrialState.RUNNING for t in _trials_or_none(database)):
        assert other.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(rng.uniform(0, 1.5))  # somewhere in its trial (or just after it)
    other.send_signal(signal.SIGKILL)
    other.communicate()
    time.sleep(4)  # its last heartbeat is older than the grace period (3 x 1 s)
    finish(machines.run(a, *run_args(database, machines.shared)))
    every = trials_of(database)
    assert not [t.number for t in every if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len([t for t in every if counts_toward_budget(t)]) == 3
    for dead in (t for t in every if TrialRecord.of(t).interrupted):
        assert "no heartbeat" in TrialRecord.of(dead).interrupted and dead.user_attrs["worker"].startswith("machine-b:")


def _trials_or_none(url: str) -> list:
    try:
        return trials_of(url)
    except Exception:  # noqa: BLE001 - the study does not exist yet
        return []


@pytest.mark.slow  # a long trial on another machine (killed at teardown), about 20 s
def test_fresh_is_refused_while_another_machine_works_on_the_study(database, machines):
    # with 200 epochs --fresh once succeeded in CI on a loaded 2-core machine: b's trial had most likely ended
    (a, b) = machines("a", "b", search={"trials": 1}, train={"epochs": 5000}, backend={"heartbeat": 1})
    other = machines.run(b, *run_args(database, machines.shared), host="machine-b")
    deadline = time.monotonic() + TIMEOUT
    while not any(t.state == TrialState.RUNNING for t in _trials_or_none(database)):
        assert other.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.5)  # a heartbeat or two
    fresh = machines.run(a, *run_args(database, machines.shared, "--fresh"))
    _, err = fresh.communicate(timeout=TIMEOUT)
    assert fresh.returncode == 1 and "cannot --fresh" in err and "machine-b:" in err
    assert [t.state for t in trials_of(database)] == [TrialState.RUNNING]  # nothing deleted
    assert other.poll() is None


@pytest.mark.slow  # a Ray session, about 30 s; CI runs it (-m slow)
@pytest.mark.xdist_group("ray")
def test_the_ray_backend_runs_a_postgresql_study_into_the_shared_artifact_folder(database, machines):
    from tests.test_ray_backend import ray_processes
    from tests.test_ray_cluster import left_running

    (a,) = machines("a", search={"trials": 2}, backend={"name": "ray", "max_concurrent": 2})
    before = ray_processes()
    finish(machines.run(a, *run_args(database, machines.shared)))
    every = trials_of(database)
    assert [t.state for t in every] == [TrialState.COMPLETE] * 2
    assert all((machines.shared / "tiny" / "one_round" / f"trial-{t.number}" / "model.safetensors").is_file()
               for t in every)
    assert left_running(before) == {}
