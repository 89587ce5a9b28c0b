"""A real, throwaway PostgreSQL server for the tests and benchmarks/read_scale.py: no mock.

The image's initdb and pg_ctl (on PATH, or under /usr/lib/postgresql/*/bin) make a cluster in a temp folder
and start it on 127.0.0.1 at a free port, as a non-root user (the server refuses root: as root the commands
run as the `postgres` user through runuser, and the folder is handed to that user). stop() shuts it down
and deletes the folder. Tests that need it skip, saying why, where PostgreSQL or psycopg (SQLAlchemy's
`postgresql+psycopg` driver) is not installed, except on CI (CI=true), where they fail: CI must run them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SERVER_USER = "postgres"  # the account the server runs as when the tests run as root


def server_binaries() -> tuple[str, str] | None:
    """(initdb, pg_ctl) paths, or None where PostgreSQL's server is not installed."""
    for folder in [None, *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        initdb, pg_ctl = shutil.which("initdb", path=folder), shutil.which("pg_ctl", path=folder)
        if initdb and pg_ctl:
            return initdb, pg_ctl
    return None


def missing_reason() -> str | None:
    """Why no server can be started here (None: one can): no binaries, or root without a `postgres` user."""
    if server_binaries() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} user to run the server as"
    return None


def skip_unless_available() -> None:
    """pytest.skip with the reason where no server can start here (pytest.fail on CI, which must run them)."""
    reason = missing_reason()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        reason = reason or "the PostgreSQL driver is not installed (pip install 'kronsearch[postgres]')"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
        pytest.skip(reason)


@contextmanager
def postgres_server(database: str = "kronsearch") -> Iterator[str]:
    """Yield the SQLAlchemy URL of `database` on a fresh server (trust authentication, user postgres)."""
    skip_unless_available()
    server = PostgresServer()
    try:
        server.start()
        yield server.database(database)
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A PostgreSQL cluster of its own: start() -> the server's base URL, database(name) -> a new database's
    SQLAlchemy URL (postgresql+psycopg://), stop() stops it and removes its folder."""

    def __init__(self) -> None:
        binaries = server_binaries()
        if binaries is None:
            raise RuntimeError(missing_reason())
        self.initdb, self.pg_ctl = binaries
        self.folder = Path(tempfile.mkdtemp(prefix="kronsearch-pg-"))
        self.data = self.folder / "data"
        self.port = 0
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", SERVER_USER, "--"]

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self.as_user, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            raise RuntimeError(f"{' '.join(command[:2])} failed ({done.returncode}): {done.stderr.strip()} {tail}")

    def start(self) -> str:
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        for attempt in range(3):  # a port taken between free_port() and the server's bind: try another
            self.port = free_port()
            options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off -c max_connections=200"
            try:
                self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.folder / "server.log"),
                          "-w", "-t", "60", "start")
                return self.url("postgres")
            except RuntimeError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """Create database `name` (empty) and return its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            if self.port:
                self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
