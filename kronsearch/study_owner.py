"""Whose a study is: kronsearch's or another tool's, and which live runs hold it.

A study is foreign unless kronsearch made it. `kronsearch run` marks each study it creates with the study system
attr "kronsearch" (its version) as soon as Optuna has created it; studies of earlier versions carry kronsearch's
user attrs (space_identity, space_hash, kronsearch_version, artifacts_dir). A study with neither is only taken as
kronsearch's while it is empty (no trial, no user attr): its creator was cut off or is marking it at this very
moment (two runs starting together), and an empty study holds nothing to lose. Any other same-name study is
refused untouched (ForeignStudy): run never writes attrs into it, counts its trials, nor deletes it (--fresh).

A live run holds its study against `--fresh` (StudyHold), through the storage itself, so it holds on every
storage kronsearch takes (a SQLite or journal file, a database server) and from any host: the study system attr
"kronsearch_run:<host>:<pid>" records the process (its start time too, so a recycled pid is not it) and a beat
every HOLD_BEAT seconds, and is marked ended when the run ends. A hold whose process on this host is gone, or whose
beat from another host is older than HOLD_STALE seconds, is stale (a killed run) and holds nothing.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import suppress
from typing import Any

import optuna
from optuna.trial import TrialState

import kronsearch
from kronsearch.processes import process_alive, process_started, worker_alive, worker_id
from kronsearch.storage import StorageError
from kronsearch.storage_files import mask_passwords

MARK = "kronsearch"
HOLD_PREFIX = "kronsearch_run:"
HOLD_BEAT = 10.0  # seconds between a live run's beats
HOLD_STALE = 60.0  # a hold from another host without a beat for this long is a dead run's
KRONSEARCH_USER_ATTRS = ("space_identity", "space_hash", "kronsearch_version", "artifacts_dir")


class ForeignStudy(StorageError):
    """A same-name study that kronsearch did not make; it is left untouched."""


class StudyInUse(StorageError):
    """A study another live process is running cannot be deleted (--fresh)."""


def find_study(storage: optuna.storages.BaseStorage, name: str) -> int | None:
    """The id of study `name` in `storage`, None when there is none."""
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def check_made_by_kronsearch(storage: optuna.storages.BaseStorage, name: str, url: str) -> None:
    """ForeignStudy when the storage holds a study `name` that kronsearch did not make (see the module doc)."""
    study_id = find_study(storage, name)
    if study_id is None:
        return
    system, user = storage.get_study_system_attrs(study_id), storage.get_study_user_attrs(study_id)
    if MARK in system or any(key in user for key in KRONSEARCH_USER_ATTRS):
        return
    trials = len(storage.get_all_trials(study_id, deepcopy=False))
    if trials == 0 and not user:
        return
    raise ForeignStudy(f"study {name!r} in {mask_passwords(url)} was not made by kronsearch "
                       f"({trials} trial{'' if trials == 1 else 's'}"
                       f"{', user attrs ' + ', '.join(sorted(user)[:5]) if user else ''}, none of kronsearch's "
                       f"records); it was left untouched: give the search another name (the space file's name:) or "
                       f"pass another --storage")


def mark_made_by_kronsearch(study: optuna.Study) -> None:
    """The study system attr that says kronsearch made `study` (written once)."""
    storage = study._storage  # noqa: SLF001
    if MARK not in storage.get_study_system_attrs(study._study_id):  # noqa: SLF001
        storage.set_study_system_attr(study._study_id, MARK, kronsearch.__version__)  # noqa: SLF001


def _hold_record(ended: bool = False) -> dict[str, Any]:
    return {"worker": worker_id(), "started": process_started(os.getpid()), "beat": time.time(), "ended": ended}


def hold_alive(hold: object, host: str | None = None, now: float | None = None) -> bool:
    """Whether a hold record belongs to a live run other than this process (see the module doc)."""
    if not isinstance(hold, dict) or hold.get("ended") or not isinstance(hold.get("worker"), str):
        return False
    worker_host, _, pid = hold["worker"].rpartition(":")
    if worker_host == (host or socket.gethostname()) and pid.isdigit():
        if int(pid) == os.getpid() and hold.get("started") == process_started(os.getpid()):
            return False  # this very process: it is the one asking
        if hold.get("started") is not None and process_started(os.getpid()) is not None:
            return process_started(int(pid)) == hold["started"]
        return process_alive(int(pid))
    beat = hold.get("beat")
    return isinstance(beat, (int, float)) and (now or time.time()) - beat < HOLD_STALE


def live_holders(study: optuna.Study) -> list[str]:
    """host:pid of each live run (other than this process) holding `study`."""
    system = study._storage.get_study_system_attrs(study._study_id)  # noqa: SLF001
    return [hold["worker"] for key, hold in sorted(system.items()) if key.startswith(HOLD_PREFIX) and hold_alive(hold)]


def check_not_held(study: optuna.Study) -> None:
    """StudyInUse when a live run holds `study`, or a live process on this host runs one of its trials."""
    holders = live_holders(study)
    if holders:
        raise StudyInUse(f"cannot --fresh study {study.study_name!r}: the run of process {holders[0]} holds it (it is "
                         f"running or resuming it); stop that run first, or resume instead of --fresh")
    # the trials of runs from before holds
    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if worker_alive(t) is True]
    if running:
        worker = running[0].user_attrs.get("worker")
        raise StudyInUse(f"cannot --fresh study {study.study_name!r}: process {worker} is running its trial "
                         f"{running[0].number}; stop that run first (or resume instead of --fresh)")


class StudyHold:
    """Hold `study` for this run (see the module doc): recorded on entry, beaten every HOLD_BEAT seconds from a
    thread, marked ended on exit. A lost beat only brings HOLD_STALE nearer; storage errors are not raised here."""

    def __init__(self, study: optuna.Study) -> None:
        self.study, self.key = study, f"{HOLD_PREFIX}{worker_id()}"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="kronsearch-hold")

    def _write(self, ended: bool = False) -> None:
        self.study._storage.set_study_system_attr(self.study._study_id, self.key, _hold_record(ended))  # noqa: SLF001

    def _beat(self) -> None:
        while not self.stopped.wait(HOLD_BEAT):
            with suppress(Exception):
                self._write()

    def __enter__(self) -> StudyHold:
        self._write()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()
        with suppress(Exception):  # a study deleted meanwhile, or a storage lost: the hold is stale anyway
            self._write(ended=True)
