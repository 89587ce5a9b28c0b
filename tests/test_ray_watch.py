"""The Ray driver's watcher (kronsearch.backends.ray_watch): told `done`, it exits touching nothing, however often and
from however many threads the driver says so (a SIGTERM's clean-up and its stop deadline's thread may both)."""

from __future__ import annotations

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
