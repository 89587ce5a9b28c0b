"""Reliability: killed, interrupted, failing and concurrent runs, storage failures, hostile space files.

The process tests start real `kronsearch run` processes (the CLI) in a temporary working directory
and signal them mid-trial. To stop a process at a known point, the script below wraps run_trial so
that one chosen trial writes a marker file and sleeps: the trial is then RUNNING in the storage,
tagged with its process, exactly as a long training would be.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
import torch
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from safetensors import SafetensorError
from safetensors.torch import load_file
from typer.testing import CliRunner

from kronsearch import kronify, load_plan
from kronsearch import trial_run as trial_module
from kronsearch.backends import base, local
from kronsearch.backends.base import Budget, TrialSkipped
from kronsearch.backends.local import make_objective
from kronsearch.cli import app
from kronsearch.layers.yamlfile import MAX_DEPTH, MAX_FILE_BYTES
from kronsearch.processes import process_started, worker_id
from kronsearch.record import counts_toward_budget, finished
from kronsearch.schema import MAX_CANDIDATES, MAX_EPOCHS
from kronsearch.search import run_search
from kronsearch.space import SpaceError, load_space
from kronsearch.storage import (
    StorageError,
    StudyNotFound,
    artifact_dir_candidates,
    default_storage_url,
    load_studies,
    open_storage,
    storage_error,
)
from kronsearch.study import open_study, recover_dead_trials
from kronsearch.study_owner import live_holders
from kronsearch.trainer import TrainingDiverged

REPO = Path(__file__).resolve().parents[1]
STUDY = "tiny:one_round"
TIMEOUT = 120  # seconds for any one subprocess (they take a few seconds)

# `kronsearch run tiny.yaml` in which the HANG_AT-th trial this process trains hangs (see the docstring).
RUN_HANGING = """
import os, signal, sys, time
from pathlib import Path

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever the parent ignores
import kronsearch.backends.local as local
from kronsearch.cli import main

real, calls = local.run_trial, []

def run_trial(*args, **kwargs):
    calls.append(1)
    if len(calls) == int(os.environ["HANG_AT"]):
        Path("hanging").write_text(str(os.getpid()))
        time.sleep(300)
    return real(*args, **kwargs)

local.run_trial = run_trial
sys.argv = ["kronsearch", "run", "tiny.yaml", "--quiet"]
main()
"""

# `kronsearch run tiny.yaml` that starts training only once the file "go" exists.
RUN_ON_GO = """
import os, sys, time
from pathlib import Path

import kronsearch.search  # the heavy imports before the start line, so both start together
import sklearn.datasets
from kronsearch.cli import main

Path(f"ready-{os.getpid()}").touch()
while not Path("go").exists():
    time.sleep(0.01)
sys.argv = ["kronsearch", "run", "tiny.yaml", "--quiet"]
main()
"""


# `kronsearch run tiny.yaml` SIGKILLed the moment trial KILL_AT exists in the storage, before any
# kronsearch code has seen it (the sampler's before_trial is the first code called with a new trial).
RUN_KILLED_AT_CREATION = """
import os, signal, sys
import kronsearch.study as study
from kronsearch.cli import main

real = study.PerTrialSeedSampler.before_trial

def killed(self, s, trial):
    if trial.number == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, s, trial)

study.PerTrialSeedSampler.before_trial = killed
sys.argv = ["kronsearch", "run", "tiny.yaml", "--quiet"]
main()
"""


# `kronsearch run tiny.yaml` on a disk that fills up as the first trial's results are recorded.
RUN_DISK_FULL = """
import sqlite3, sys
import optuna, sqlalchemy.exc
from kronsearch.cli import main

real = optuna.storages.RDBStorage.set_trial_user_attr

def full(self, trial_id, key, value):
    if key == "metrics":
        full_disk = sqlite3.OperationalError("database or disk is full")
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from \\
            sqlalchemy.exc.OperationalError("INSERT INTO trial_user_attributes", {}, full_disk)
    return real(self, trial_id, key, value)

optuna.storages.RDBStorage.set_trial_user_attr = full
sys.argv = ["kronsearch", "run", "tiny.yaml", "--quiet"]
main()
"""


RUN = """
import sys
from kronsearch.cli import main
sys.argv = ["kronsearch", "run", "tiny.yaml", "--quiet"]
main()
"""


@pytest.fixture
def python(workdir: Path):
    """python(script, **env) -> a Python process running `script` in workdir; killed at teardown if still running."""
    started: list[subprocess.Popen] = []

    def start(script: str, **env: str) -> subprocess.Popen:
        environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
        started.append(subprocess.Popen([sys.executable, "-c", script], cwd=workdir, env=environment, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    """Until `path` exists; fails with the process's output if it ends first."""
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended ({proc.returncode}) before {path.name}:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"no {path.name} after {TIMEOUT}s"
        time.sleep(0.02)


def trials() -> list[FrozenTrial]:
    (study,) = load_studies(STUDY)
    return study.get_trials()


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def assert_no_trial_lost_or_duplicated(expected: int) -> list[FrozenTrial]:
    """`expected` trials count toward the budget, none is left RUNNING/WAITING, no configuration twice."""
    (study,) = load_studies(STUDY)
    every = study.get_trials()
    done = finished(study)
    assert len(done) == expected, [(t.number, t.state.name, t.user_attrs.get("skipped")) for t in every]
    assert not [t.number for t in every if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in every}) == len(every)
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    assert all("duplicate_of" not in t.user_attrs for t in complete)
    assert len({tuple(sorted(t.params.items())) for t in complete}) == len(complete)
    return every


# ---------------------------------------------------------------------------------------------
# A killed, an interrupted and a failing trial


def test_sigkill_mid_trial_then_rerun_resumes_and_retries_the_cut_off_trial(write_space, workdir, python):
    path = write_space(search={"trials": 3})
    run_search(path, trials=1, progress=False)  # trial 0, finished before the run that gets killed
    proc = python(RUN_HANGING, HANG_AT="1")
    wait_for(workdir / "hanging", proc)
    running = [t for t in trials() if t.state == TrialState.RUNNING]
    assert [t.number for t in running] == [1]
    cut = running[0]
    assert cut.user_attrs["worker"] == f"{worker_id().rpartition(':')[0]}:{proc.pid}"
    first = trials()[0]
    saved = digest(Path("studies", first.user_attrs["artifact_dir"]))

    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    assert [t.state for t in trials()] == [TrialState.COMPLETE, TrialState.RUNNING]  # what a kill leaves

    output = io.StringIO()  # re-running resumes (in this process: `kronsearch run` is a wrapper of run_search)
    run_search(path, console=Console(file=output, width=200))
    assert "trials [1] were interrupted" in output.getvalue()
    every = assert_no_trial_lost_or_duplicated(3)
    assert every[0].state == TrialState.COMPLETE and every[0].values == first.values
    assert digest(Path("studies", first.user_attrs["artifact_dir"])) == saved
    assert every[1].state == TrialState.FAIL
    assert f":{proc.pid} died" in every[1].user_attrs["interrupted"]
    (retry,) = [t for t in every if t.user_attrs.get("retry_of") == 1]
    assert retry.state == TrialState.COMPLETE and retry.params == cut.params

    run_search(path, progress=False)  # a finished study: nothing re-queued, nothing trained
    assert len(trials()) == len(every)


@pytest.mark.slow  # two runs killed in fresh processes, about 8 s each; CI runs it (-m slow)
@pytest.mark.parametrize("queued", [False, True], ids=["new-trial", "queued-trial"])
def test_a_kill_right_after_a_trial_is_created_is_recovered_by_the_next_run(write_space, workdir, python, queued):
    """The trial's process is written in the transaction that starts it, so no kill leaves a RUNNING
    trial that no run can recover (it used to stay RUNNING forever, and the next run ended one short)."""
    path = write_space(search={"trials": 2, "save_weights": False})
    run_search(path, trials=1, progress=False)
    if queued:  # taken from Optuna's queue (WAITING -> RUNNING), as a retried configuration is
        study = optuna.load_study(study_name=STUDY, storage=open_storage(default_storage_url("tiny")))
        study.enqueue_trial({"lambda2": 0.0005})
    proc = python(RUN_KILLED_AT_CREATION, KILL_AT="1")
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    cut = trials()[1]
    assert cut.state == TrialState.RUNNING and cut.user_attrs["worker"].endswith(f":{proc.pid}")

    summary = run_search(path, progress=False)  # right away: no waiting for a timeout
    assert summary.completed == 2
    every = assert_no_trial_lost_or_duplicated(2)
    assert every[1].state == TrialState.FAIL and f":{proc.pid} died" in every[1].user_attrs["interrupted"]
    if queued:
        assert [t.params["lambda2"] for t in every if t.user_attrs.get("retry_of") == 1] == [0.0005]


@pytest.mark.parametrize("url", ["sqlite:///studies.db", "studies.log"], ids=["sqlite", "journal-file"])
def test_every_trial_a_run_starts_names_its_process_from_the_start(workdir, url):
    owner = {"worker": worker_id()}
    study = optuna.create_study(study_name="s", storage=open_storage(url, owner=owner))
    new = study.ask()
    study.enqueue_trial({"x": 1.0})
    queued = study.ask()
    assert [t.user_attrs for t in study.get_trials()] == [owner, owner]
    assert (new.number, queued.number) == (0, 1)


def test_ctrl_c_stops_after_saving_says_how_to_resume_and_the_trial_is_retried(write_space, workdir, python):
    path = write_space(search={"trials": 3})
    run_search(path, trials=1, progress=False)  # trial 0, finished before the run that gets interrupted
    proc = python(RUN_HANGING, HANG_AT="1")
    wait_for(workdir / "hanging", proc)
    cut = trials()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "re-run the same command to resume" in err
    assert "Traceback" not in err
    first, stopped = trials()
    assert first.state == TrialState.COMPLETE
    assert (Path("studies", first.user_attrs["artifact_dir"]) / "model.safetensors").is_file()
    assert stopped.state == TrialState.FAIL and "Ctrl-C" in stopped.user_attrs["interrupted"]
    assert "fail_reason" not in stopped.user_attrs  # does not count against the budget

    summary = run_search(path, progress=False)
    assert summary.completed == 3
    every = assert_no_trial_lost_or_duplicated(3)
    (retry,) = [t for t in every if t.user_attrs.get("retry_of") == 1]
    assert retry.state == TrialState.COMPLETE and retry.params == cut.params


def test_a_diverging_trial_fails_with_its_reason_and_the_search_goes_on(write_space, monkeypatch):
    real = local.run_trial

    def run_trial(space, spec, *args, **kwargs):  # the first trial trains with a learning rate of 1e30
        if spec.lambda2 == 0.0005:
            space = dataclasses.replace(space, train={**space.train, "lr": 1e30})
        return real(space, spec, *args, **kwargs)

    monkeypatch.setattr(local, "run_trial", run_trial)
    path = write_space(search={"trials": 3, "save_weights": False})
    Path("studies").mkdir()
    study = open_study(load_space(path), "one_round", default_storage_url("tiny"), False, Path("studies"))
    for lambda2 in (0.0005, 0.0001, 0.0002):
        study.enqueue_trial({"lambda2": lambda2})
    summary = run_search(path, progress=False)
    assert summary.completed == 3
    diverged, *rest = trials()
    assert diverged.state == TrialState.FAIL
    assert re.match(r"diverged: non-finite (loss|weights)", diverged.user_attrs["fail_reason"]), diverged.user_attrs
    assert [t.state for t in rest] == [TrialState.COMPLETE] * 2


def test_out_of_memory_fails_the_trial_with_the_reason_and_the_search_goes_on(write_space, monkeypatch):
    real, calls = local.run_trial, []

    def run_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(local, "run_trial", run_trial)
    summary = run_search(write_space(search={"trials": 2, "save_weights": False}), progress=False)
    assert summary.completed == 2
    failed, complete = trials()
    assert failed.state == TrialState.FAIL and complete.state == TrialState.COMPLETE
    assert failed.user_attrs["fail_reason"] == "out of memory: CUDA out of memory. Tried to allocate 20.00 GiB"


def test_a_run_whose_trials_all_failed_says_why_and_exits_1(write_space, monkeypatch):
    def diverges(*args, **kwargs):
        raise TrainingDiverged("non-finite loss nan in select epoch 1, step 1")

    monkeypatch.setattr(local, "run_trial", diverges)
    result = CliRunner().invoke(app, ["run", str(write_space(search={"trials": 3})), "--quiet"])
    assert result.exit_code == 1
    assert "error: study tiny:one_round: no trial completed (3 trials finished); the most common reason (3 of 3): " \
           "diverged: non-finite loss nan in select epoch 1, step 1" in result.output


@pytest.mark.parametrize(("error", "reason"), [
    (RuntimeError("CUDA error: an illegal memory access was encountered"), "device error: CUDA error"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                  "you tried to allocate 80000000000 bytes"), "out of memory: [enforce fail"),
    (MemoryError(), "out of memory"),
    (TrainingDiverged("non-finite loss"), "diverged: non-finite loss"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), None),  # a bug: raised, not recorded
    (StorageError("cannot save"), None),  # stops the run instead (see the full disk test)
], ids=["cuda-error", "cpu-oom", "memory-error", "diverged", "bug", "storage"])
def test_which_exceptions_are_trial_failures(error, reason):
    got = base.trial_failure(error)
    assert got == reason if reason is None else got.startswith(reason)


def test_a_bug_in_a_trial_is_not_swallowed_as_a_trial_failure(write_space, monkeypatch):
    monkeypatch.setattr(local, "run_trial", lambda *a, **k: [][0])
    with pytest.raises(IndexError):
        run_search(write_space(), progress=False)


# ---------------------------------------------------------------------------------------------
# Crash fuzz: `kronsearch run` SIGKILLed at random moments, from its first second to its last trial


def fuzz_snapshot() -> list[FrozenTrial] | None:
    """The study's trials as a killed run left them; None while no run got as far as creating it."""
    try:
        (study,) = load_studies(STUDY)
    except (StudyNotFound, StorageError):
        return None
    every = study.get_trials()
    complete = [t for t in every if t.state == TrialState.COMPLETE]
    first_with = {}
    for trial in complete:  # no configuration trained twice unless declared a duplicate of a complete trial
        key = tuple(sorted(trial.params.items()))
        if key in first_with:
            assert trial.user_attrs.get("duplicate_of") == first_with[key], (trial.number, trial.user_attrs)
        first_with.setdefault(key, trial.number)
    for trial in complete:  # every complete trial's weights and metrics load
        folder = artifact_dir_candidates(study, trial.user_attrs["artifact_dir"])[0]
        assert load_file(folder / "model.safetensors") and json.loads((folder / "metrics.json").read_text())
    return every


def crash_fuzz(path: Path, python, seed: int, kills: int, trials: int) -> None:
    """`kills` runs SIGKILLed at seeded random delays from their start (the first within its first
    second), each checked as it is left, then one clean run that must finish exactly `trials`."""
    rng = random.Random(seed)
    delays = [rng.uniform(0, 1)] + [rng.uniform(0, 12) for _ in range(kills - 1)]
    finished_before, running_before = 0, set()
    for delay in delays:
        proc = python(RUN)
        time.sleep(delay)
        proc.kill()
        proc.communicate(timeout=TIMEOUT)
        every = fuzz_snapshot()
        if every is None:
            assert finished_before == 0
            continue
        done = [t for t in every if counts_toward_budget(t)]
        assert len(done) >= finished_before  # nothing finished is ever lost
        if any(t.user_attrs.get("worker", "").endswith(f":{proc.pid}") for t in every):  # it got past recovery
            assert not {t.number for t in every if t.state == TrialState.RUNNING} & running_before
        finished_before = len(done)
        running_before = {t.number for t in every if t.state == TrialState.RUNNING}
    if fuzz_snapshot() is not None:  # the killed runs' holds are stale: nothing keeps --fresh from the study
        (study,) = load_studies(STUDY)
        assert live_holders(study) == []
    summary = run_search(path, progress=False)
    assert summary.completed == trials
    every = fuzz_snapshot()
    assert len([t for t in every if counts_toward_budget(t)]) == trials
    assert not [t.number for t in every if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.slow  # about 27 s; CI runs it (-m slow)
def test_crash_fuzz_kills_at_random_moments_lose_nothing_and_the_next_run_finishes_the_budget(write_space, python):
    crash_fuzz(write_space(search={"trials": 4}), python, seed=0, kills=5, trials=4)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 4))
def test_crash_fuzz_long(write_space, python, seed):
    crash_fuzz(write_space(search={"trials": 8}), python, seed=seed, kills=15, trials=8)


# ---------------------------------------------------------------------------------------------
# Processes sharing a study


@pytest.mark.slow  # about 15 s; CI runs it (-m slow)
def test_two_processes_share_a_study_without_losing_or_duplicating_trials(write_space, workdir, python):
    write_space(search={"trials": 4})
    procs = [python(RUN_ON_GO) for _ in range(2)]
    deadline = time.monotonic() + TIMEOUT
    while len(list(workdir.glob("ready-*"))) < 2:
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline
        time.sleep(0.02)
    (workdir / "go").touch()  # both create the storage and ask for trials at the same moment
    outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert "locked" not in err and "already exists" not in err
    every = assert_no_trial_lost_or_duplicated(4)
    workers = {t.user_attrs["worker"] for t in every}
    assert workers == {f"{worker_id().rpartition(':')[0]}:{p.pid}" for p in procs}  # both did work
    assert sum(t.state == TrialState.COMPLETE for t in every) == 4
    assert all(t.user_attrs.get("skipped") for t in every if t.state == TrialState.FAIL)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="uses /proc to see a zombie")
def test_a_trial_started_beyond_the_budget_claimed_by_a_live_process_is_skipped(write_space, workdir):
    """Another live process on this host is running trial 1 of a budget of 2: this one must not train a third."""
    path = write_space(search={"trials": 2, "save_weights": False})
    run_search(path, trials=1, progress=False)
    (study,) = load_studies(STUDY)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claimed = study.ask()
        claimed.set_user_attr("kind", "one_round")
        claimed.set_user_attr("worker", f"{worker_id().rpartition(':')[0]}:{sleeper.pid}")
        claimed.set_user_attr("worker_started", process_started(sleeper.pid))
        budget = Budget(2, None, console=Console(quiet=True))
        assert budget.claimed(study) == 2
        objective = make_objective(load_space(path), "one_round", workdir / "studies", False, budget)
        study.optimize(objective, n_trials=1, catch=(TrialSkipped,))
        skipped = study.get_trials()[-1]
        assert skipped.number == 2 and skipped.state == TrialState.FAIL and "budget" in skipped.user_attrs["skipped"]
        assert "metrics" not in skipped.user_attrs and len(finished(study)) == 1  # not trained, not counted
        assert recover_dead_trials(study) == []  # the live process's trial is left alone
        assert study.get_trials()[1].state == TrialState.RUNNING
        sleeper.kill()  # dead, but not reaped yet: a zombie still answers os.kill(pid, 0)
        deadline = time.monotonic() + TIMEOUT
        while Path(f"/proc/{sleeper.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert recover_dead_trials(study) == [1]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert study.get_trials()[1].state == TrialState.FAIL
    assert study.get_trials()[-1].user_attrs["retry_of"] == 1
    assert recover_dead_trials(study) == []  # re-queued once only


def test_a_recycled_pid_does_not_keep_a_dead_trial_running(write_space):
    """A restarted container's `kronsearch run` often gets the pid of the one that was killed."""
    path = write_space(search={"trials": 2, "save_weights": False})
    run_search(path, trials=1, progress=False)
    (study,) = load_studies(STUDY)
    orphan = study.ask()
    orphan.suggest_float("lambda2", 1e-5, 1e-3, log=True)
    orphan.set_user_attr("worker", worker_id())  # this very pid ...
    orphan.set_user_attr("worker_started", "1")  # ... but another process's start time
    assert recover_dead_trials(study) == [orphan.number]
    run_search(path, progress=False)
    every = assert_no_trial_lost_or_duplicated(2)
    (retry,) = [t for t in every if t.user_attrs.get("retry_of") == orphan.number]
    assert retry.state == TrialState.COMPLETE and retry.params["lambda2"] == orphan.params["lambda2"]


def test_resuming_samples_new_configurations_instead_of_replaying_old_ones(write_space):
    path = write_space(search={"trials": 1, "save_weights": False})
    run_search(path, progress=False)
    run_search(path, trials=2, progress=False)  # a sampler seeded once would draw trial 0's params again
    assert_no_trial_lost_or_duplicated(2)


def test_a_moved_studies_folder_resumes_in_its_new_place(write_space, workdir, monkeypatch):
    old, new = workdir / "old", workdir / "new"
    old.mkdir()
    monkeypatch.chdir(old)
    path = write_space("old/tiny.yaml", search={"trials": 2})
    run_search(path, trials=1, progress=False)
    old.rename(new)
    monkeypatch.chdir(new)
    run_search(new / "tiny.yaml", progress=False)
    assert not old.exists()  # nothing written where the study used to be
    first, second = assert_no_trial_lost_or_duplicated(2)
    assert second.user_attrs["artifact_dir"] == "tiny/one_round/trial-1"  # relative to the storage's folder
    for trial in (first, second):
        assert (new / "studies" / "tiny" / "one_round" / f"trial-{trial.number}" / "model.safetensors").is_file()
    (study,) = load_studies(STUDY)
    assert artifact_dir_candidates(study, first.user_attrs["artifact_dir"])[0] == \
        new / "studies" / "tiny" / "one_round" / "trial-0"


@pytest.mark.parametrize("command", [["show", "tiny"], ["compare", "tiny"], ["plot", "tiny", "--out", "plots"],
                                     ["export", "tiny:one_round", "--out", "best.yaml"]],
                         ids=lambda c: c[0])
def test_a_read_command_never_creates_a_storage(workdir, command):
    result = CliRunner().invoke(app, [*command, "--storage", "sqlite:///typo.db"])
    assert result.exit_code == 2, result.output
    assert "no storage file typo.db" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in workdir.iterdir()) == []


def test_a_read_command_neither_creates_tables_in_nor_changes_an_existing_file(workdir):
    (workdir / "empty.db").write_bytes(b"")
    with pytest.raises(StorageError, match="empty.db"):
        load_studies("tiny", "sqlite:///empty.db")
    assert (workdir / "empty.db").read_bytes() == b""
    assert sorted(p.name for p in workdir.iterdir()) == ["empty.db"]


# ---------------------------------------------------------------------------------------------
# Storage failures: a clear StorageError, nothing already saved lost


def test_an_unwritable_studies_folder_is_a_clear_storage_error(write_space, workdir):
    path = write_space()
    blocked = workdir / "blocked"
    blocked.mkdir()
    blocked.chmod(0o500)
    try:
        studies = blocked / "studies"
        if os.access(blocked, os.W_OK):  # root ignores permissions; a folder under a file fails for anyone
            (workdir / "afile").write_text("not a folder")
            studies = workdir / "afile" / "studies"
        with pytest.raises(StorageError, match="cannot create the studies folder") as err:
            run_search(path, studies_dir=studies, progress=False)
        assert str(studies) in str(err.value)
        assert "Not a directory" in str(err.value) or "Permission denied" in str(err.value)
        if not os.access(blocked, os.W_OK):  # an existing studies folder that is read-only
            with pytest.raises(StorageError, match="unable to open database file; check that its folder exists"):
                run_search(path, studies_dir=blocked, progress=False)
    finally:
        blocked.chmod(0o700)
    assert list(blocked.iterdir()) == []


def test_a_corrupt_storage_file_is_a_clear_error_and_left_untouched(write_space, workdir):
    path = write_space()
    (workdir / "studies").mkdir()
    db = workdir / "studies" / "tiny.db"
    garbage = os.urandom(8192)
    db.write_bytes(garbage)
    with pytest.raises(StorageError, match=r"sqlite:///studies/tiny.db: file is not a database.*move it aside"):
        run_search(path, progress=False)
    with pytest.raises(StorageError, match="file is not a database"):
        run_search(path, fresh=True, progress=False)
    assert db.read_bytes() == garbage
    assert sorted(p.name for p in (workdir / "studies").iterdir()) == ["tiny.db"]


def test_a_storage_url_that_cannot_be_opened_is_a_storage_error(workdir):
    with pytest.raises(StorageError, match="nowhere/x.db: unable to open database file"):
        open_storage(f"sqlite:///{workdir}/nowhere/x.db")


def test_a_full_disk_while_saving_weights_stops_the_run_and_loses_nothing(write_space, workdir, monkeypatch):
    """Choice: a full disk is not the trial's fault and would fail every later trial too, so the run
    stops with a StorageError; the trial is FAIL "interrupted" and re-queued on the next run."""
    path = write_space(search={"trials": 3})
    run_search(path, trials=1, progress=False)
    (first,) = trials()
    saved = digest(Path("studies", first.user_attrs["artifact_dir"]))
    real = trial_module.save_artifacts

    def full_disk(folder: Path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(trial_module, "save_artifacts", full_disk)
    with pytest.raises(StorageError, match="cannot save the trial's weights and metrics .* No space left on device"):
        run_search(path, progress=False)
    kept, cut = trials()
    assert kept.state == TrialState.COMPLETE and digest(Path("studies", kept.user_attrs["artifact_dir"])) == saved
    assert cut.state == TrialState.FAIL and "No space left on device" in cut.user_attrs["interrupted"]

    monkeypatch.setattr(trial_module, "save_artifacts", real)
    run_search(path, progress=False)
    every = assert_no_trial_lost_or_duplicated(3)
    (retry,) = [t for t in every if t.user_attrs.get("retry_of") == cut.number]
    assert retry.params == cut.params
    assert (Path("studies", retry.user_attrs["artifact_dir"]) / "model.safetensors").is_file()
    assert digest(Path("studies", kept.user_attrs["artifact_dir"])) == saved


def test_a_full_disk_in_the_database_prints_one_clean_line_and_the_trial_is_retried(write_space, workdir, python):
    path = write_space(search={"trials": 1, "save_weights": False})
    proc = python(RUN_DISK_FULL)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 1
    assert err.splitlines() == ["error: cannot write to the study storage sqlite:///studies/tiny.db: database or disk "
                                "is full; free some disk space and re-run to resume (finished trials are kept)"]
    (cut,) = trials()
    assert cut.state == TrialState.FAIL and "database or disk is full" in cut.user_attrs["interrupted"]
    run_search(path, progress=False)
    every = assert_no_trial_lost_or_duplicated(1)
    assert every[-1].user_attrs["retry_of"] == cut.number and every[-1].params == cut.params


def test_a_read_only_database_says_what_to_do():
    readonly = sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("attempt to write a readonly "
                                                                                       "database"))
    message = str(storage_error("sqlite:///studies/tiny.db", readonly, "write to"))
    assert message.startswith("cannot write to the study storage sqlite:///studies/tiny.db: attempt to write a "
                              "readonly database; make studies/tiny.db and its folder ")
    assert "writable (e.g. chmod u+w), or run elsewhere with --storage" in message


def test_a_full_disk_as_safetensors_reports_it_is_a_storage_error_and_leaves_no_partial_file(
        write_space, workdir, monkeypatch):
    def full_disk(state):  # what safetensors raises on ENOSPC (seen on a full tmpfs)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(trial_module, "safetensors_bytes", full_disk)
    space = load_space(write_space())
    spec = trial_module.TrialSpec("one_round", 1, 0.0001, candidates={"*": ["2x2", "4x4"]})
    with pytest.raises(StorageError, match="trial-0: Error while serializing: .* No space left on device"):
        trial_module.run_trial(space, spec, workdir / "trial-0")
    assert list((workdir / "trial-0").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Hostile space files: bounded, with errors naming the file and the key


def rejected(path: Path, *fragments: str) -> str:
    with pytest.raises(SpaceError) as err:
        load_space(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message
    assert len(message) < 3000
    return message


def test_too_many_candidate_blocks(write_space):
    blocks = [f"1x{w}" for w in (1, 2, 4, 8, 16, 32, 64)] * 5
    rejected(write_space(space={"blocks": blocks[:MAX_CANDIDATES + 1]}), "space.blocks:",
             f"at most {MAX_CANDIDATES} are allowed")
    rejected(write_space(space={"blocks": {"layers.*": blocks[:MAX_CANDIDATES + 1]}}), "space.blocks.layers.*:")


@pytest.mark.parametrize("key", ["epochs", "finetune_epochs"])
def test_absurd_epoch_counts(write_space, key):
    rejected(write_space(train={key: 10**12}), f"train.{key}: must be an integer in", str(MAX_EPOCHS))


@pytest.mark.parametrize("value", ["1.0e+999", ".inf", ".nan", "-.inf"])
def test_infinite_or_nan_numbers(write_space, value):
    path = write_space(space={"lambda2": 0.0001})
    text = path.read_text(encoding="utf-8")
    assert "lambda2: 0.0001" in text
    path.write_text(text.replace("lambda2: 0.0001", f"lambda2: {value}"), encoding="utf-8")
    rejected(path, "space.lambda2")


def test_an_integer_of_thousands_of_digits(write_space):
    path = write_space()
    path.write_text(path.read_text(encoding="utf-8").replace("seed: 0", "seed: " + "9" * 5000), encoding="utf-8")
    rejected(path, "invalid YAML")


def test_a_yaml_bomb_is_refused_before_it_expands(workdir):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 10)]
    path = workdir / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rejected(path, "aliases (*a0) are not allowed", "line 2")
    merge_key = workdir / "merge.yaml"
    merge_key.write_text("base: &b {epochs: 1}\ntrain:\n  <<: *b\n", encoding="utf-8")
    rejected(merge_key, "aliases")


@pytest.mark.parametrize("nesting", ["flow", "block"])
def test_deeply_nested_documents_are_refused_cleanly(workdir, nesting):
    path = workdir / "deep.yaml"
    depth = 100_000 if nesting == "flow" else 1_000
    if nesting == "flow":
        text = "name: " + "[" * depth + "]" * depth + "\n"
    else:
        text = "".join(" " * i + f"k{i}:\n" for i in range(depth)) + " " * depth + "x: 1\n"
    assert len(text.encode()) <= MAX_FILE_BYTES
    path.write_text(text, encoding="utf-8")
    rejected(path, f"nested more than {MAX_DEPTH} levels deep")


def test_non_utf8_bytes(workdir):
    path = workdir / "binary.yaml"
    path.write_bytes(b"name: tiny\n\xff\xfe\x00garbage")
    rejected(path, "not UTF-8")


def test_a_huge_file_is_not_read(workdir):
    path = workdir / "huge.yaml"
    path.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    rejected(path, f"space files are limited to {MAX_FILE_BYTES} bytes")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_pipe_or_device_is_not_read(workdir):
    """Like /dev/zero (endless) or a FIFO (blocks): only regular files are opened."""
    fifo = workdir / "space.yaml"
    os.mkfifo(fifo)

    def unblock():  # should the pipe be opened after all, answer the open (which waits for a writer)
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # nobody is reading
            return
        os.write(fd, b"name: tiny\n")
        os.close(fd)

    watchdog = threading.Timer(5, unblock)
    watchdog.start()
    try:
        rejected(fifo, "not a regular file")
    finally:
        watchdog.cancel()


def test_a_file_growing_while_read_is_read_only_up_to_the_limit(workdir, monkeypatch):
    path = workdir / "growing.yaml"
    path.write_bytes(b"#" * (MAX_FILE_BYTES + 4096))
    real_stat = Path.stat
    monkeypatch.setattr(Path, "stat", lambda self, **kw: os.stat_result(
        (*real_stat(self, **kw)[:6], 10, *real_stat(self, **kw)[7:])))  # st_size as it was a moment ago
    rejected(path, f"more than {MAX_FILE_BYTES} bytes")


def test_a_huge_model_is_refused_without_being_allocated(write_space):
    rejected(write_space(model={"options": {"hidden": [10**8, 10**8]}}), "model.options", "parameters; at most")


def test_a_huge_synthetic_dataset_is_refused(write_space):
    path = write_space(data={"name": "synthetic", "limit": None, "options": {"n_train": 10**12}},
                       space={"blocks": ["4x4"]})
    rejected(path, "data.options", "at most")


def test_long_hostile_values_are_clipped_in_messages(write_space):
    rejected(write_space(train={"optimizer": "x" * 500_000}), "train.optimizer: must be one of adam")
    rejected(write_space(train={"y" * 500_000: 1}), "train.yyyy")


@pytest.mark.parametrize("text", ["layers: {fc: {block: 2x2, rank: 1000000}}\n",
                                  "layers: &l {fc: {block: 2x2}}\nagain: *l\n",
                                  "layers: {fc: {block: 2x2}}\nlayers: {fc: {block: 1x1}}\n"],
                         ids=["huge-rank", "alias", "repeated-key"])
def test_a_tampered_plan_file_is_refused_with_the_bounds_of_space_files(workdir, text):
    path = workdir / "best.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: ") as err:
        load_plan(path)
    assert re.search(r"rank at most 1024|aliases|given twice", str(err.value))


def test_a_huge_plan_file_is_not_read(workdir):
    path = workdir / "best.yaml"
    path.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ValueError, match=f"plan files are limited to {MAX_FILE_BYTES} bytes"):
        load_plan(path)


def test_kronify_refuses_a_plan_rank_beyond_the_space_file_bound():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    with pytest.raises(ValueError, match="plan layer '0': .* rank at most 1024"):
        kronify(model, {"0": {"block": "2x2", "rank": 1_000_000}})
    assert isinstance(model[0], torch.nn.Linear)


@pytest.mark.parametrize("root", ["missing", "afile"])
def test_data_root_must_be_an_existing_folder(write_space, workdir, root):
    (workdir / "afile").write_text("a file")
    message = rejected(write_space(data={"root": root}), "data.root:", "must be an existing folder")
    assert str(workdir / root) in message


def test_data_root_is_resolved_next_to_the_space_file_and_expands_home(write_space, workdir, monkeypatch):
    (workdir / "sub" / "data").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(workdir / "sub"))
    assert load_space(write_space(data={"root": "~/data"})).data["root"] == str(workdir / "sub" / "data")
    assert load_space(write_space("sub/space.yaml", data={"root": "data"})).data["root"] == str(
        (workdir / "sub" / "data").resolve())


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "..", ".hidden", "/etc/passwd", "x" * 101, "a:b",
                                  "", "nul\x00l", ["list"], "a.db", "b.DB"])
def test_names_that_could_escape_the_studies_folder_are_refused(write_space, name):
    rejected(write_space(name=name), "name: must be a name of letters, digits")


# ---------------------------------------------------------------------------------------------
# Untrusted weights and data are never unpickled


def test_no_unsafe_unpickling_in_the_package():
    """torch.load only with weights_only=True; pickle only through data/cifar.py's restricted unpickler."""
    offenders = []
    for path in sorted((REPO / "kronsearch").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"\btorch\.load\(", text):
            depth, end = 1, match.end()
            while depth and end < len(text):  # to the call's closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            call = text[match.start():end]
            if not re.search(r"\bweights_only\s*=\s*True\b", call):
                offenders.append(f"{path.name}: {call}")
        for match in re.finditer(r"\b(pickle|cPickle|dill|joblib)\.(load|loads|Unpickler)\b|\bnp\.load\(.*allow_pickle"
                                 r"\s*=\s*True|\btorch\.serialization\.load\b", text):
            line = text[:match.start()].count("\n") + 1
            if not (path.name == "cifar.py" and match.group(0) == "pickle.Unpickler"):
                offenders.append(f"{path.name}:{line}: {match.group(0)}")
    assert offenders == []
    cifar_py = (REPO / "kronsearch" / "data" / "cifar.py").read_text(encoding="utf-8")
    assert "class _ArrayUnpickler(pickle.Unpickler)" in cifar_py and "def find_class" in cifar_py
