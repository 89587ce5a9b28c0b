"""What is in a storage file, checked before anything writes to it, and a journal file that survives a torn entry.

A file given as a storage must already be one of its kind, or empty. A SQLite database is foreign unless Optuna
made it: Optuna's version tables (version_info, alembic_version) are there, with Optuna's columns (tables of
another application may share such a file, beside Optuna's studies and trials). Only one file without them is
Optuna's: its creation cut off (Optuna creates its tables one commit each, so a process killed while creating the
file, or another starting on it at that very moment, finds some of them), which shows as tables that are all
Optuna's, each with exactly the columns, types and keys Optuna's models give it, and all empty; Optuna completes
them. Anything else (an application's `studies` or `trials` table) is refused with its bytes unchanged. A SQLite
file given as a journal path is not read as text, and a text file that is no journal is not appended to
(storage.open_storage refuses them with the problem found here). SQLite URI filenames (file:...?uri=true,
mode=memory) are refused: an in-memory database keeps nothing, and a URI names a file the checks here would not see.

A journal entry is one line written under the file's lock; a writer killed mid-line leaves a torn last line,
which readers skip but an append would glue onto the next entry: JournalFile drops it first. A corrupt line
before the last (a damaged file) is a CorruptJournal naming the file and the line, never Optuna's bare
JSONDecodeError or AssertionError.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
from collections.abc import Generator
from pathlib import Path
from typing import Any, cast

import sqlalchemy
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.storages._rdb import models as rdb_models
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file
from optuna.storages.journal._storage import JournalOperation

from kronsearch.layers.errors import RunFailure

SQLITE_MAGIC = b"SQLite format 3\x00"
OPTUNA_TABLES = {  # optuna.storages._rdb.models' tables and alembic's (Optuna 4), read from a new study's file
    "alembic_version", "studies", "study_directions", "study_system_attributes", "study_user_attributes",
    "trial_heartbeats", "trial_intermediate_values", "trial_params", "trial_system_attributes",
    "trial_user_attributes", "trial_values", "trials", "version_info"}
VERSION_TABLES = {"version_info": {"version_info_id", "schema_version", "library_version"},
                  "alembic_version": {"version_num"}}
JOURNAL_OPS = {int(op) for op in JournalOperation}


def mask_passwords(text: str) -> str:
    """`text` with the password of every URL in it (scheme://user:password@host) shown as ***: storage URLs appear
    in messages, logs and recorded labels, and a PostgreSQL URL may carry its password."""
    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]+:)[^/@\s]+@", r"\1***@", text)


class CorruptJournal(RunFailure):
    """A journal file with a line before its last that is no journal entry; the message names the file and line."""


def sqlite_url_problem(url: str) -> str | None:
    """Why SQLite URL `url` cannot be a storage (an in-memory database, a URI filename), or None."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return None  # Optuna's own words follow
    database, query = parsed.database or "", {k: str(v).lower() for k, v in parsed.query.items()}
    if database in ("", ":memory:") or ":memory:" in database or "mode=memory" in database \
            or query.get("mode") == "memory":
        return (f"storage {url} is an in-memory SQLite database: it holds nothing before or after this process, "
                f"and no folder would keep its trials' weights; give a file, e.g. sqlite:///x.db")
    if database.startswith("file:") or query.get("uri") in ("true", "1", "yes"):
        return (f"storage {url} is a SQLite URI filename (file:...?uri=true), which kronsearch does not take: the "
                f"file it names is not checked before use; give the file's path, e.g. sqlite:///x.db")
    return None


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
    try:
        if not tables or _made_by_optuna(file, tables):
            return None
    except sqlite3.Error as err:
        return str(err)
    return (f"it is not an Optuna storage: it has tables named as Optuna's ({', '.join(sorted(tables)[:8])}) but not "
            f"Optuna's version tables, nor an Optuna file whose creation was cut off; it was left untouched: pass "
            f"another --storage")


def _made_by_optuna(file: Path, tables: set[str]) -> bool:
    """Whether a SQLite file whose tables all carry Optuna's names is Optuna's (see the module doc)."""
    with _connection(file, "ro") as connection:
        found = {name: {row[1] for row in connection.execute(f"pragma table_info('{name}')")} for name in VERSION_TABLES
                 if name in tables}
        if found:
            return all(columns == VERSION_TABLES[name] for name, columns in found.items())
        reference = _optuna_columns()
        return all(_columns(connection, name) == reference[name] for name in tables) and \
            not any(connection.execute(f"select 1 from '{name}' limit 1").fetchone() for name in tables)


def _columns(connection: sqlite3.Connection, table: str) -> list[tuple]:
    """(name, type, not null, default, primary key) of each column of `table`."""
    return [tuple(row[1:]) for row in connection.execute(f"pragma table_info('{table}')")]


@functools.lru_cache(maxsize=1)
def _optuna_columns() -> dict[str, list[tuple]]:
    """The columns the installed Optuna gives each of its tables in a new SQLite file (made in memory)."""
    engine = sqlalchemy.create_engine("sqlite://")
    rdb_models.BaseModel.metadata.create_all(engine)
    with engine.connect() as connection:
        raw = cast(sqlite3.Connection, connection.connection.dbapi_connection)  # a sqlite:// engine's
        return {name: _columns(raw, name) for name in rdb_models.BaseModel.metadata.tables}


class _connection:
    """sqlite3 connection to `file` opened in `mode` ("ro", or "rw", which rolls back a hot journal), closed on exit."""

    def __init__(self, file: Path, mode: str) -> None:
        self.connection = sqlite3.connect(f"{file.resolve().as_uri()}?mode={mode}", uri=True)

    def __enter__(self) -> sqlite3.Connection:
        return self.connection

    def __exit__(self, *exc: object) -> None:
        self.connection.close()


def sqlite_tables(file: Path, mode: str) -> set[str]:
    """The table names of SQLite database `file`, opened in `mode` ("ro", or "rw", which rolls back a hot journal)."""
    with _connection(file, mode) as connection:
        return {row[0] for row in connection.execute("select name from sqlite_master where type = 'table'")}


class JournalFile(JournalFileBackend):
    """A journal file whose appends first drop a torn last line, and whose reads name a corrupt line (module doc)."""

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        line = log_number_from + 1
        try:
            for entry in super().read_logs(log_number_from):
                if not isinstance(entry, dict) or entry.get("op_code") not in JOURNAL_OPS:
                    raise ValueError("it is JSON but no journal entry")
                yield entry
                line += 1
        except ValueError as err:  # json.JSONDecodeError, or Optuna's "Invalid log format."
            raise CorruptJournal(f"journal file {self._file_path}: line {line} is corrupt ({err}); the file was left "
                                 f"untouched: restore it from a backup, or cut the file before that line to keep the "
                                 f"entries before it") from None

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
