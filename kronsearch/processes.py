"""The process that runs a trial: its id (host:pid), its start time, and whether it is still alive.

Every trial stores the process that runs it (user attrs "worker" and "worker_started", written as the
trial starts: storage.OwnedTrialStorage), so a run, or `kronsearch show`, on the same host can tell a
trial cut off by a crash from one a live process is still running. Light on purpose: read commands use it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from optuna.trial import FrozenTrial

from kronsearch import record
from kronsearch.record import TrialRecord


def worker_id() -> str:
    """host:pid of this process, stored on every trial it runs (to detect trials of dead processes)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_attrs() -> dict[str, str]:
    """The user attrs naming this process, written into every trial it starts (storage.OwnedTrialStorage)."""
    started = process_started(os.getpid())
    return record.owner(worker_id(), started)


def process_started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc; None where unknown).

    Stored with a trial's worker as user attr "worker_started", so a recycled pid (a restarted
    container's `kronsearch run` is often pid 1 again) is not mistaken for the trial's process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # fields 3... of proc_pid_stat(5); starttime is field 22
    if len(fields) <= 19 or fields[0] in ("Z", "X"):
        return None  # a zombie is dead too, only not reaped yet
    return fields[19]


def worker_alive(trial: FrozenTrial, host: str | None = None) -> bool | None:
    """Whether the process running `trial` is alive; None when that cannot be told (another host, no worker).

    This process's own pid counts as dead unless the start time says it is this very process: a
    trial is only asked about while this process runs none (recovery) or is excluded by the caller.
    """
    rec = TrialRecord.of(trial)
    worker_host, _, digits = (rec.worker or "").rpartition(":")
    if worker_host != (host or socket.gethostname()) or not digits.isdigit():
        return None
    pid = int(digits)
    if Path("/proc/self/stat").is_file():  # Linux: a pid and its start time identify a process
        started, now = rec.worker_started, process_started(pid)
        return now is not None and (started == now if started is not None else pid != os.getpid())
    return pid != os.getpid() and process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
