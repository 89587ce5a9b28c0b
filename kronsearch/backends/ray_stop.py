"""SIGTERM on a Ray run ends it within seconds with exit 143, whatever else the signal reached.

`timeout` and systemd send SIGTERM to the whole process group (systemd: the whole cgroup), so this run's own
raylet and Ray workers get it too and die at once. Tune's clean-up then waited on the dead raylet
(remove_placement_group) until Ray's core worker gave up after 60 s and ended the process natively with exit 1.
So each SIGTERM also starts a StopDeadline beside the ordinary clean-up (Tune stops its trials, the trials are
marked interrupted, Ray is shut down). When the run's own raylet is gone, or that clean-up takes longer than
GRACE seconds, the deadline does the clean-up itself, without Ray: it marks the running trials interrupted,
stops this run's Ray processes, removes the session folder, prints the one `error:` line the CLI would have
printed and ends the process with exit 143. (A SIGTERM's default action would have ended it at once.)
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from kronsearch.errors import RUN_INTERRUPTED

GRACE = 20.0  # seconds the ordinary clean-up after a SIGTERM may take (measured: about 3 s on a 2-core machine)
EXIT_TERMINATED = 143


class StopDeadline:
    """Started by each SIGTERM (once); `done()` once the ordinary clean-up finished. `abandon` marks the running
    trials interrupted, `release` removes the session folder; `node` is this run's own Ray node
    (ray._private.node.Node), None for a joined cluster (not this run's to stop)."""

    def __init__(self, abandon: Callable[[], None], release: Callable[[], None], grace: float = GRACE) -> None:
        self.abandon, self.release, self.grace = abandon, release, grace
        self.node: Any = None
        self.finished = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._watch, name="kronsearch-sigterm-deadline", daemon=True)
            self.thread.start()

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
        if self.finished.is_set():
            return
        try:
            self.abandon()
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
            os.write(2, f"error: terminated (SIGTERM): {RUN_INTERRUPTED}\n".encode())
        finally:
            os._exit(EXIT_TERMINATED)
