"""examples/ray_trainable.py: the one round in a user's own Ray Tune function trainable, with an Optuna study
of record that `kronsearch show` reads; no Ray process is left behind (issue 22)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.test_ray_backend import command_line, ray_processes

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # a Ray Tune run in a fresh process (about 35 s)

ROOT = Path(__file__).resolve().parents[1]


def test_the_tune_trainable_example_writes_a_study_kronsearch_show_reads(workdir, cli):
    if not Path("/proc").is_dir():
        pytest.skip("the leftover-process check reads /proc")
    before = ray_processes()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, str(ROOT / "examples" / "ray_trainable.py"), "--storage",
                            "sqlite:///tune.db", "--trials", "2"], cwd=workdir, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = run.communicate(timeout=240)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, output[-3000:]
    assert "best val accuracy" in output
    assert not Path(f"/tmp/kr{run.pid}").exists()  # Ray's temp folder, removed

    deadline = time.monotonic() + 15
    while (left := {p for p in ray_processes() - before if f"/tmp/kr{run.pid}" in command_line(p)}) \
            and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not left, f"Ray processes left behind: {sorted(left)}"

    study = optuna.load_study(study_name="ray-trainable", storage="sqlite:///tune.db")
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(set(t.user_attrs) for t in trials)
    result = cli("show", "ray-trainable", "--storage", "sqlite:///tune.db")
    assert result.exit_code == 0, result.output
    assert "2 trials (2 complete)" in result.output
    assert result.output.count(" selected ") == 2 and "pick (cheapest within" in result.output
