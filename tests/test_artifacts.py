"""The artifact folder of a study (kronsearch/artifacts.py): --artifacts on run and the read commands, one study per
folder, the study's record of where it is, and one line for a machine that cannot reach it. Several machines on
PostgreSQL sharing one folder: tests/test_postgres.py."""

from __future__ import annotations

import json

from kronsearch.artifacts import MARKER
from kronsearch.storage import load_studies

STUDY = "tiny:one_round"


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_a_run_with_artifacts_puts_the_trial_folders_there_and_claims_the_folder(cli, write_space, workdir):
    path = write_space(search={"trials": 1})
    result = cli("run", path, "--artifacts", workdir / "shared", "--quiet")
    assert result.exit_code == 0, result.output
    folder = workdir / "shared" / "tiny" / "one_round"
    assert (folder / "trial-0" / "model.safetensors").is_file() and not (workdir / "studies" / "tiny").exists()
    (study,) = load_studies(STUDY)
    marker = json.loads((folder / MARKER).read_text())
    assert marker["study"] == STUDY and marker["artifacts_id"] == study.user_attrs["artifacts_id"]
    assert study.user_attrs["artifacts_root"] == str((workdir / "shared").resolve())


def test_the_space_files_search_artifacts_is_relative_to_the_file(cli, write_space, workdir):
    path = write_space(search={"trials": 1, "artifacts": "kept"})
    assert cli("run", path, "--quiet").exit_code == 0
    assert (workdir / "kept" / "tiny" / "one_round" / "trial-0" / "model.safetensors").is_file()


def test_a_folder_of_another_studys_storage_is_refused_and_kept(cli, write_space, workdir):
    path = write_space(search={"trials": 1})
    assert cli("run", path, "--artifacts", workdir / "shared", "--quiet").exit_code == 0
    before = sorted(p.name for p in (workdir / "shared" / "tiny" / "one_round").iterdir())
    other = f"sqlite:///{workdir / 'other.db'}"
    result = cli("run", path, "--storage", other, "--artifacts", workdir / "shared", "--quiet")
    assert result.exit_code == 1
    assert "one study per artifact folder" in error_line(result)
    fresh = cli("run", path, "--storage", other, "--artifacts", workdir / "shared", "--fresh", "--quiet")
    assert fresh.exit_code == 1 and "deletes only its own folder" in error_line(fresh)
    assert sorted(p.name for p in (workdir / "shared" / "tiny" / "one_round").iterdir()) == before


def test_a_read_command_that_cannot_reach_the_folder_names_the_trial_and_the_place(cli, write_space, workdir):
    path = write_space(search={"trials": 1})
    assert cli("run", path, "--artifacts", workdir / "shared", "--quiet").exit_code == 0
    elsewhere = workdir / "not-mounted"
    result = cli("export", STUDY, "--out", workdir / "best.yaml", "--weights", workdir / "w.safetensors",
                 "--artifacts", elsewhere)
    assert result.exit_code == 1
    line = error_line(result)
    assert f"trial 0 of '{STUDY}'" in line and str(elsewhere / "tiny" / "one_round" / "trial-0") in line
    assert cli("export", STUDY, "--out", workdir / "best.yaml", "--weights", workdir / "w.safetensors").exit_code == 0
