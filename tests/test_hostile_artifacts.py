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


# ---------------------------------------------------------------------------------------------
# Issue 31: nothing outside a study's own folder is ever touched


def plant_user_files(folder: Path) -> dict[str, str]:
    """A user's files in `folder` (code, notes), as a digest to compare after."""
    (folder / "train.py").write_text("print('mine')")
    (folder / "notes").mkdir(exist_ok=True)
    (folder / "notes" / "n.txt").write_text("mine")
    return {p.relative_to(folder).as_posix(): sha(p) for p in (folder / "train.py", folder / "notes" / "n.txt")}


@pytest.mark.parametrize("recorded", [".", "./", "", 7], ids=repr)  # ".." and absolute: test above
def test_fresh_never_deletes_the_storage_folder_whatever_artifacts_dir_a_study_records(write_space, workdir, recorded):
    path = write_space(search={"trials": 1})
    mine = plant_user_files(workdir)
    run_search(path, storage="sqlite:///results.db", progress=False)
    (study,) = load_studies("tiny:one_round", "sqlite:///results.db")
    study.set_user_attr("artifacts_dir", recorded)  # a corrupt or received storage
    run_search(path, storage="sqlite:///results.db", fresh=True, progress=False)
    assert {p: sha(workdir / p) for p in mine} == mine and path.is_file() and Path("results.db").is_file()
    (study,) = load_studies("tiny:one_round", "sqlite:///results.db")
    assert len(study.trials) == 1


def test_fresh_in_the_default_layout_keeps_the_other_searches_of_the_studies_folder(write_space, workdir):
    other = write_space("other.yaml", name="other", search={"trials": 1})
    run_search(other, progress=False)
    path = write_space(search={"trials": 1})
    run_search(path, progress=False)
    (study,) = load_studies("tiny:one_round")
    study.set_user_attr("artifacts_dir", "./")
    before = digest_tree(workdir / "studies" / "other")
    run_search(path, fresh=True, progress=False)
    assert Path("studies/other.db").is_file() and digest_tree(workdir / "studies" / "other") == before


def digest_tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fresh_deletes_only_the_files_runs_wrote_in_the_study_folder(searched, workdir):
    folder = workdir / "studies" / "tiny" / "one_round"
    (folder / "trial-0" / "my-notes.txt").write_text("mine")
    (folder / "summary.csv").write_text("mine")
    (folder / "trial-7").mkdir()
    (folder / "trial-7" / "model.safetensors").symlink_to(workdir / "tiny.yaml")  # a link is no file a run wrote
    run_search(searched, fresh=True, progress=False)
    left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    assert left == [".kronsearch-study",  # the study's marker (kronsearch.artifacts): the folder stays the study's
                    "summary.csv", "trial-0", "trial-0/config.json", "trial-0/history.json", "trial-0/metrics.json",
                    "trial-0/model.safetensors", "trial-0/my-notes.txt", "trial-7", "trial-7/model.safetensors"]
    assert (folder / "trial-0" / "my-notes.txt").read_text() == "mine" and (workdir / "tiny.yaml").is_file()


@pytest.mark.parametrize("command", ["run", "fresh"])
def test_a_link_above_the_trial_folders_is_refused_and_nothing_is_written_or_deleted_through_it(
        write_space, workdir, cli, command):
    path = write_space(search={"trials": 1})
    if command == "fresh":
        run_search(path, progress=False)
        Path("studies/tiny/one_round").rename("studies/elsewhere")
    outside = workdir / "outside"
    outside.mkdir()
    if command == "fresh":
        Path("studies/elsewhere").rename(outside / "one_round")
        Path("studies/tiny").rmdir()
    (outside / "one_round").mkdir(exist_ok=True)
    (outside / "one_round" / "trial-0").mkdir(exist_ok=True)
    (outside / "one_round" / "trial-0" / "metrics.json").write_text("not kronsearch's")
    before = digest_tree(outside)
    Path("studies").mkdir(exist_ok=True)
    os.symlink(outside, "studies/tiny")
    result = cli("run", path, "--quiet", *(["--fresh"] if command == "fresh" else []))
    assert result.exit_code == 1
    line = error_line(result)
    assert "studies/tiny is a symbolic link" in line and "outside" in line, line
    assert digest_tree(outside) == before


def test_a_file_where_a_study_folder_should_be_is_refused_untouched(write_space, workdir, cli):
    Path("studies").mkdir()
    Path("studies/tiny").write_text("a file of the user")
    result = cli("run", write_space(search={"trials": 1}), "--quiet")
    assert result.exit_code == 1
    assert "studies/tiny is a file, not a folder" in error_line(result)
    assert Path("studies/tiny").read_text() == "a file of the user"


def test_a_search_name_ending_in_db_is_refused(write_space, workdir, cli):
    result = cli("run", write_space(name="a.DB"), "--quiet")
    assert result.exit_code == 2 and "not ending in .db" in error_line(result)
    assert not Path("studies").exists()


@pytest.fixture
def searched_twice(write_space, workdir) -> Path:
    path = write_space(search={"trials": 2})
    run_search(path, progress=False)
    return path


@pytest.mark.parametrize("args", [
    ["--trial", "0", "--out", "p.yaml", "--weights", "studies/tiny/one_round/trial-1/model.safetensors"],
    ["--trial", "0", "--out", "studies/tiny/one_round/trial-0/history.json"],
    ["--trial", "0", "--out", "studies/tiny/one_round/trial-1/new.yaml"],
    ["--trial", "0", "--out", "studies/tiny/one_round/pick.yaml"],
    ["--trial", "0", "--out", "p.yaml", "--weights", "studies/tiny/one_round/w.safetensors", "--bsr"],
], ids=["weights-over-another-trial", "out-over-history", "out-into-a-trial-folder", "out-into-the-study-folder",
        "weights-into-the-study-folder"])
def test_export_never_writes_into_a_study_artifact_folder(searched_twice, workdir, cli, args):
    before = digest_tree(workdir / "studies")
    result = cli("export", "tiny:one_round", *args)
    assert result.exit_code == 2
    assert "a study's artifact folder" in error_line(result)
    assert digest_tree(workdir / "studies") == before and not Path("p.yaml").exists()


def test_export_never_writes_into_a_trial_folder_of_another_storage(searched, workdir, cli):
    run_search(searched, storage="sqlite:///other.db", progress=False)
    before = digest_tree(workdir / "other.db-artifacts")
    result = cli("export", "tiny:one_round", "--out", "other.db-artifacts/tiny/one_round/trial-0/config.json")
    assert result.exit_code == 2 and "artifact folder" in error_line(result)
    assert digest_tree(workdir / "other.db-artifacts") == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("kind", ["fifo", "link-to-fifo", "folder", "socket", "device"])
def test_export_never_replaces_a_path_that_is_not_a_regular_file(searched, workdir, cli, kind):
    import socket
    import stat

    target = workdir / "target"
    if kind in ("fifo", "link-to-fifo"):
        os.mkfifo(workdir / "pipe")
        if kind == "fifo":
            os.rename(workdir / "pipe", target)
        else:
            target.symlink_to(workdir / "pipe")
    elif kind == "folder":
        target.mkdir()
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(target))
        server.close()
    else:
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of its own
    before = os.stat(target)
    result = cli("export", "tiny:one_round", "--out", target)
    assert result.exit_code == 2, result.output
    assert "not a regular file" in error_line(result) and "never replaces" in error_line(result)
    after = os.stat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert not stat.S_ISREG(after.st_mode)


@pytest.mark.parametrize("out", ["studies/tiny/one_round", "studies/tiny/one_round/trial-0", "folder"])
def test_plot_never_writes_into_a_study_artifact_folder_nor_replaces_what_is_no_file(searched, workdir, cli, out):
    if out == "folder":
        Path("plots/tiny-history.png").mkdir(parents=True)  # a FIFO too, but savefig would block on one
        out = "plots"
    before = digest_tree(workdir / "studies")
    result = cli("plot", "tiny", "--out", out)
    assert result.exit_code == 2, result.output
    assert ("a study's artifact folder" if out != "plots" else "not a regular file") in error_line(result)
    assert digest_tree(workdir / "studies") == before


def test_a_link_as_the_strategy_folder_is_refused_too(write_space, workdir, cli):
    outside = workdir / "outside"
    outside.mkdir()
    Path("studies/tiny").mkdir(parents=True)
    os.symlink(outside, "studies/tiny/one_round")
    result = cli("run", write_space(search={"trials": 1}), "--quiet")
    assert result.exit_code == 1 and "studies/tiny/one_round is a symbolic link" in error_line(result)
    assert list(outside.iterdir()) == []
