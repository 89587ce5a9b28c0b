"""The Ray backend on a local 2-CPU Ray: same study content as the local backend, failures, Ctrl-C.

One Ray session serves the module (starting Ray costs seconds); it is started and stopped by
backends.ray.ray_session, and its teardown checks that no Ray process is left behind.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import ray
import torch
from optuna.trial import TrialState
from rich.console import Console

from kronsearch.backends.ray import check_cluster, check_resources, ray_session
from kronsearch.backends.tune import CRASH_HOOK_ENV, StudySearcher
from kronsearch.record import finished, metrics
from kronsearch.search import run_search
from kronsearch.space import SpaceError, load_space
from kronsearch.storage import load_studies
from tests.conftest import TEST_SESSION_ENV

pytestmark = pytest.mark.xdist_group("ray")  # starts Ray: one worker runs every Ray file (tests/conftest.py)

RAY = {"name": "ray", "max_concurrent": 2, "max_retries": 1, "resources_per_trial": {"cpu": 1, "gpu": 0}}
RAY_WORDS = ("raylet", "gcs_server", "ray::", "kronsearch-ray-")  # in the command lines of Ray's processes
CRASH_SEARCH = "ray-crash"  # the search whose trial 0 kills its worker (see the module fixture)


def command_line(pid: int) -> str:
    """A process's command line ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def started_by_this_test_session(pid: int) -> bool:
    """Whether process `pid` carries this test session's mark (conftest's TEST_SESSION_ENV, inherited by every
    process it starts: Ray's daemons and workers, even once their driver died and they were reparented)."""
    try:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's
        return False
    return f"{TEST_SESSION_ENV}={os.environ[TEST_SESSION_ENV]}".encode() in environment


def ray_processes() -> set[int]:
    """pids of Ray's daemons and workers (raylet, gcs_server, ray::..., kronsearch's session folders) that this test
    session started: another user's Ray on the machine is not this session's to leave behind."""
    return {pid for entry in Path("/proc").iterdir() if entry.name.isdigit() and started_by_this_test_session(
        pid := int(entry.name)) and any(word in command_line(pid) for word in RAY_WORDS)}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local Ray for the module; yields the crash hook's log file (trial 0 of CRASH_SEARCH crashes)."""
    if not Path("/proc").is_dir():
        pytest.skip("the leftover-process check reads /proc")
    assert not ray.is_initialized(), "another test left Ray running"
    before = ray_processes()
    crash_log = tmp_path_factory.mktemp("crash") / "attempts"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CRASH_HOOK_ENV, f"{CRASH_SEARCH}:0:{crash_log}")  # workers inherit Ray's start env
        session = Path(tempfile.mkdtemp(prefix="ksray", dir="/tmp"))  # Ray's socket paths must fit in 107 bytes
        with ray_session(None, session) as started:
            assert started and ray.is_initialized()
            assert ray.cluster_resources()["CPU"] == os.cpu_count()
            assert (session / "ray").is_dir()
            yield crash_log
        shutil.rmtree(session)
    assert not ray.is_initialized()

    deadline = time.monotonic() + 15
    while (left := ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not left, f"Ray processes left behind: {sorted(left)}"


def test_the_left_behind_check_counts_only_processes_this_test_session_started():
    import subprocess
    import sys

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)", "raylet"]  # a command line like Ray's raylet
    foreign = {key: value for key, value in os.environ.items() if key != TEST_SESSION_ENV}
    others, ours = subprocess.Popen(sleeper, env=foreign), subprocess.Popen(sleeper)
    try:
        time.sleep(0.3)
        found = ray_processes()
        assert ours.pid in found and others.pid not in found
    finally:
        for proc in (others, ours):
            proc.kill()
            proc.wait()


def trials_of(study_name: str, storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    (study,) = load_studies(study_name, storage)
    return study.get_trials()


def test_space_is_picklable_for_ray(write_space):
    space = load_space(write_space(backend=RAY))
    assert pickle.loads(pickle.dumps(space)) == space


@pytest.mark.parametrize(("train", "gpu", "message"), [
    ({"device": "cuda"}, 0, "reserve no GPU"),
    ({"device": "cuda:1"}, 1, "numbered from 0"),
    ({}, 1.5, "fraction of one GPU or whole GPUs"),
])
def test_settings_ray_cannot_honor_are_space_errors(write_space, train, gpu, message):
    path = write_space(train=train, backend={**RAY, "resources_per_trial": {"cpu": 1, "gpu": gpu}})
    with pytest.raises(SpaceError, match=message):
        check_resources(load_space(path))


def test_ray_study_matches_the_local_backends(ray_cluster, write_space, workdir):
    # every trial races: which trials share a race depends on which finished first (search.races)
    path = write_space(search={"trials": 3, "races": "per_trial"}, backend=RAY)
    console = Console(record=True, width=200)
    run_search(path, progress=False, console=console)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray workers (cpu: 1), so the numbers match exactly
    try:
        run_search(path, backend="local", progress=False, studies_dir="local-studies")
    finally:
        torch.set_num_threads(threads)
    remote, local = trials_of("tiny:one_round"), trials_of("tiny:one_round", "sqlite:///local-studies/tiny.db")
    assert [t.state for t in remote] == [t.state for t in local] == [TrialState.COMPLETE] * 3
    for r, loc in zip(remote, local, strict=True):
        assert r.params == loc.params
        assert set(r.user_attrs) - {"ray_worker"} == set(loc.user_attrs)
        assert set(r.user_attrs["metrics"]) == set(loc.user_attrs["metrics"])
        assert r.user_attrs["config"] == loc.user_attrs["config"]
        assert r.values == loc.values
        assert r.intermediate_values == loc.intermediate_values  # one report per epoch
        history = json.loads((Path("studies", r.user_attrs["artifact_dir"]) / "history.json").read_text())
        assert list(r.intermediate_values) == [1, 2]  # the race's epoch, then the training's
        assert [r.intermediate_values[e["epoch"]] for e in history] == [e["val_accuracy"] for e in history]
        assert r.user_attrs["worker"].endswith(f":{os.getpid()}")  # the driver owns the trial
        assert not r.user_attrs["ray_worker"].endswith(f":{os.getpid()}")  # a Ray worker trained it
        assert (Path("studies", r.user_attrs["artifact_dir"]) / "model.safetensors").is_file()
    text = console.export_text()
    assert f"ray: cluster with {os.cpu_count()} CPUs, 0 GPUs; up to 2 trials at a time" in text
    assert all(f"trial {n} one_round: val" in text for n in range(3))
    assert sorted(p.name for p in workdir.iterdir()) == ["local-studies", "studies", "tiny.yaml"]  # no Ray files


def test_a_ray_run_prints_a_line_per_epoch_of_each_trial_from_the_workers_reports(ray_cluster, write_space):
    import io

    buffer = io.StringIO()
    run_search(write_space(search={"trials": 1}, backend=RAY),
               console=Console(file=buffer, width=200, color_system=None))
    lines = [line for line in buffer.getvalue().splitlines() if line.startswith("trial 0 epoch")]
    assert [line.split(" (")[0] for line in lines] == ["trial 0 epoch 1/2", "trial 0 epoch 2/2"]
    assert "(select): val 0." in lines[0] and "; racing " in lines[0] and "s left" in lines[0]
    assert "(train): val 0." in lines[1] and "racing" not in lines[1]


@pytest.mark.slow  # about 11 s; CI runs it (-m slow)
def test_twins_of_a_running_trial_wait_for_it_instead_of_training(ray_cluster, write_space):
    run_search(write_space(search={"trials": 3}, space={"lambda2": 0.0005}, backend=RAY), progress=False)
    first, *twins = trials_of("tiny:one_round")
    assert first.state == TrialState.COMPLETE and "duplicate_of" not in first.user_attrs
    for twin in twins:
        assert twin.state == TrialState.COMPLETE and twin.user_attrs["duplicate_of"] == 0
        assert twin.values == first.values and metrics(twin) == metrics(first)


@pytest.mark.slow  # about 20 s; CI runs it (-m slow)
def test_a_diverging_trial_fails_with_its_reason_and_the_study_finishes(ray_cluster, write_space):
    # epochs 3: the factors of a product grow multiplicatively at this lr once the gates stop holding W
    summary = run_search(write_space(train={"optimizer": "sgd", "lr": 1e5, "epochs": 3}, backend=RAY), progress=False)
    trials = trials_of("tiny:one_round")
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert all(t.user_attrs["fail_reason"].startswith("diverged: non-finite loss") for t in trials)
    assert summary.completed == 2


@pytest.mark.slow  # about 25 s; CI runs it (-m slow)
def test_ctrl_c_cancels_requeues_and_the_rerun_resumes(ray_cluster, write_space):
    path = write_space(backend=RAY)

    report = StudySearcher.report

    def ctrl_c_at_the_first_epoch(self, trial_id, result):
        if not self.pruned and not getattr(self, "interrupted", False):
            self.interrupted = True
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: Tune's handler ends fit() without raising
        return report(self, trial_id, result)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(StudySearcher, "report", ctrl_c_at_the_first_epoch)  # both trials are in flight by then
        run_search(path, progress=False)
    (study,) = load_studies("tiny:one_round")
    cut = study.get_trials(states=(TrialState.FAIL,))
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["interrupted"] for t in cut] == ["stopped by Ctrl-C (SIGINT)"] * 2  # as run_local
    assert not any("fail_reason" in t.user_attrs for t in cut)
    assert [t.user_attrs["retry_of"] for t in queued] == [0, 1]
    assert finished(study) == []  # interrupted trials do not count against the budget
    assert ray.is_initialized()  # the module's session is not ours to stop

    summary = run_search(path, progress=False)
    trials = trials_of("tiny:one_round")
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.COMPLETE] * 2
    assert [t.params for t in trials[2:]] == [t.params for t in trials[:2]]
    assert summary.completed == 2


def test_a_trial_no_node_can_hold_is_an_error_on_our_own_ray_and_a_warning_on_a_cluster(ray_cluster, write_space):
    space = load_space(write_space(backend={**RAY, "resources_per_trial": {"cpu": 1, "gpu": 1}}))
    with pytest.raises(SpaceError, match="needs 1 CPUs and 1 GPUs, which no node"):
        check_cluster(space, own=True, console=Console())
    console = Console(record=True, width=300)
    check_cluster(space, own=False, console=console)
    assert "warning:" in console.export_text()
    check_cluster(load_space(write_space(backend=RAY)), own=True, console=Console())  # fits: no error


@pytest.mark.slow  # about 23 s; CI runs it (-m slow)
def test_a_crashing_worker_is_retried_then_its_trial_fails(ray_cluster, write_space):
    # last in the module: the replacement workers start cold (imports cost seconds), so later tests would wait
    path = write_space(name=CRASH_SEARCH, backend={**RAY, "max_retries": 1})
    run_search(path, progress=False)
    crashed, ok = trials_of(f"{CRASH_SEARCH}:one_round")
    assert crashed.state == TrialState.FAIL
    assert crashed.user_attrs["fail_reason"].startswith("worker died (2 attempts): ")
    assert len(set(ray_cluster.read_text().split())) == 2  # two attempts, each in its own process
    assert ok.state == TrialState.COMPLETE
