"""Hostile and careless runs against what a study keeps (issue 23): an artifact belongs to exactly one study of
one storage, a run never writes through a link out of its folder, and outputs never overwrite a storage or
each other."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
from pathlib import Path

import optuna
import pytest

from kronsearch.errors import BadInput
from kronsearch.search import run_search
from kronsearch.storage import StorageError, load_studies
from kronsearch.study_owner import StudyInUse
from tests.test_reliability import RUN_HANGING, TIMEOUT, python, wait_for  # noqa: F401 - python is a fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def error_line(result) -> str:
    """The CLI's one `error:` line (and nothing else on its output)."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture
def searched(write_space, workdir) -> Path:
    """A finished tiny search (one trial) in studies/tiny.db."""
    path = write_space(search={"trials": 1})
    run_search(path, progress=False)
    return path


@pytest.mark.parametrize("args, both", [
    (["--out", "studies/tiny.db"], ["studies/tiny.db"]),
    (["--out", "c1.yaml", "--weights", "c1.yaml"], ["--out", "--weights", "c1.yaml"]),
    (["--out", "x.bsr.safetensors", "--weights", "x.safetensors", "--bsr"], ["--out", "--bsr", "x.bsr.safetensors"]),
    (["--out", "p.yaml", "--weights", "studies/tiny/one_round/trial-0/model.safetensors"], ["model.safetensors"]),
    (["--out", "foreign.db"], ["foreign.db"]),
], ids=["storage", "out-is-weights", "out-is-bsr", "trial-weights", "other-database"])
def test_export_never_overwrites_a_storage_or_its_own_outputs(searched, workdir, cli, args, both):
    sqlite3.connect("foreign.db").execute("create table mine (x)").connection.close()
    before = {p: sha(p) for p in ("studies/tiny.db", "foreign.db", "studies/tiny/one_round/trial-0/model.safetensors")}
    result = cli("export", "tiny:one_round", *args)
    assert result.exit_code == 2
    line = error_line(result)
    assert all(fragment in line for fragment in both), line
    assert {p: sha(p) for p in before} == before
    assert not any(Path(a).exists() for a in ("c1.yaml", "x.bsr.safetensors", "x.safetensors"))


def test_two_storages_in_one_folder_keep_their_own_trial_folders(write_space, workdir, cli):
    path = write_space(search={"trials": 1})
    run_search(path, progress=False)
    other = write_space("other.yaml", seed=7, train={"lr": 0.05}, search={"trials": 1})
    run_search(other, storage="sqlite:///studies/other.db", progress=False)
    (first,) = load_studies("tiny:one_round")
    (second,) = load_studies("tiny:one_round", "sqlite:///studies/other.db")
    folders = [Path("studies", s.trials[0].user_attrs["artifact_dir"]) for s in (first, second)]
    assert folders[0] == Path("studies/tiny/one_round/trial-0")  # the layout docs/workflow.md gives
    assert folders[1] == Path("studies/other.db-artifacts/tiny/one_round/trial-0")
    assert sha(folders[0] / "model.safetensors") != sha(folders[1] / "model.safetensors")
    for storage, folder in (([], folders[0]), (["--storage", "sqlite:///studies/other.db"], folders[1])):
        assert cli("export", "tiny:one_round", "--out", "p.yaml", "--weights", "w.safetensors", *storage).exit_code == 0
        assert sha("w.safetensors") == sha(folder / "model.safetensors")


def test_an_in_memory_storage_is_refused_before_anything_runs(write_space, workdir, cli):
    path = write_space()
    result = cli("run", path, "--storage", "sqlite://", "--quiet")
    assert result.exit_code == 2 and "in-memory" in error_line(result)
    assert not Path("studies").exists()
    with pytest.raises(BadInput, match="in-memory"):
        run_search(path, storage="sqlite:///:memory:", progress=False)


def test_a_link_planted_as_the_next_trial_folder_is_never_written_through(write_space, workdir, cli):
    path = write_space(search={"trials": 1})
    outside = workdir / "outside"
    outside.mkdir()
    (outside / "model.safetensors").write_text("precious")
    Path("studies/tiny/one_round").mkdir(parents=True)
    os.symlink(outside, "studies/tiny/one_round/trial-0")
    result = cli("run", path, "--quiet")
    assert result.exit_code == 1
    assert "symbolic link" in error_line(result) and "trial-0" in result.output
    assert sorted(p.name for p in outside.iterdir()) == ["model.safetensors"]
    assert (outside / "model.safetensors").read_text() == "precious"


def test_fresh_is_refused_while_another_process_runs_the_study(write_space, workdir, python):
    path = write_space(search={"trials": 2})
    proc = python(RUN_HANGING, HANG_AT="1")
    wait_for(workdir / "hanging", proc)
    with pytest.raises(StudyInUse, match=f"process .*:{proc.pid} holds it"):
        run_search(path, fresh=True, progress=False)
    assert issubclass(StudyInUse, StorageError)
    (study,) = load_studies("tiny:one_round")
    assert [t.number for t in study.trials] == [0]  # nothing deleted or renumbered under the running process
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    run_search(path, fresh=True, progress=False)  # the process is gone: --fresh starts over
    (study,) = load_studies("tiny:one_round")
    assert len(study.trials) == 2 and all(t.user_attrs.get("retry_of") is None for t in study.trials)


def test_plot_writes_only_into_its_out_folder_whatever_a_study_is_named(workdir, cli):
    from tests.test_report import build_search

    deep = workdir / "a" / "b"
    deep.mkdir(parents=True)
    os.chdir(deep)
    url = build_search(deep)
    optuna.copy_study(from_study_name="demo:one_round", from_storage=url, to_storage=url,
                      to_study_name="../../pwn:one_round")
    result = cli("plot", "../../pwn:one_round", "--out", "plots", "--storage", url)
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*.png"))
    assert written and all(p.startswith("a/b/plots/_.._pwn-") for p in written), written


def test_a_study_recording_a_folder_out_of_its_root_never_reaches_it(searched, workdir):
    victim = workdir / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    (study,) = load_studies("tiny:one_round")
    study.set_user_attr("artifacts_dir", "../victim")  # a tampered storage
    run_search(searched, fresh=True, progress=False)
    assert (victim / "precious.txt").read_text() == "keep"
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
