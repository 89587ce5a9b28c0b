"""A Ray run whose own raylet dies ends within seconds, with one `error:` line, whatever killed the raylet.

SIGTERM: `timeout` and systemd send it to the whole process group (systemd: the whole cgroup), so this run's own
raylet and Ray workers get it too and die at once. Tune's clean-up then waited on the dead raylet
(remove_placement_group) until Ray's core worker gave up after 60 s and ended the process natively with exit 1.
So each SIGTERM also starts a StopDeadline beside the ordinary clean-up (Tune stops its trials, the trials are
marked interrupted, Ray is shut down). When the run's own raylet is gone, or that clean-up takes longer than
GRACE seconds, the deadline does the clean-up itself, without Ray: it marks the running trials interrupted,
stops this run's Ray processes, removes the session folder, prints the one `error:` line the CLI would have
printed and ends the process with exit 143. (A SIGTERM's default action would have ended it at once.)

A raylet that dies without a SIGTERM (`kill -9`, the OOM killer) left Tune waiting forever for the resources of
a node that is gone: the deadline's raylet watch ends the run the same way, with the watcher's "stopped
abruptly" line and exit 1. (Ray used to end the driver natively then, only because the driver owned an object
in the raylet's store; see RayBackend.run.)
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kronsearch.backends.ray_watch import ABRUPT, resume_line, trials_marked
from kronsearch.errors import RUN_INTERRUPTED

GRACE = 20.0  # seconds the ordinary clean-up after a SIGTERM may take (measured: about 3 s on a 2-core machine)
EXIT_TERMINATED = 143
RAYLET_POLL = 0.5  # seconds between two looks at the raylet while the run goes on
SIGTERM_WAIT = 2.0  # seconds a dead raylet waits for this process's SIGTERM handler (the group's signal) to run


class StopDeadline:
    """Started by each SIGTERM (once); `done()` once the ordinary clean-up finished. `abandon(why)` marks the running
    trials interrupted and returns their numbers, `release` removes the session folder; `node` is this run's own
    Ray node (ray._private.node.Node), None for a joined cluster (not this run's to stop)."""

    def __init__(self, abandon: Callable[[str], list[int]], release: Callable[[], None], why: Callable[[], str],
                 grace: float = GRACE) -> None:
        self.abandon, self.release, self.why, self.grace = abandon, release, why, grace
        self.node: Any = None
        self.finished, self.unwatched = threading.Event(), threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._watch, name="kronsearch-sigterm-deadline", daemon=True)
            self.thread.start()

    @contextmanager
    def raylet_watched(self) -> Iterator[None]:
        """Inside, a raylet that dies without a SIGTERM ends the run (exit 1). Leave before Ray is shut down:
        ray.shutdown stops the raylet first, and its other processes may take seconds more."""
        if self.node is not None:
            threading.Thread(target=self._watch_raylet, name="kronsearch-raylet-watch", daemon=True).start()
        try:
            yield
        finally:
            self.unwatched.set()

    def done(self) -> None:
        self.finished.set()

    def raylet_alive(self) -> bool:
        """Whether this run's own raylet still runs (True for a joined cluster)."""
        infos = [] if self.node is None else self.node.all_processes.get("raylet", [])
        return self.node is None or any(info.process.poll() is None for info in infos)

    def _watch(self) -> None:
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and self.raylet_alive():
            if self.finished.wait(0.2):
                return
        if not self.finished.is_set():
            self._end_without_ray(self.why(), lambda marked: f"terminated (SIGTERM): {RUN_INTERRUPTED}",
                                  EXIT_TERMINATED)

    def _watch_raylet(self) -> None:
        while not self.unwatched.wait(RAYLET_POLL) and self.raylet_alive():
            pass
        waited = time.monotonic() + SIGTERM_WAIT
        while self.thread is None and not self.unwatched.is_set() and time.monotonic() < waited:
            time.sleep(0.05)
        if self.thread is None and not self.unwatched.is_set():
            self._end_without_ray(ABRUPT, lambda marked: resume_line(ABRUPT, trials_marked(marked)), 1)

    def _end_without_ray(self, why: str, line: Callable[[list[int]], str], code: int) -> None:
        """Mark the running trials interrupted (`why`), stop this run's Ray, remove the session folder, print the
        `error:` line made from the trials marked, and end the process with `code`."""
        marked: list[int] = []
        try:
            marked = self.abandon(why)
            if self.node is not None:
                self.node.kill_all_processes(check_alive=False, allow_graceful=False)
            self.release()
        except Exception:  # noqa: BLE001 - e.g. the storage failed: the next run re-queues the trials
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed pipe: nothing more can be said
                pass
        try:
            os.write(2, f"error: {line(marked)}\n".encode())
        finally:
            os._exit(code)
