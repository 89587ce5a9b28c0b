"""Dead hosts with an RDB storage: Optuna's heartbeat fails a RUNNING trial whose process stopped beating
and retries its configuration once (storage.OwnedTrialStorage, StaleTrialRetry); the pid check cannot
see such a trial, because its process ran on another host."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from kronsearch.record import TrialRecord, finished
from kronsearch.search import run_search
from kronsearch.space import load_space
from kronsearch.storage import load_studies
from kronsearch.study import open_study, recover_dead_trials
from tests.test_ray_backend import RAY, ray_processes
from tests.test_ray_cluster import left_running

pytestmark = pytest.mark.xdist_group("ray")  # starts Ray: one worker runs every Ray file (tests/conftest.py)

# Another host's `kronsearch run` that starts a trial (its first heartbeat included) and is then killed.
OTHER_HOST = """
import socket, sys, time
socket.gethostname = lambda: "elsewhere"  # the trial's process runs on another host: no pid check applies
from pathlib import Path
from kronsearch.backends.base import start_trial
from kronsearch.space import load_space
from kronsearch.study import ask, open_study
space = load_space(sys.argv[1])
Path("studies").mkdir()
study = open_study(space, "one_round", "sqlite:///studies/tiny.db", False, Path("studies"))
trial = ask(study)
start_trial(trial, space, "one_round", None)
print(trial.number, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("backend", [{"name": "local"}, pytest.param(RAY, marks=pytest.mark.slow)])
# on Ray (about 40 s: marked slow, CI runs it) its searcher checks before every ask
def test_a_trial_of_a_killed_process_on_another_host_is_failed_by_its_heartbeat_and_retried_once(write_space, backend):
    path = write_space(backend={**backend, "heartbeat": 1})  # a trial without a beat for 3 s is stale
    other = subprocess.Popen([sys.executable, "-c", OTHER_HOST, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "0"
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    (study,) = load_studies("tiny:one_round")
    (orphan,) = study.get_trials()
    assert orphan.state == TrialState.RUNNING and orphan.user_attrs["worker"].startswith("elsewhere:")
    assert recover_dead_trials(study) == []  # another host's process: the pid check leaves it alone
    time.sleep(4.5)  # past the grace period (SQLite heartbeats have one-second resolution)

    before = ray_processes()
    summary = run_search(path, progress=False)
    assert left_running(before) == {}  # a Ray run stops its own Ray
    dead, retry, new = trials_of_tiny()
    assert dead.state == TrialState.FAIL
    assert TrialRecord.of(dead).interrupted == "no heartbeat for 3 s: its process or host died"
    assert TrialRecord.of(dead).fail_reason is None  # interrupted: not counted against the budget
    assert retry.params == dead.params and retry.system_attrs["failed_trial"] == 0
    assert retry.state == new.state == TrialState.COMPLETE and summary.completed == 2
    assert not retry.user_attrs["worker"].startswith("elsewhere:")  # this run owns the retry

    (study,) = load_studies("tiny:one_round")
    assert recover_dead_trials(study) == []  # retried once: the pid-based recovery does not re-queue it
    assert len(finished(study)) == 2


def test_heartbeat_null_turns_it_off(write_space, workdir):
    space = load_space(write_space(backend={"heartbeat": None}))
    (workdir / "studies").mkdir()
    study = open_study(space, "one_round", "sqlite:///studies/tiny.db", False, workdir / "studies")
    assert study._storage.get_heartbeat_interval() is None  # noqa: SLF001 - pid-based recovery only


def trials_of_tiny() -> list:
    (study,) = load_studies("tiny:one_round")
    return study.get_trials()
