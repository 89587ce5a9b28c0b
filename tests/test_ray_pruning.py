"""Pruning on Ray Tune: trials stopped mid-run by the study's pruner, the same study as the local backend's,
and a run that starts its own Ray leaves no process and no session folder behind (unless
backend.keep_session asks to keep it)."""

from __future__ import annotations

import shutil

import pytest
import torch
from optuna.trial import TrialState
from rich.console import Console

from kronsearch.backends.ray_folders import KEPT, session_root
from kronsearch.record import metrics
from kronsearch.search import run_search
from kronsearch.storage import load_studies
from tests.test_ray_backend import RAY, ray_processes
from tests.test_ray_cluster import left_running

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # each starts a Ray session (16-20 s each)

EPOCHS = 3
# seed 1: trials 4 and 5 fall below the median of the first four at epoch 1 (the pruner's verdicts
# start at epoch max(1, epochs // 3) after 3 complete trials); one trial at a time keeps the order
# (every trial races, so all six are one curve kind: search.races per_rank would split them into two groups)
PRUNING = {"seed": 1, "train": {"epochs": EPOCHS}, "search": {"trials": 6, "pruner": "median", "races": "per_trial"},
           "space": {"ranks": [1, 2]},
           "backend": {**RAY, "max_concurrent": 1}}


@pytest.fixture
def one_thread():
    """As in the Ray workers (cpu: 1), so the local run's numbers match the Ray run's exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ray_prunes_mid_trial_like_the_local_backend_and_leaves_nothing_behind(write_space, workdir, one_thread):
    path = write_space(**PRUNING)
    processes = ray_processes()
    sessions = set(session_root().iterdir()) if session_root().is_dir() else set()
    run_search(path, progress=False)  # starts and stops its own local Ray
    assert left_running(processes) == {}
    assert set(session_root().iterdir()) == sessions  # its session folder is gone
    run_search(path, backend="local", progress=False, studies_dir="local-studies")

    (ray_study,) = load_studies("tiny:one_round")
    (local_study,) = load_studies("tiny:one_round", "sqlite:///local-studies/tiny.db")
    remote, local = ray_study.get_trials(), local_study.get_trials()
    pruned = [t for t in remote if t.state == TrialState.PRUNED]
    assert pruned and all(len(t.intermediate_values) < EPOCHS for t in pruned)  # stopped mid-trial
    assert all(t.user_attrs["fail_reason"].startswith("pruned after epoch ") for t in pruned)
    assert all(t.user_attrs["train_macs_total"] > 0 for t in pruned)  # what it trained before it stopped
    for r, loc in zip(remote, local, strict=True):
        assert (r.number, r.state, r.params, r.values) == (loc.number, loc.state, loc.params, loc.values)
        assert r.intermediate_values == loc.intermediate_values
        assert r.user_attrs.get("fail_reason") == loc.user_attrs.get("fail_reason")
        assert r.user_attrs.get("train_macs_total") == loc.user_attrs.get("train_macs_total")
        timeless = [{k: v for k, v in metrics(t).items() if k != "wall_time"} for t in (r, loc)]
        assert timeless[0] == timeless[1]
    assert sorted(p.name for p in workdir.iterdir()) == ["local-studies", "studies", "tiny.yaml"]  # no Ray files


def test_keep_session_keeps_the_runs_ray_and_tune_folders_and_says_where(write_space):
    path = write_space(search={"trials": 1}, backend={**RAY, "keep_session": True})
    sessions = set(session_root().iterdir()) if session_root().is_dir() else set()
    console = Console(record=True, width=400)
    run_search(path, console=console)
    (kept,) = set(session_root().iterdir()) - sessions
    try:
        assert f"kept in {kept}" in console.export_text()
        assert sorted(p.name for p in kept.iterdir()) == [KEPT, "ray", "tune"]
        assert any((kept / "tune").rglob("result.json"))  # Tune's per-trial results, as its loggers wrote them
    finally:
        shutil.rmtree(kept)
