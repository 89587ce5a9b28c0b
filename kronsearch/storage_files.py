"""What is in a storage file, checked before anything writes to it, and a journal file that survives a torn entry.

A file given as a storage must already be one of its kind, or empty: a SQLite database of another
application gains no Optuna tables (one whose tables are all Optuna's is Optuna's, created in part: Optuna creates
its tables one commit each, so another process starting on the same new file, or one killed while creating it, leaves
some of them, and Optuna completes them), a SQLite file given as a journal path is not read as text, and a
text file that is no journal is not appended to (storage.open_storage refuses them with the problem
found here). A journal entry is one line written under the file's lock; a writer killed mid-line leaves
a torn last line, which readers skip but an append would glue onto the next entry: JournalFile drops it
first.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file

SQLITE_MAGIC = b"SQLite format 3\x00"
OPTUNA_TABLES = {  # optuna.storages._rdb.models' tables and alembic's (Optuna 4), read from a new study's file
    "alembic_version", "studies", "study_directions", "study_system_attributes", "study_user_attributes",
    "trial_heartbeats", "trial_intermediate_values", "trial_params", "trial_system_attributes",
    "trial_user_attributes", "trial_values", "trials", "version_info"}


def is_sqlite(path: str | os.PathLike) -> bool:
    """Whether `path` is an existing file that starts as a SQLite database does."""
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def storage_file_problem(url: str, file: Path) -> str | None:
    """Why `file` (the file of storage `url`) cannot be used as that storage, or None: a missing or empty file,
    an Optuna SQLite database and an Optuna journal are fine."""
    if not file.is_file() or file.stat().st_size == 0:
        return None
    if "://" not in url:  # a journal file
        if is_sqlite(file):
            return f"it is a SQLite database, not a journal file: give it as sqlite:///{file}"
        with open(file, "rb") as f:
            first = f.readline(1 << 20)
        try:
            entry = json.loads(first)
        except ValueError:
            entry = None
        return None if isinstance(entry, dict) and "op_code" in entry else \
            "it is not an Optuna journal file (its first line is no journal entry)"
    if not is_sqlite(file):
        return "file is not a database"  # SQLite's own words, so storage_error adds its hint
    try:
        tables = sqlite_tables(file, "ro")
    except sqlite3.Error as err:
        if getattr(err, "sqlite_errorname", "") != "SQLITE_READONLY_ROLLBACK":
            return str(err)  # a corrupt file ("database disk image is malformed")
        try:  # a hot journal: a writer was killed mid-transaction, and only a writable connection rolls it back
            tables = sqlite_tables(file, "rw")
        except sqlite3.Error as err:  # the file or its folder is read-only: storage_error adds the chmod hint
            return str(err)
    foreign = tables - OPTUNA_TABLES
    if foreign and not {"studies", "trials", "version_info"} <= tables:  # not Optuna's, nor shared with Optuna
        return (f"it is a database of another application (tables: {', '.join(sorted(foreign)[:8])}), not an Optuna "
                f"storage; it was left untouched: pass another --storage")
    return None


def sqlite_tables(file: Path, mode: str) -> set[str]:
    """The table names of SQLite database `file`, opened in `mode` ("ro", or "rw", which rolls back a hot journal)."""
    connection = sqlite3.connect(f"{file.resolve().as_uri()}?mode={mode}", uri=True)
    try:
        return {row[0] for row in connection.execute("select name from sqlite_master where type = 'table'")}
    finally:
        connection.close()


class JournalFile(JournalFileBackend):
    """A journal file whose appends first drop a torn last line (see the module doc)."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with get_lock_file(self._lock):
            drop_torn_tail(self._file_path)
        super().append_logs(logs)


def drop_torn_tail(path: str | os.PathLike) -> None:
    """Cut a file back to its last newline (an entry its writer never finished); nothing if it ends with one."""
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            start = max(0, position - 4096)
            f.seek(start)
            chunk = f.read(position - start)
            if position == end and chunk.endswith(b"\n"):
                return
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                f.truncate(start + newline + 1)
                return
            position = start
        f.truncate(0)
