"""Foreign, mistaken and torn storage files (issue 23): refused before anything is written, or repaired where the
damage is only an entry its writer never finished."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from kronsearch.search import run_search
from kronsearch.storage import load_studies
from kronsearch.storage_files import mask_passwords
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


# ---------------------------------------------------------------------------------------------
# Issue 31: a DB is foreign unless Optuna made it, a study unless kronsearch made it


@pytest.mark.parametrize("schema", [
    ["create table studies (study_id integer, study_name text)", "insert into studies values (1, 'mine')"],
    ["create table trials (trial_id integer primary key, number integer)"],
    ["create table studies (study_id integer, study_name text)", "create table version_info (x)"],
], ids=["studies", "trials", "fake-version-table"])
def test_an_application_database_with_optuna_table_names_is_refused_untouched(write_space, workdir, cli, schema):
    connection = sqlite3.connect("app.db")
    for statement in schema:
        connection.execute(statement)
    connection.commit()
    connection.close()
    before = sha("app.db")
    for command in (["run", write_space(), "--quiet"], ["run", write_space(), "--quiet", "--fresh"], ["show", "tiny"]):
        result = cli(*command, "--storage", "sqlite:///app.db")
        assert result.exit_code == 1
        assert "not an Optuna storage" in error_line(result) and "left untouched" in error_line(result)
    assert sha("app.db") == before


def test_an_optuna_file_whose_creation_was_cut_off_before_its_version_tables_is_completed(write_space, workdir, cli):
    import sqlalchemy
    from optuna.storages._rdb import models

    models.BaseModel.metadata.create_all(sqlalchemy.create_engine("sqlite:///cut.db"))
    connection = sqlite3.connect("cut.db")
    for table in ("version_info", "trial_values", "trial_heartbeats"):  # created last, or not yet
        connection.execute(f"drop table {table}")
    connection.commit()
    connection.close()
    result = cli("run", write_space(search={"trials": 1}), "--storage", "sqlite:///cut.db", "--quiet")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("url", ["sqlite:///file::memory:?cache=shared&uri=true",
                                 "sqlite:///file:x?mode=memory&uri=true", "sqlite:///x.db?mode=memory",
                                 "sqlite:///file:x.db?uri=true"],
                         ids=["shared-cache", "mode-memory-uri", "mode-memory", "uri-filename"])
def test_in_memory_and_uri_sqlite_storages_are_refused_before_anything_runs(write_space, workdir, cli, url):
    path = write_space()
    result = cli("run", path, "--storage", url, "--quiet")
    assert result.exit_code == 2
    line = error_line(result)
    assert url in line and ("in-memory" in line if "memory" in url else "URI filename" in line), line
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.yaml"]


def foreign_study(url: str, trials: int = 3, **user_attrs) -> None:
    """Another tool's Optuna study named as tiny.yaml's."""
    storage = url if "://" in url else optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    study = optuna.create_study(study_name="tiny:one_round", storage=storage, directions=["maximize"])
    for key, value in user_attrs.items():
        study.set_user_attr(key, value)
    for i in range(trials):
        study.add_trial(optuna.trial.create_trial(value=0.1 * i, params={"x": i},
                                                  distributions={"x": optuna.distributions.IntDistribution(0, 9)}))


@pytest.mark.parametrize("fresh", [[], ["--fresh"]], ids=["run", "fresh"])
@pytest.mark.parametrize("url", ["sqlite:///studies/tiny.db", "studies/tiny.log"], ids=["sqlite", "journal"])
def test_a_foreign_study_of_the_same_name_is_refused_untouched(write_space, workdir, cli, url, fresh):
    Path("studies").mkdir()
    foreign_study(url, owner="someone")
    file = url.removeprefix("sqlite:///")
    before = sha(file)
    result = cli("run", write_space(), "--storage", url, "--quiet", *fresh)
    assert result.exit_code == 1
    line = error_line(result)
    assert "study 'tiny:one_round'" in line and "not made by kronsearch (3 trials" in line and "untouched" in line
    assert sha(file) == before and not Path("studies/tiny").exists()


def test_an_empty_unmarked_study_left_by_a_cut_off_creation_is_taken_and_marked(write_space, workdir):
    Path("studies").mkdir()
    foreign_study("sqlite:///studies/tiny.db", trials=0)
    run_search(write_space(search={"trials": 1}), progress=False)
    (study,) = load_studies("tiny:one_round")
    assert len(study.trials) == 1 and study._storage.get_study_system_attrs(study._study_id)["kronsearch"]


def test_a_study_of_an_earlier_kronsearch_without_the_mark_resumes(write_space, workdir):
    path = write_space(search={"trials": 1})
    run_search(path, progress=False)
    connection = sqlite3.connect("studies/tiny.db")  # as kronsearch 0.2 left it: user attrs only
    connection.execute("delete from study_system_attributes")
    connection.commit()
    connection.close()
    run_search(path, trials=2, progress=False)
    (study,) = load_studies("tiny:one_round")
    assert len(study.trials) == 2


@pytest.mark.parametrize("line, words", [
    (b'{"op_code": 5, "worker_id": "x", "trial_id": 0, "us\x01"}\n', "line 6 is corrupt"),
    (b'{"op_code": 99}\n', "line 6 is corrupt (it is JSON but no journal entry)"),
    (b'[1, 2]\n', "line 6 is corrupt"),
], ids=["bad-json", "unknown-operation", "not-an-entry"])
def test_a_journal_with_a_corrupt_middle_line_names_the_file_and_the_line(write_space, workdir, cli, line, words):
    path = write_space(search={"trials": 1})
    Path("studies").mkdir()
    run_search(path, storage="studies/j.log", progress=False)
    lines = Path("studies/j.log").read_bytes().splitlines(keepends=True)
    Path("studies/j.log").write_bytes(b"".join(lines[:5] + [line] + lines[5:]))
    before = sha("studies/j.log")
    for command in (["run", path, "--trials", "2", "--quiet"], ["show", "tiny"]):
        result = cli(*command, "--storage", "studies/j.log")
        assert result.exit_code == 1
        assert "journal file studies/j.log" in error_line(result) and words in error_line(result)
    assert sha("studies/j.log") == before


def test_mask_passwords_hides_each_urls_password_and_nothing_else():
    text = "cannot open postgresql+psycopg://bob:s3cret@db:5432/k: see http://docs:8000/a@b and mysql://al:pw@h/x"
    assert mask_passwords(text) == ("cannot open postgresql+psycopg://bob:***@db:5432/k: see http://docs:8000/a@b "
                                    "and mysql://al:***@h/x")
