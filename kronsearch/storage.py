"""Where studies live: Optuna storages, study names and trial artifact folders.

A search named N with strategy S is the Optuna study "N:S". By default every study of N is in the
SQLite file studies/N.db under the working directory, which `optuna` and optuna-dashboard open as
sqlite:///studies/N.db; trial artifacts (weights, metrics) go to studies/N/S/trial-<number>/, and the
study records them relative to the storage file's folder (artifact_root), so a moved folder still works.
Trials started by `kronsearch run` carry their process from the moment they start (OwnedTrialStorage).
Read commands open storages with create=False: nothing is created, migrated or written.

Several `kronsearch run` processes may share one SQLite file. It stays in SQLite's default
rollback-journal mode with a 60 s busy timeout: Optuna's writes are short transactions, and Python's
sqlite3 only begins a transaction at the first write, so a writer that finds the file locked waits
for the other's commit instead of failing with "database is locked". WAL mode is not used: it needs
shared memory next to the file (it breaks on network filesystems, where studies often live) and leaves
-wal/-shm files beside the study. Processes that create the same new file at the same moment race in
Optuna's table creation ("table ... already exists"); open_storage retries that. Any failure to open
or use a storage (unwritable folder, full disk, a corrupt or foreign file) is a StorageError that says
which storage; a storage file is never modified or replaced when it cannot be opened.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.storages._rdb import models as rdb_models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState

from kronsearch import record
from kronsearch.layers.errors import BadInput, RunFailure
from kronsearch.record import STRATEGIES, StudyRecord, split_study_name
from kronsearch.snapshot import StudySnapshot
from kronsearch.storage_files import JournalFile, mask_passwords, sqlite_url_problem, storage_file_problem

STUDIES_DIR = Path("studies")


class StudyNotFound(BadInput, LookupError):
    """No such study in the storage; the message says where it looked and what exists."""


def default_storage_url(search: str, studies_dir: str | os.PathLike = STUDIES_DIR) -> str:
    """sqlite:///studies/<search>.db (relative to the working directory)."""
    return f"sqlite:///{Path(studies_dir) / f'{search}.db'}"


def artifacts_dir(search: str, strategy: str, studies_dir: str | os.PathLike = STUDIES_DIR) -> Path:
    """studies/<search>/<strategy>: the trial folders of a study created before they were keyed by storage."""
    return Path(studies_dir) / search / strategy


def artifacts_folder(url: str, search: str, strategy: str) -> str:
    """Where a new study's trial folders go, relative to artifact_root(url), keyed by storage and study so
    two storages in one folder never share them: N/S for the default file N.db, <file name>-artifacts/N/S
    for any other storage file, server-<hash of the URL>/N/S for a database server."""
    file = storage_file(url)
    key = (f"server-{hashlib.sha256(url.encode()).hexdigest()[:12]}/" if file is None
           else "" if file.name == f"{search}.db" else f"{file.name}-artifacts/")
    return f"{key}{search}/{strategy}"


class StorageError(RunFailure):
    """A storage that cannot be opened or written (unwritable folder, full disk, corrupt file, bad URL)."""


def storage_reason(err: BaseException) -> str:
    """The database's or the OS's own words for a storage failure ("database or disk is full")."""
    cause = err
    while cause.__cause__ is not None and not isinstance(cause, (OSError, sqlalchemy.exc.DBAPIError)):
        cause = cause.__cause__  # optuna wraps SQLAlchemy errors in StorageInternalError
    if isinstance(cause, sqlalchemy.exc.DBAPIError):
        return str(cause.orig)
    if isinstance(cause, OSError):
        return f"{cause.strerror or cause}" + (f": {cause.filename}" if cause.filename else "")
    return str(cause).splitlines()[0] if str(cause) else type(cause).__name__


def storage_error(url: str, err: BaseException, doing: str = "open") -> StorageError:
    """A StorageError naming the storage, the underlying problem and what to do about it."""
    reason = storage_reason(err)
    hint = ""
    lowered = reason.lower()
    if "not a database" in lowered or "malformed" in lowered:
        hint = "; the file is corrupt or not an Optuna SQLite file (it was left untouched): move it aside or pass " \
               "another --storage"
    elif "readonly" in lowered:  # SQLite writes a journal next to the file: both must be writable
        file = storage_file(url)
        where = f"{file} and its folder {file.parent.resolve()}" if file is not None else "the database"
        hint = (f"; make {where} writable (e.g. chmod u+w), or run elsewhere with --storage pointing to a writable "
                f"place; nothing saved was changed")
    elif "unable to open" in lowered or "permission" in lowered or "read-only" in lowered:
        hint = "; check that its folder exists and is writable"
    elif "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered):
        hint = ("; the database has no Optuna tables, so no search was ever run there: check the URL, or run "
                "`kronsearch run` first (nothing was created)")
    elif "full" in lowered or "no space" in lowered:
        hint = "; free some disk space and re-run to resume (finished trials are kept)"
    return StorageError(mask_passwords(f"cannot {doing} the study storage {url}: {reason}{hint}"))


@contextmanager
def storage_errors(url: str, doing: str = "open") -> Iterator[None]:
    """Turn SQLAlchemy/Optuna storage failures (disk full, unwritable or corrupt file) into StorageError."""
    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
        raise storage_error(url, err, doing) from err


class OwnedTrialStorage(optuna.storages.RDBStorage):
    """An RDBStorage in which every trial this process starts carries `owner` (user attrs, e.g. the
    process's host:pid) from the very transaction that starts it: a new trial (study.ask) and a queued
    one (enqueue_trial, then ask) alike. So no RUNNING trial ever lacks its owner, wherever the process
    is killed (see study.recover_dead_trials). Taking a queued trial relies on RDBStorage's session
    helpers (Optuna 4 and 5); test_reliability checks both paths.

    With `heartbeat` seconds, it is also Optuna's heartbeat storage: every running trial gets a
    heartbeat (study.optimize beats by itself; the Ray backend through study.Heartbeats), and a RUNNING
    trial without one for 3 x `heartbeat` seconds (its process or host died) is failed by
    optuna.storages.fail_stale_trials, marked interrupted and its configuration retried once
    (StaleTrialRetry). This recovers trials of other hosts, which the pid check cannot see.
    """

    def __init__(self, url: str, owner: dict[str, Any], heartbeat: int | None = None, **kwargs: Any) -> None:
        if heartbeat is not None:
            kwargs.update(heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                          heartbeat_stale_trial_callback=StaleTrialRetry())
        with warnings.catch_warnings():  # heartbeat_interval is an ExperimentalWarning in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(url, **kwargs)
        self.owner = owner

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """The trials optuna.storages.fail_stale_trials is about to fail, each marked interrupted first
        (record.interrupt_stale) while it can still be written; one another process failed meanwhile is left out."""
        stale = []
        for trial_id in super()._get_stale_trial_ids(study_id):
            try:
                record.interrupt_stale(self, trial_id,
                                       f"no heartbeat for {self.grace_period} s: its process or host died")
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            stale.append(trial_id)
        return stale

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        return super()._create_new_trial(study_id, template_trial or _owned_trial(self.owner))

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        if state != TrialState.RUNNING:
            return super().set_trial_state_values(trial_id, state, values)
        try:  # a queued trial taken by study.ask(): WAITING -> RUNNING and the owner in one transaction
            with _create_scoped_session(self.scoped_session) as session:
                trial = rdb_models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
                self.check_trial_is_updatable(trial_id, trial.state)
                if trial.state != TrialState.WAITING:
                    return False
                trial.state, trial.datetime_start = TrialState.RUNNING, datetime.now()
                for key, value in self.owner.items():
                    self._set_trial_attr_without_commit(session, rdb_models.TrialUserAttributeModel, trial_id, key,
                                                        value)
        except sqlalchemy.exc.IntegrityError:
            return False
        return True


class StaleTrialRetry:
    """Optuna's heartbeat_stale_trial_callback: retry a stale trial's configuration once
    (RetryHeartbeatStaleTrialCallback, whose retry carries the "failed_trial" system attr read by
    record.retried_numbers), without the interrupted mark the stale trial got (record.retry_template)."""

    def __init__(self) -> None:
        with warnings.catch_warnings():  # experimental in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.retry(study, record.retry_template(trial))


class OwnedTrialJournalStorage(optuna.storages.JournalStorage):
    """A journal-file storage whose new trials carry `owner` from the log entry that creates them. A
    queued trial is tagged by the next entries, just after it starts (a journal entry holds one change)."""

    def __init__(self, backend: optuna.storages.journal.BaseJournalBackend, owner: dict[str, Any]) -> None:
        super().__init__(backend)
        self.owner = owner

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return super().create_new_trial(study_id, template_trial or _owned_trial(self.owner))

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        started = super().set_trial_state_values(trial_id, state, values)
        if started and state == TrialState.RUNNING:
            for key, value in self.owner.items():
                self.set_trial_user_attr(trial_id, key, value)
        return started


def _owned_trial(owner: dict[str, Any]) -> FrozenTrial:
    """The template of a new RUNNING trial that carries its owner's user attrs."""
    return FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
                       datetime_complete=None, params={}, distributions={}, user_attrs=dict(owner), system_attrs={},
                       intermediate_values={}, trial_id=-1)


def artifact_root(url: str, studies_dir: str | os.PathLike = STUDIES_DIR) -> Path:
    """The folder trial artifact paths are stored relative to: the folder of the storage file (SQLite
    or journal), so a moved studies folder keeps working; studies_dir for a database server."""
    path = storage_file(url)
    return (Path(studies_dir) if path is None else path.parent).resolve()  # resolved now: the cwd may change


def storage_file(url: str) -> Path | None:
    """The file of a SQLite URL or a journal file path; None for a database server or :memory:."""
    if "://" not in url:
        return Path(url)
    if not url.startswith("sqlite:"):
        return None
    try:
        database = sqlalchemy.engine.make_url(url).database
    except sqlalchemy.exc.ArgumentError:
        return None
    return Path(database) if database and database != ":memory:" else None


def open_storage(url: str, attempts: int = 5, *, owner: dict[str, Any] | None = None,
                 create: bool = True, heartbeat: int | None = None) -> optuna.storages.BaseStorage:
    """An Optuna storage for a URL; SQLite files get a generous lock timeout for concurrent writers.

    owner: user attrs written atomically into every trial this process starts (OwnedTrialStorage).
    heartbeat: seconds between Optuna heartbeats of an RDB storage with an owner (OwnedTrialStorage);
    a journal file has no heartbeat (its trials of dead processes are found by pid only).
    create=False (show, compare, export, plot): an existing storage only. A missing file is StudyNotFound
    and is not created (SQLite's mode=rw), no table is created, and the schema is never migrated.
    Raises StorageError when it cannot be opened.
    """
    if url.startswith("sqlite:") and (problem := sqlite_url_problem(url)):
        raise BadInput(problem)
    file = storage_file(url)
    if file is not None and (problem := storage_file_problem(url, file)):  # a foreign or corrupt file: untouched
        raise storage_error(url, RuntimeError(problem))
    if not create and file is not None and not file.is_file():
        given = f" ({mask_passwords(url)})" if url != str(file) else ""
        raise StudyNotFound(f"no storage file {file}{given}; nothing was created. Check the path, or run "
                            f"`kronsearch run` first")
    for attempt in range(attempts):
        try:
            storage = _open(url, file, owner, create, heartbeat)
            storage.kronsearch_root, storage.kronsearch_url = artifact_root(url), url  # type: ignore[attr-defined]
            return storage
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as err:
            # another process creating the same new storage's tables at this very moment (PostgreSQL: a
            # ProgrammingError 'relation ... already exists', or a duplicate key in its catalog)
            racing = any(words in str(err) for words in ("already exists", "UNIQUE constraint failed", "duplicate key"))
            if not racing or not create or attempt == attempts - 1:
                raise storage_error(url, err) from err
            time.sleep(0.05 * (attempt + 1) + random.random() * 0.05)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, OSError, RuntimeError,
                ImportError) as err:
            raise storage_error(url, err) from err
    raise AssertionError("unreachable")


def _open(url: str, file: Path | None, owner: dict[str, Any] | None, create: bool,
          heartbeat: int | None) -> optuna.storages.BaseStorage:
    if "://" not in url:
        backend = JournalFile(url)
        return (OwnedTrialJournalStorage(backend, owner) if owner is not None
                else optuna.storages.JournalStorage(backend))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:") and file is not None:
        engine_kwargs["connect_args"] = {"timeout": 60}
        if not create:  # sqlite3 would create a missing file (say, one deleted since the check above)
            uri = f"{file.resolve().as_uri()}?mode=rw"
            engine_kwargs["creator"] = lambda: sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False)
    if not create:
        return optuna.storages.RDBStorage(url, engine_kwargs, skip_table_creation=True)
    if owner is not None:
        return OwnedTrialStorage(url, owner, heartbeat, engine_kwargs=engine_kwargs)
    return optuna.storages.RDBStorage(url, engine_kwargs)


def _opened_as(study: optuna.Study, attr: str, default: Any) -> Any:
    """What open_storage noted on the storage `study` was opened from (optuna wraps RDB storages in a cache)."""
    storage = getattr(study._storage, "_backend", study._storage)  # noqa: SLF001
    return getattr(storage, attr, getattr(study._storage, attr, default))  # noqa: SLF001


def study_artifacts_root(study: optuna.Study) -> Path:
    """The root set on the study (StudySnapshot: --artifacts, or the one it recorded), else its storage's."""
    return getattr(study, "kronsearch_artifacts_root", None) or _opened_as(study, "kronsearch_root", STUDIES_DIR)


def study_storage_url(study: optuna.Study) -> str | None:
    """The URL `study` was opened from by open_storage (None for a study opened otherwise)."""
    return _opened_as(study, "kronsearch_url", None)


def study_artifacts_dir(study: optuna.Study) -> Path:
    """Where this study's trial folders go now: the folder it recorded when it was created (see
    artifacts_folder) under its artifact root; <artifact root>/<search>/<strategy> for older studies."""
    return recorded_artifacts_dir(study_artifacts_root(study), study.study_name, StudyRecord.of(study).artifacts_dir)


def recorded_artifacts_dir(root: Path, name: str, recorded: object) -> Path:
    """The trial folders of study `name` whose "artifacts_dir" user attr is `recorded`: that folder under `root` when it
    names one strictly below it (a relative path of plain names: never '', '.', '..', absolute or not a string, as a
    corrupt or received storage may hold), else <root>/<search>/<strategy>."""
    if isinstance(recorded, str) and "\0" not in recorded:
        path = Path(recorded)
        if path.parts and not path.is_absolute() and not {".", ".."} & set(path.parts):
            return root / path
    search, strategy = split_study_name(name)
    return artifacts_dir(search, strategy or "", root)


def artifact_dir_record(study: optuna.Study, number: int) -> str:
    """A trial's "artifact_dir" user attr: its folder relative to the artifact root."""
    return (study_artifacts_dir(study) / f"trial-{number}").relative_to(study_artifacts_root(study)).as_posix()


def artifact_dir_candidates(study: optuna.Study, recorded: str | None) -> list[Path]:
    """Where a trial's folder may be, best first: the recorded path under the study's artifact root
    (an absolute path, as kronsearch 0.1 stored, as is), then that folder's name under the study's
    artifacts folder (a study moved since it was written)."""
    if not recorded:
        return []
    path = Path(recorded)
    found = [path if path.is_absolute() else study_artifacts_root(study) / path]
    moved = study_artifacts_dir(study) / path.name
    return found + ([moved] if moved != found[0] else [])


def storage_for(study: str, storage_url: str | None) -> str:
    """The storage URL to read `study` from: the one given, or the default file, which must exist."""
    if storage_url:
        return storage_url
    search, _ = split_study_name(study)
    path = STUDIES_DIR / f"{search}.db"
    if not path.is_file():
        raise StudyNotFound(f"no study {study!r}: {path} does not exist (run `kronsearch run` first, "
                            f"or pass --storage URL for a study stored elsewhere)")
    return default_storage_url(search)


def load_studies(study: str, storage_url: str | None = None,
                 artifacts: str | os.PathLike | None = None) -> list[optuna.Study]:
    """'N:S' -> that study; 'N' -> every study of search N, in strategy order, each read once (snapshot.py)."""
    url = storage_for(study, storage_url)
    storage = open_storage(url, create=False)
    names = [s.study_name for s in storage.get_all_studies()]  # not get_all_study_summaries: it reads every trial
    search, strategy = split_study_name(study)
    wanted = [study] if strategy else [n for n in names if split_study_name(n)[0] == search]
    found = [n for n in wanted if n in names]
    if not found:
        raise StudyNotFound(f"no study {study!r} in {mask_passwords(url)}; studies there: "
                            f"{', '.join(sorted(names)) or 'none'}")
    order = {s: i for i, s in enumerate(STRATEGIES)}
    found.sort(key=lambda n: order.get(split_study_name(n)[1] or "", len(order)))
    return [StudySnapshot(n, storage, artifacts) for n in found]  # each read once (snapshot.py)
