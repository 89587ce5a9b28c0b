"""A live run holds its study against --fresh (issue 31 item 3), through a study system attr every storage keeps:
between two trials as much as during one, on any storage, and a killed run's hold is stale."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from pathlib import Path

import pytest

from kronsearch.processes import process_started, worker_id
from kronsearch.search import run_search
from kronsearch.storage import load_studies
from kronsearch.study_owner import HOLD_PREFIX, HOLD_STALE, StudyInUse, hold_alive, live_holders
from tests.test_reliability import TIMEOUT, python, wait_for  # noqa: F401 - python is a fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# `kronsearch run tiny.yaml [--storage URL]` that stops between trials: after trial 0 is recorded COMPLETE, the
# budget callback writes "between" and sleeps, so no trial of it is RUNNING.
RUN_BETWEEN_TRIALS = """
import os, sys, time
from pathlib import Path
from kronsearch.backends.base import Budget
from kronsearch.cli import main

real = Budget.__call__

def paused(self, study, trial):
    real(self, study, trial)
    if trial.number == 0:
        Path("between").write_text(str(os.getpid()))
        time.sleep(float(os.environ.get("PAUSE", "300")))

Budget.__call__ = paused
sys.argv = ["kronsearch", "run", "tiny.yaml", "--quiet", *sys.argv[1:]]
main()
"""


def holds(url: str | None = None) -> dict:
    (study,) = load_studies("tiny:one_round", url)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return {k: v for k, v in attrs.items() if k.startswith(HOLD_PREFIX)}


@pytest.mark.parametrize("url", [None, "studies/tiny.log"], ids=["sqlite", "journal"])
def test_fresh_is_refused_between_two_trials_of_a_live_run_which_then_keeps_its_budget(write_space, workdir, python,
                                                                                        url):
    path = write_space(search={"trials": 2})
    Path("studies").mkdir()
    storage = ["--storage", url] if url else []
    proc = python(RUN_BETWEEN_TRIALS.replace("*sys.argv[1:]", repr(storage)[1:-1]), PAUSE="6")
    wait_for(workdir / "between", proc)
    (study,) = load_studies("tiny:one_round", url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"]  # nothing RUNNING: only the hold says it is live
    for _ in range(3):
        with pytest.raises(StudyInUse, match=f"process .*:{proc.pid} holds it"):
            run_search(path, storage=url, fresh=True, trials=1, progress=False)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    (study,) = load_studies("tiny:one_round", url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert [hold["ended"] for hold in holds(url).values()] == [True]  # the run let go as it ended
    run_search(path, storage=url, fresh=True, trials=1, progress=False)  # and --fresh now goes through
    (study,) = load_studies("tiny:one_round", url)
    assert len(study.trials) == 1


def test_a_killed_runs_hold_is_stale_and_fresh_goes_through(write_space, workdir, python):
    path = write_space(search={"trials": 2})
    proc = python(RUN_BETWEEN_TRIALS.replace("*sys.argv[1:]", ""))
    wait_for(workdir / "between", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    assert [hold["ended"] for hold in holds().values()] == [False]  # left as it was when the run was killed
    run_search(path, fresh=True, trials=1, progress=False)
    (study,) = load_studies("tiny:one_round")
    assert len(study.trials) == 1


def hold(worker: str, started: str | None = None, age: float = 0.0, ended: bool = False) -> dict:
    return {"worker": worker, "started": started, "beat": time.time() - age, "ended": ended}


def test_a_hold_from_another_host_lives_while_it_beats():
    assert hold_alive(hold("other-host:1", age=5))
    assert not hold_alive(hold("other-host:1", age=HOLD_STALE + 1))
    assert not hold_alive(hold("other-host:1", ended=True))


def test_a_hold_on_this_host_lives_while_its_process_does():
    host, me = socket.gethostname(), os.getpid()
    assert not hold_alive(hold(worker_id(), process_started(me)))  # this process never holds against itself
    assert hold_alive(hold(f"{host}:{os.getppid()}", process_started(os.getppid()), age=10 * HOLD_STALE))
    if process_started(me) is not None:  # a recycled pid: the same number, another start time
        assert not hold_alive(hold(f"{host}:{os.getppid()}", "1"))
    assert not hold_alive(hold(f"{host}:{2**22 + 7}", "1"))  # no such process
    for junk in (None, "x", {"worker": 5}, {"beat": time.time()}):
        assert not hold_alive(junk)


@pytest.mark.slow  # about 40 s; CI runs it (-m slow)
def test_fresh_fuzz_at_random_moments_of_a_live_run_never_takes_its_study(write_space, workdir, python):
    """`--fresh` tried at seeded random moments while another process runs the study, from the moment it holds it
    to its end: each try is refused, and the run finishes its whole budget."""
    path = write_space(search={"trials": 3})
    rng = random.Random(0)
    proc = python(RUN_BETWEEN_TRIALS.replace("*sys.argv[1:]", ""), PAUSE="2")
    deadline = time.monotonic() + TIMEOUT
    while not Path("studies/tiny.db").exists() or not _held():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    tries, went_through = 0, False
    while proc.poll() is None and not went_through:
        time.sleep(rng.uniform(0, 1))
        try:
            run_search(path, fresh=True, trials=1, progress=False)
        except StudyInUse:
            tries += 1
        else:  # only once the run let go of the study, its summary made: in the last moments of its process
            went_through = True
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0 and "3 trials finished" in out, (out, err)
    assert tries >= 3
    (study,) = load_studies("tiny:one_round")
    assert len(study.trials) == (1 if went_through else 3)


def _held() -> bool:
    try:
        (study,) = load_studies("tiny:one_round")
    except Exception:  # noqa: BLE001 - not created yet
        return False
    return bool(live_holders(study))
