"""Where studies live: Optuna storages, study names and trial artifact folders.

A search named N with strategy S is the Optuna study "N:S". By default every study of N is in the
SQLite file studies/N.db under the working directory, which `optuna` and optuna-dashboard open as
sqlite:///studies/N.db; trial artifacts (weights, metrics) go to studies/N/S/trial-<number>/.

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

import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import optuna
import sqlalchemy.exc

STUDIES_DIR = Path("studies")
STRATEGIES = ("one_round", "per_pattern", "hybrid")


class StudyNotFound(LookupError):
    """No such study in the storage; the message says where it looked and what exists."""


def study_name(search: str, strategy: str) -> str:
    """The Optuna study name of one strategy of a search."""
    return f"{search}:{strategy}"


def split_study_name(name: str) -> tuple[str, str | None]:
    """'vit:one_round' -> ('vit', 'one_round'); 'vit' -> ('vit', None)."""
    search, _, strategy = name.partition(":")
    return search, strategy or None


def default_storage_url(search: str, studies_dir: str | os.PathLike = STUDIES_DIR) -> str:
    """sqlite:///studies/<search>.db (relative to the working directory)."""
    return f"sqlite:///{Path(studies_dir) / f'{search}.db'}"


def artifacts_dir(search: str, strategy: str, studies_dir: str | os.PathLike = STUDIES_DIR) -> Path:
    """studies/<search>/<strategy>: trial-<n>/ folders with weights and metrics."""
    return Path(studies_dir) / search / strategy


class StorageError(RuntimeError):
    """A storage that cannot be opened or written (unwritable folder, full disk, corrupt file, bad URL)."""


def storage_error(url: str, err: BaseException, doing: str = "open") -> StorageError:
    """A StorageError naming the storage, the underlying problem and what to do about it."""
    cause = err
    while cause.__cause__ is not None and not isinstance(cause, (OSError, sqlalchemy.exc.DBAPIError)):
        cause = cause.__cause__  # optuna wraps SQLAlchemy errors in StorageInternalError
    if isinstance(cause, sqlalchemy.exc.DBAPIError):
        reason = str(cause.orig)
    elif isinstance(cause, OSError):
        reason = f"{cause.strerror or cause}" + (f": {cause.filename}" if cause.filename else "")
    else:
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    hint = ""
    lowered = reason.lower()
    if "not a database" in lowered or "malformed" in lowered:
        hint = "; the file is corrupt or not an Optuna SQLite file (it was left untouched): move it aside or pass " \
               "another --storage"
    elif "unable to open" in lowered or "permission" in lowered or "read-only" in lowered:
        hint = "; check that its folder exists and is writable"
    elif "full" in lowered or "no space" in lowered:
        hint = "; free some disk space and re-run to resume (finished trials are kept)"
    return StorageError(f"cannot {doing} the study storage {url}: {reason}{hint}")


@contextmanager
def storage_errors(url: str, doing: str = "open") -> Iterator[None]:
    """Turn SQLAlchemy/Optuna storage failures (disk full, unwritable or corrupt file) into StorageError."""
    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
        raise storage_error(url, err, doing) from err


def open_storage(url: str, attempts: int = 5) -> optuna.storages.BaseStorage:
    """An Optuna storage for a URL; SQLite files get a generous lock timeout for concurrent writers.

    Raises StorageError when it cannot be opened.
    """
    for attempt in range(attempts):
        try:
            if url.startswith("sqlite:///"):
                return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
            return optuna.storages.RDBStorage(url) if "://" in url else optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(url))
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as err:
            # another process creating the same new storage's tables at this very moment
            racing = "already exists" in str(err) or "UNIQUE constraint failed" in str(err)
            if not racing or attempt == attempts - 1:
                raise storage_error(url, err) from err
            time.sleep(0.05 * (attempt + 1) + random.random() * 0.05)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, OSError, RuntimeError,
                ImportError) as err:
            raise storage_error(url, err) from err
    raise AssertionError("unreachable")


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


def load_studies(study: str, storage_url: str | None = None) -> list[optuna.Study]:
    """'N:S' -> that study; 'N' -> every study of search N in the storage, in strategy order."""
    url = storage_for(study, storage_url)
    storage = open_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    search, strategy = split_study_name(study)
    wanted = [study] if strategy else [n for n in names if split_study_name(n)[0] == search]
    found = [n for n in wanted if n in names]
    if not found:
        raise StudyNotFound(f"no study {study!r} in {url}; studies there: {', '.join(sorted(names)) or 'none'}")
    order = {s: i for i, s in enumerate(STRATEGIES)}
    found.sort(key=lambda n: order.get(split_study_name(n)[1], len(order)))
    return [optuna.load_study(study_name=n, storage=storage) for n in found]


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file via write(f) into a temp file in the same folder, fsync, then os.replace it into place.

    An existing file at `path` is either fully replaced or left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
