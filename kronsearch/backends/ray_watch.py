"""A watcher beside a Ray driver: when the driver dies without cleaning up, it does the clean-up.

Ray ends its driver natively (a C++ exit, no Python `finally`) when the raylet dies: a `kill -9` of the
raylet, or the OOM killer. A SIGKILL of the driver itself is the same. Without this, the run printed
no `error:` line, its trials stayed RUNNING until the next run, and its session folder stayed behind.

The protocol, over the watcher's stdin (the driver is its only writer):
- `study <storage url> <study name>`: a study this run writes (one line each; tab-separated);
- `sigterm`: the driver got a SIGTERM; its clean-up follows;
- `done`: the session ended normally (its own clean-up ran); the watcher exits quietly.
End of input without `done` means the driver died. The watcher then marks the driver's RUNNING trials
FAIL with user attr "interrupted" (the next run re-queues them, as after any crash), removes the session
folder, and prints one `error:` line on the stderr it shares with the driver: after a `sigterm` the line and
the mark say the run was terminated, as the driver's own clean-up would have (a SIGTERM sent to a whole
cgroup, as systemd sends it, stops the raylet too, and Ray may end the driver before its clean-up ends).

Run as `python -m kronsearch.backends.ray_watch SESSION_FOLDER KEEP`; it imports nothing heavy until the
driver dies, and is in its own session so a Ctrl-C at the terminal does not reach it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

ABRUPT = ("the run stopped abruptly: Ray ended it (its raylet died: killed, or out of memory) or it was killed")
TERMINATED = "terminated (SIGTERM): interrupted; Ray ended the driver before its clean-up"


class DriverWatch:
    """The driver's side: start the watcher, name each study, say `done` at the end of the session."""

    def __init__(self, session: Path, keep: bool) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kronsearch.backends.ray_watch", str(session), "1" if keep else "0"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True, text=True)
        # done() may come twice at once after a SIGTERM: from the run's clean-up and from its stop deadline's thread
        self.lock = threading.Lock()

    def watch(self, storage_url: str, study_name: str) -> None:
        self._send(f"study\t{storage_url}\t{study_name}")

    def terminated(self) -> None:
        """A SIGTERM arrived (called from its handler): should Ray end the driver, the watcher says so."""
        self._send("sigterm")

    def done(self) -> None:
        """The session ended normally: the watcher exits without touching anything. Once; later calls do nothing."""
        assert self.process.stdin is not None  # started with stdin=PIPE
        with self.lock:
            if self.process.stdin.closed:
                return
            self._send("done")
            try:
                self.process.stdin.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None  # started with stdin=PIPE
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError, RuntimeError):  # the watcher is gone, or told `done` already, or a signal
            pass  # handler's write landed inside another write (reentrant): the run goes on without it


def read_driver(stream: IO[str]) -> tuple[list[tuple[str, str]], set[str]]:
    """The studies the driver named and which of `sigterm` and `done` it said, reading until the driver's end."""
    studies, said = [], set()
    for line in stream:
        words = line.rstrip("\n").split("\t")
        if words[0] == "study" and len(words) == 3:
            studies.append((words[1], words[2]))
        elif words[0] in ("sigterm", "done"):
            said.add(words[0])
    return studies, said


def trials_marked(marked: list[int]) -> str:
    """What an `error:` line says of the trials marked interrupted ("" for none)."""
    return f"trials {marked} marked interrupted; " if marked else ""


def resume_line(ending: str, marks: str) -> str:
    """The `error:` line's text after a run that ended without its clean-up (by the watcher or the driver)."""
    return f"{ending}; {marks}re-run the same command to resume"


def clean_up_after(driver_pid: int, studies: list[tuple[str, str]], why: str = ABRUPT) -> list[int]:
    """Mark the RUNNING trials of `driver_pid` (this host) interrupted (`why`); returns their numbers.

    By pid, not by liveness: the dead driver is a zombie until its parent reaps it."""
    from optuna.trial import TrialState

    from kronsearch import record
    from kronsearch.record import TrialRecord
    from kronsearch.storage import load_studies

    worker, marked = f"{socket.gethostname()}:{driver_pid}", []
    for url, name in studies:
        for study in load_studies(name, url):
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if TrialRecord.of(trial).worker == worker and record.interrupt_dead(study, trial, why):
                    marked.append(trial.number)
    return marked


def main() -> None:
    session, keep = Path(sys.argv[1]), sys.argv[2] == "1"
    driver = os.getppid()
    studies, said = read_driver(sys.stdin)
    if "done" in said:
        return
    from kronsearch.errors import STOPPED_BY_SIGTERM

    ending, why = (TERMINATED, STOPPED_BY_SIGTERM) if "sigterm" in said else (ABRUPT, ABRUPT)
    time.sleep(0.5)  # let the dying driver's last writes land
    try:
        marked = clean_up_after(driver, studies, why)
        marks = trials_marked(marked)
    except Exception as err:  # noqa: BLE001 - the storage may be what failed; the next run recovers the trials
        marks = f"its trials could not be marked ({type(err).__name__}: {err}); "
    if not keep:
        shutil.rmtree(session, ignore_errors=True)
    sys.stderr.write(f"error: {resume_line(ending, marks)}\n")


if __name__ == "__main__":
    main()
