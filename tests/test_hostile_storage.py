"""Foreign, mistaken and torn storage files (issue 23): refused before anything is written, or repaired where the
damage is only an entry its writer never finished."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from kronsearch.search import run_search
from kronsearch.storage import load_studies
from tests.test_hostile_artifacts import error_line, sha

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_foreign_sqlite_database_is_refused_and_left_untouched(write_space, workdir, cli):
    connection = sqlite3.connect("foreign.db")
    connection.execute("create table invoices (id integer, total real)")
    connection.commit()
    connection.close()
    before = sha("foreign.db")
    for command in (["run", write_space(), "--quiet"], ["show", "tiny"]):
        result = cli(*command, "--storage", "sqlite:///foreign.db")
        assert result.exit_code == 1
        line = error_line(result)
        assert "sqlite:///foreign.db" in line and "another application (tables: invoices)" in line
    assert sha("foreign.db") == before


def test_a_study_file_whose_optuna_tables_are_only_partly_created_is_completed_and_used(write_space, workdir, cli):
    """Optuna creates its tables one commit each: a second process starting on the same new file saw five of them and
    called the file another application's (CI, two processes sharing a study)."""
    run_search(write_space(search={"trials": 1}), storage="sqlite:///half.db", progress=False)
    connection = sqlite3.connect("half.db")
    created_later = [row[0] for row in connection.execute("select name from sqlite_master where type = 'table'")
                     if row[0].startswith("trial") or row[0] == "alembic_version"]
    for table in created_later:
        connection.execute(f"drop table {table}")
    for table in ("study_directions", "study_system_attributes", "study_user_attributes", "studies", "version_info"):
        connection.execute(f"delete from {table}")
    connection.commit()
    connection.close()
    result = cli("run", write_space(search={"trials": 2}), "--storage", "sqlite:///half.db", "--quiet")
    assert result.exit_code == 0, result.output
    [study] = load_studies("tiny", "sqlite:///half.db")
    assert len(study.trials) == 2


def test_optuna_tables_beside_another_applications_tables_are_still_refused(write_space, workdir, cli):
    connection = sqlite3.connect("mixed.db")
    connection.execute("create table invoices (id integer, total real)")
    connection.execute("create table studies (study_id integer, study_name text)")
    connection.commit()
    connection.close()
    result = cli("run", write_space(), "--storage", "sqlite:///mixed.db", "--quiet")
    assert result.exit_code == 1
    assert "another application (tables: invoices)" in error_line(result)


@pytest.mark.parametrize("content, words", [
    (None, "is a SQLite database, not a journal file: give it as sqlite:///studies/base.db"),
    (b"\xff\xfe not text at all\n", "not an Optuna journal file"),
    (b'{"a": 1}\n', "not an Optuna journal file"),
], ids=["sqlite-file", "binary", "other-json"])
def test_a_file_that_is_no_journal_is_not_read_as_one(write_space, workdir, cli, content, words):
    path = write_space(search={"trials": 1})
    Path("studies").mkdir()
    if content is None:
        run_search(path, storage="sqlite:///studies/base.db", progress=False)
    else:
        Path("studies/base.db").write_bytes(content)
    before = sha("studies/base.db")
    result = cli("run", path, "--storage", "studies/base.db", "--quiet")
    assert result.exit_code == 1
    line = error_line(result)
    assert "studies/base.db" in line and words in line, line
    assert sha("studies/base.db") == before


def test_a_journal_with_a_torn_last_line_resumes_and_stays_readable(write_space, workdir, cli):
    path = write_space(search={"trials": 1})
    Path("studies").mkdir()
    run_search(path, storage="studies/j.log", progress=False)
    with open("studies/j.log", "ab") as f:
        f.write(b'{"op_code":5,"worker_id":"x","trial_id":0,"us')  # a writer killed mid-entry
    result = cli("run", path, "--storage", "studies/j.log", "--trials", "2", "--quiet")
    assert result.exit_code == 0, result.output
    assert cli("show", "tiny", "--storage", "studies/j.log").exit_code == 0
    (study,) = load_studies("tiny:one_round", "studies/j.log")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert b'"us{' not in Path("studies/j.log").read_bytes()


KILLED_WRITER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("pragma cache_size = 2")  # dirty pages spill into the file before the commit
connection.execute("begin immediate")
connection.execute("update pad set x = x || 'changed'")
print("writing", flush=True)
time.sleep(60)
"""


def test_a_database_a_writer_was_killed_in_is_rolled_back_and_resumed_not_called_read_only(write_space, workdir, cli):
    path = write_space(search={"trials": 1})
    run_search(path, progress=False)
    connection = sqlite3.connect("studies/tiny.db")
    connection.execute("create table pad (x text)")  # pages enough for a transaction to spill
    connection.executemany("insert into pad values (?)", [(str(i) * 20,) for i in range(5000)])
    connection.commit()
    connection.close()
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, "studies/tiny.db"], stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout.readline() == "writing\n"
    writer.kill()
    writer.wait()
    assert Path("studies/tiny.db-journal").stat().st_size > 0  # a hot journal: a read-only open cannot read the file
    result = cli("run", path, "--trials", "2", "--quiet")
    assert result.exit_code == 0, result.output
    assert not Path("studies/tiny.db-journal").exists()
    (study,) = load_studies("tiny:one_round")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    connection = sqlite3.connect("studies/tiny.db")
    assert connection.execute("select count(*) from pad where x like '%changed'").fetchone() == (0,)  # rolled back
    connection.close()
