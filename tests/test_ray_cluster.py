"""Multi-node on one machine: a two-node Ray cluster (ray.cluster_utils.Cluster, 1 CPU per node), a search
joining it through backend.address, trials on both nodes, and nothing left running afterwards.

Which node ran a trial: each node's raylet starts its workers, so a trial's worker process (the "pid" of
its Tune results) descends from one node's raylet. A user Tune callback (backend.callbacks, the way users
attach loggers) records each result's pid while the worker is alive.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from ray import tune

from kronsearch.search import run_search
from kronsearch.storage import load_studies
from tests.test_ray_backend import RAY, command_line, ray_processes

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # a two-node Ray cluster (30 s with its teardown)

RESULTS: list[tuple[int, int]] = []  # (trial number, worker pid) of every reported epoch


class ResultRecorder(tune.Callback):
    """A user callback (backend.callbacks) that keeps each result's trial number and worker pid."""

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        RESULTS.append((result["config"]["number"], parent_raylet(result["pid"])))


def parent_raylet(pid: int) -> int:
    """The pid of the process's nearest ancestor named raylet (0 when there is none)."""
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if "(raylet)" in stat:
            return pid
        pid = int(stat.rpartition(")")[2].split()[1])
    return 0


@pytest.fixture
def two_nodes(monkeypatch: pytest.MonkeyPatch):
    """A head and a second node, each with 1 CPU; yields (address, {raylet pid: node name})."""
    if not Path("/proc").is_dir():
        pytest.skip("the node and leftover-process checks read /proc")
    from ray.cluster_utils import Cluster

    before = ray_processes()
    root = Path(tempfile.mkdtemp(prefix="krc-"))  # short: Ray's socket paths must fit in 107 bytes
    monkeypatch.setenv("RAY_TMPDIR", str(root))  # else Cluster writes /tmp/ray/ray_current_cluster
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                           "temp_dir": str(root / "ray")})
    try:
        second = cluster.add_node(num_cpus=1, temp_dir=str(root / "ray"))
        raylets = {node.all_processes["raylet"][0].process.pid: name
                   for name, node in (("head", cluster.head_node), ("second", second))}
        yield cluster.address, raylets
    finally:
        cluster.shutdown()
        left = left_running(before)
        shutil.rmtree(root, ignore_errors=True)
    assert not left, f"Ray processes left behind: {left}"


def test_a_search_on_a_two_node_cluster_runs_trials_on_both_nodes_and_leaves_nothing_running(
        two_nodes, write_space):
    address, raylets = two_nodes
    RESULTS.clear()
    path = write_space(search={"trials": 3}, backend={**RAY, "callbacks": [f"{__name__}:ResultRecorder"]})
    summary = run_search(path, address=address, progress=False)
    (study,) = load_studies("tiny:one_round")
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3 and summary.completed == 3
    assert {number for number, _ in RESULTS} == {0, 1, 2}  # every trial reported through the user's callback
    assert {raylets.get(raylet) for _, raylet in RESULTS} == {"head", "second"}  # trials ran on both nodes
    deadline = time.monotonic() + 15  # the run's trial actors are gone; the cluster itself stays up
    while (actors := trial_actors()) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not actors, f"trial actors left running on the cluster: {actors}"
    assert not any(p.name.startswith("krs-") or p.name.startswith("run-") for p in Path.cwd().iterdir())


def left_running(before: set[int], seconds: float = 15) -> dict[int, str]:
    """Ray processes started since `before` still alive after up to `seconds` (a worker may take a few to
    exit), with their command lines, so a failing check names what was left."""
    deadline = time.monotonic() + seconds
    while (left := ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.25)
    return {pid: command_line(pid) for pid in sorted(left)}


def trial_actors() -> list[str]:
    """Command lines of live Tune trial actors (ray::ImplicitFunc) on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if command.startswith("ray::ImplicitFunc"):
                found.append(command.strip())
    return found
