"""Ctrl-C at awkward moments (issue 23): during the imports of the first seconds, and a second one while the first
is being cleaned up after; each is one `error:` line and exit 130, never a traceback."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.test_reliability import TIMEOUT, python, wait_for  # noqa: F401 - python is a fixture

pytestmark = pytest.mark.xdist_group("ray")  # starts Ray: one worker runs every Ray file (tests/conftest.py)

# `kronsearch run tiny.yaml` whose trial hangs and whose clean-up after Ctrl-C (recording the interrupted
# trial) then takes long, so a second Ctrl-C lands in it.
RUN_SLOW_CLEANUP = """
import sys, time
from pathlib import Path
import kronsearch.backends.local as local
import kronsearch.record as record

real_interrupt = record.interrupt

def run_trial(*args, **kwargs):
    Path("hanging").write_text("1")
    time.sleep(300)

def interrupt(*args, **kwargs):
    real_interrupt(*args, **kwargs)
    Path("cleaning").write_text("1")
    time.sleep(300)

local.run_trial, record.interrupt = run_trial, interrupt
sys.argv = ["kronsearch", "run", "tiny.yaml", "--quiet"]
from kronsearch.__main__ import main
main()
"""


@pytest.mark.parametrize("sent, code, said", [(signal.SIGINT, 130, "error: interrupted"),
                                               (signal.SIGTERM, 143, "error: terminated (SIGTERM)")],
                         ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0])
def test_ctrl_c_or_sigterm_during_the_first_seconds_is_one_line_and_its_exit_code(write_space, python, delay, sent,
                                                                                   code, said):
    write_space(search={"trials": 50})  # still running at the latest signal (two trials had ended by 2 s in CI)
    proc = python("import sys, runpy; sys.argv = ['kronsearch', 'run', 'tiny.yaml', '--quiet']; "
                  "runpy.run_module('kronsearch', run_name='__main__')")
    time.sleep(delay)
    proc.send_signal(sent)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(said), err


# Ctrl-C landing inside a weakref callback (as importlib's module locks have), which Python only prints.
CTRL_C_IN_A_CALLBACK = """
import signal, time, weakref
from kronsearch.__main__ import install_interrupt_handling

class Thing:
    pass

install_interrupt_handling()
thing = Thing()
ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGINT))
try:
    del thing
    for _ in range(100):
        time.sleep(0.1)
    print("went on")
except KeyboardInterrupt:
    print("stopped")
"""


RUN_HANGING_TRIAL = """
import sys, time
from pathlib import Path
import kronsearch.backends.local as local

def run_trial(*args, **kwargs):
    Path("hanging").write_text("1")
    time.sleep(300)

local.run_trial = run_trial
sys.argv = ["kronsearch", "run", "tiny.yaml", "--quiet"]
from kronsearch.__main__ import main
main()
"""


def test_sigterm_while_a_local_trial_trains_marks_it_interrupted_and_exits_143(write_space, workdir, python):
    write_space()
    proc = python(RUN_HANGING_TRIAL)
    wait_for(workdir / "hanging", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143, err
    assert err.strip().startswith("error: terminated (SIGTERM): interrupted; completed trials are saved"), err
    from kronsearch.storage import load_studies

    (study,) = load_studies("tiny:one_round")
    assert [(t.state.name, t.user_attrs.get("interrupted")) for t in study.trials] == [("FAIL", "stopped by SIGTERM")]


def test_ctrl_c_landing_in_a_callback_is_not_lost(python):
    out, err = python(CTRL_C_IN_A_CALLBACK).communicate(timeout=TIMEOUT)
    assert out.strip() == "stopped", (out, err)
    assert "Exception ignored" not in err


def test_ctrl_c_while_the_command_line_is_parsed_is_one_line_and_exit_130(monkeypatch, capsys):
    import sys

    import typer.core

    from kronsearch import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(typer.core.TyperGroup, "make_context", interrupted)
    monkeypatch.setattr(sys, "argv", ["kronsearch", "show", "nothing"])
    with pytest.raises(SystemExit) as exit:
        cli.main()
    assert exit.value.code == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_a_second_ctrl_c_while_stopping_stops_at_once_with_one_line(write_space, workdir, python):
    write_space()
    proc = python(RUN_SLOW_CLEANUP)
    wait_for(workdir / "hanging", proc)
    proc.send_signal(signal.SIGINT)
    wait_for(workdir / "cleaning", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130
    assert err.strip() == "error: interrupted again while stopping; stopped at once (re-run the same command to resume)"


@pytest.fixture
def short_tmp():
    """A short temp folder for Ray (its socket paths must fit in 107 bytes), removed afterwards."""
    folder = Path(f"/tmp/k{os.getpid() % 1000}")  # session paths add ~95 bytes
    folder.mkdir(exist_ok=True)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


RAY_RUN = ("import sys, runpy; sys.argv = ['kronsearch', 'run', 'tiny.yaml', '--quiet']; "
           "runpy.run_module('kronsearch', run_name='__main__')")


def ray_run_with_a_trial_training(write_space, workdir: Path, python, temp: Path, script: str = RAY_RUN):
    """A `kronsearch run` on a local Ray in `temp`, returned 2 s after its first trial started training."""
    import sqlite3

    write_space(train={"epochs": 500}, backend={"name": "ray", "max_concurrent": 1})
    proc = python(script, TMPDIR=str(temp), RAY_AUTH_MODE="disabled")
    deadline = time.monotonic() + TIMEOUT
    while True:  # until a trial trains in a Ray worker
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        try:
            with sqlite3.connect(workdir / "studies" / "tiny.db") as db:
                if db.execute("select count(*) from trials where state = 'RUNNING'").fetchone()[0]:
                    break
        except sqlite3.Error:
            pass
        time.sleep(0.5)
    time.sleep(2)
    return proc


@pytest.mark.slow  # starts Ray in a fresh process, about 21 s; CI runs it (-m slow)
def test_sigterm_to_a_ray_driver_stops_like_ctrl_c_and_exits_143(write_space, workdir, python, short_tmp):
    temp = short_tmp
    proc = ray_run_with_a_trial_training(write_space, workdir, python, temp)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143, err
    assert err.splitlines()[-1].startswith("error: terminated (SIGTERM): interrupted;"), err
    assert "Traceback" not in err and "SIGTERM received" not in err
    from kronsearch.storage import load_studies

    (study,) = load_studies("tiny:one_round")
    assert [t.user_attrs.get("interrupted") for t in study.trials][:1] == ["stopped by SIGTERM"]
    assert list((temp / f"kronsearch-ray-{os.getuid()}").iterdir()) == []  # the session folder is removed


def assert_terminated_cleanly(proc, err: str, temp: Path, trials: int) -> None:
    """Exit 143 with one `error: terminated` line, no stack; the trials interrupted; no session folder left."""
    assert proc.returncode == 143, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: terminated (SIGTERM): interrupted;"), err[-3000:]
    assert "Traceback" not in err and "SIGTERM received" not in err
    from kronsearch.storage import load_studies

    (study,) = load_studies("tiny:one_round")
    started = [t for t in study.trials if t.state.name != "WAITING"]  # an interrupted trial's params, queued again
    interrupted = [(t.state.name, t.user_attrs.get("interrupted")) for t in started]
    assert interrupted == [("FAIL", "stopped by SIGTERM")] * trials
    assert list((temp / f"kronsearch-ray-{os.getuid()}").iterdir()) == []  # the session folder is removed


@pytest.mark.slow  # starts Ray in a fresh process, about 25 s; CI runs it (-m slow)
def test_sigterm_to_a_ray_drivers_whole_process_group_exits_143_at_once(write_space, workdir, python, short_tmp):
    """As `timeout` and systemd send it: Ray's own processes get it too, and the driver finds them gone."""
    proc = ray_run_with_a_trial_training(write_space, workdir, python, short_tmp, "import os; os.setpgrp()\n" + RAY_RUN)
    os.killpg(proc.pid, signal.SIGTERM)
    started = time.monotonic()
    _, err = proc.communicate(timeout=TIMEOUT)
    assert time.monotonic() - started < 20, err[-3000:]  # not Ray's 60 s wait for its GCS
    assert_terminated_cleanly(proc, err, short_tmp, trials=1)


RAY_INIT_SIGNALLED = """
import signal, sys, runpy, time
from pathlib import Path
import ray

real_init = ray.init

def init(*args, **kwargs):
    Path("initializing").write_text("1")
    return real_init(*args, **kwargs)

ray.init = init
""" + RAY_RUN


@pytest.mark.slow  # starts Ray in a fresh process, about 15 s each; CI runs it (-m slow)
@pytest.mark.parametrize("delay", [0.2, 1.5])
def test_sigterm_during_ray_init_is_one_line_and_exit_143(write_space, workdir, python, short_tmp, delay):
    write_space(backend={"name": "ray", "max_concurrent": 1})
    proc = python(RAY_INIT_SIGNALLED, TMPDIR=str(short_tmp), RAY_AUTH_MODE="disabled")
    wait_for(workdir / "initializing", proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert_terminated_cleanly(proc, err, short_tmp, trials=0)


@pytest.mark.slow  # starts Ray in a fresh process, about 31 s; CI runs it (-m slow)
def test_a_killed_raylet_ends_the_run_with_one_error_line_its_trials_interrupted_and_no_session_left(
        write_space, workdir, python, short_tmp):
    import subprocess

    proc = ray_run_with_a_trial_training(write_space, workdir, python, short_tmp)
    subprocess.run(["pkill", "-9", "-f", f"raylet.*{short_tmp}"], check=True)
    _, err = proc.communicate(timeout=TIMEOUT)  # the watcher shares stderr: this waits for it too
    assert proc.returncode != 0
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: the run stopped abruptly: Ray ended it"), err[-3000:]
    assert "trials [0] marked interrupted; re-run the same command to resume" in errors[0]
    from kronsearch.storage import load_studies

    (study,) = load_studies("tiny:one_round")
    started = [t for t in study.trials if t.state.name != "WAITING"]  # an interrupted trial's params, queued again
    assert [t.state.name for t in started] == ["FAIL"]
    assert started[0].user_attrs["interrupted"].startswith("the run stopped abruptly")
    assert list((short_tmp / f"kronsearch-ray-{os.getuid()}").iterdir()) == []


def test_a_ray_run_removes_the_session_folders_of_drivers_that_died(tmp_path):
    import subprocess
    import sys

    from kronsearch.backends.ray_folders import KEPT, sweep_dead_sessions

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    for name in (f"{pid}-000a", f"{pid}-000b", f"{os.getpid()}-0000", "run-1-a"):
        (tmp_path / name / "ray").mkdir(parents=True)
    (tmp_path / f"{pid}-000b" / KEPT).touch()
    assert sweep_dead_sessions(tmp_path) == [tmp_path / f"{pid}-000a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{pid}-000b", f"{os.getpid()}-0000", "run-1-a"])
