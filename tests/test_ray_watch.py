"""The Ray driver's watcher (kronsearch.backends.ray_watch): told `done`, it exits touching nothing, however often and
from however many threads the driver says so (a SIGTERM's clean-up and its stop deadline's thread may both)."""

from __future__ import annotations

import os
import threading

from kronsearch.backends.ray_watch import DriverWatch


def test_done_from_two_threads_at_once_ends_the_watcher_once_and_raises_nothing(tmp_path):
    watch = DriverWatch(tmp_path / "session", keep=True)
    errors: list[BaseException] = []

    def say_done() -> None:
        try:
            watch.done()
        except BaseException as err:  # noqa: BLE001 - what the test looks for
            errors.append(err)

    threads = [threading.Thread(target=say_done) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and watch.process.returncode == 0  # told `done`: it exited without a clean-up


def test_naming_a_study_after_done_is_ignored(tmp_path):
    watch = DriverWatch(tmp_path / "session", keep=True)
    watch.done()
    watch.watch("sqlite:///studies/x.db", "x:one_round")  # the stdin is closed: nothing to tell
    watch.done()
    assert watch.process.returncode == 0


def test_a_driver_ended_after_its_sigterm_gets_the_terminated_line_and_its_trials_stopped_by_sigterm(
        tmp_path, capfd):
    import socket

    import optuna

    url, session = f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "session"
    session.mkdir()
    study = optuna.create_study(study_name="x:one_round", storage=url)
    trial = study.ask()
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # this process is the watcher's driver
    watch = DriverWatch(session, keep=False)
    watch.watch(url, "x:one_round")
    watch.terminated()
    watch.process.stdin.close()  # as when Ray ends the driver natively: no `done`
    watch.process.wait(timeout=60)
    (frozen,) = study.get_trials()
    assert (frozen.state.name, frozen.user_attrs["interrupted"]) == ("FAIL", "stopped by SIGTERM")
    assert capfd.readouterr().err == ("error: terminated (SIGTERM): interrupted; Ray ended the driver before its "
                                      "clean-up; trials [0] marked interrupted; re-run the same command to resume\n")
    assert not session.exists()
