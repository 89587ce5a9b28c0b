"""Tests for the kronsearch CLI: show, compare, export, plot, run's shell, exit codes and error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import kronsearch
import kronsearch.search
from kronsearch import load_plan
from kronsearch.cli import RUN_INTERRUPTED, app
from kronsearch.search import RunSummary
from tests.test_report import build_search

COMMANDS = ("run", "show", "compare", "export", "plot")


@pytest.fixture
def demo(workdir):
    build_search(workdir)
    return workdir


def assert_error(result, code: int, *fragments: str) -> None:
    """Exit `code`, one `error: ...` line on stderr naming every fragment, no traceback."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(cli, command):
    result = cli(command, "--help")
    assert result.exit_code == 0 and "--storage" in result.stdout


def test_no_arguments_prints_the_command_list(cli):
    result = cli()
    assert result.exit_code == 2 and all(c in result.output for c in COMMANDS)


# ----------------------------------------------------------------------------- show / compare


def test_show_table(cli, demo):
    result = cli("show", "demo")
    assert result.exit_code == 0, result.stderr
    assert "demo:one_round: 4 trials" in result.stdout and "demo:per_pattern: 6 trials" in result.stdout
    assert "pick (cheapest within 0.5 points of the best val 85.00%): #1" in result.stdout
    assert "Pareto front of demo:per_pattern" in result.stdout


def test_show_json(cli, demo):
    result = cli("show", "demo:per_pattern", "--format", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [s["study"] for s in data] == ["demo:per_pattern"]
    assert [t["number"] for t in data[0]["best"]["trials"]] == [0, 1, 4]


def test_show_with_storage_elsewhere(cli, workdir):
    url = build_search(workdir / "elsewhere")  # studies/demo.db under another folder, not the cwd
    assert_error(cli("show", "demo"), 2, "studies/demo.db does not exist")
    result = cli("show", "demo:one_round", "--storage", url, "--format", "json")
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["study"] == "demo:one_round"


def test_show_unknown_study(cli, demo):
    assert_error(cli("show", "demo:hybrid"), 2, "no study 'demo:hybrid'", "demo:one_round, demo:per_pattern")
    assert_error(cli("show", "nothing"), 2, "no study 'nothing'")


def test_show_bad_format_is_a_usage_error(cli, demo):
    result = cli("show", "demo", "--format", "xml")
    assert result.exit_code == 2 and "xml" in result.stderr


def test_storage_that_is_not_a_database_fails_cleanly(cli, workdir):
    (workdir / "junk.db").write_text("not a database\n" * 100)
    result = cli("show", "demo", "--storage", f"sqlite:///{workdir / 'junk.db'}")
    assert_error(result, 1, "junk.db")
    assert (workdir / "junk.db").read_text() == "not a database\n" * 100  # left untouched


def test_a_database_without_optuna_tables_says_no_search_ran_there_and_creates_nothing(cli, workdir):
    (workdir / "empty.db").touch()
    result = cli("show", "demo", "--storage", f"sqlite:///{workdir / 'empty.db'}")
    assert_error(result, 1, "empty.db", "no Optuna tables, so no search was ever run there")
    assert (workdir / "empty.db").stat().st_size == 0


def test_an_unreachable_storage_is_named_without_its_password(cli, workdir):
    result = cli("show", "demo", "--storage", "postgresql+psycopg://bob:s3cret@127.0.0.1:1/k")
    assert_error(result, 1, "cannot open the study storage postgresql+psycopg://bob:***@127.0.0.1:1/k")
    assert "s3cret" not in result.stderr + result.stdout


def test_compare_table_and_json(cli, demo):
    table = cli("compare", "demo")
    assert table.exit_code == 0, table.stderr
    assert "one-round pick equals the per-pattern pick (2x2 r1) by blocks" in table.stdout
    split = cli("compare", "demo:one_round", "demo:per_pattern", "demo:one_round", "--format", "json")
    data = json.loads(split.stdout)
    assert data["studies"] == ["demo:one_round", "demo:per_pattern"]  # repeats dropped
    assert data == json.loads(cli("compare", "demo", "--format", "json").stdout)
    assert data["agreement"]["position"] == 1 and data["compute"]["ratio"]["train_macs_total"] == pytest.approx(0.4)


# ----------------------------------------------------------------------------- export


def test_export_pattern_and_weights(cli, demo):
    result = cli("export", "demo:one_round", "--out", "out/best.yaml", "--weights", "out/best.safetensors", "--bsr")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == ["exported trial 1 of demo:one_round (val 85.00%, test 84.00%)", "wrote out/best.yaml",
                         "wrote out/best.safetensors", "wrote out/best.bsr.safetensors"]
    assert all(line.startswith("note: out/best.bsr.safetensors stores ") for line in lines[4:])
    assert set(load_plan(demo / "out" / "best.yaml")) == {"layers.0", "head"}
    provenance = yaml.safe_load((demo / "out" / "best.yaml").read_text())["provenance"]
    assert provenance["storage"] == f"sqlite:///{(demo / 'studies' / 'demo.db').resolve()}"


def test_export_a_chosen_trial(cli, demo):
    result = cli("export", "demo:per_pattern", "--trial", "3", "--out", "t3.yaml")
    assert result.exit_code == 0, result.stderr
    assert yaml.safe_load((demo / "t3.yaml").read_text())["provenance"]["trial"] == 3


def test_export_needs_exactly_one_study(cli, demo):
    assert_error(cli("export", "demo", "--out", "x.yaml"), 2,
                 "'demo' names 2 studies; export takes one: give demo:one_round or demo:per_pattern")
    assert not (demo / "x.yaml").exists()


def test_a_yaml_error_keeps_its_line_column_and_caret_layout(cli, workdir):
    (workdir / "bad.yaml").write_text("name: x\ndata: name: digits\n")
    result = cli("run", "bad.yaml")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.splitlines() == ["error: bad.yaml:2:11: invalid YAML: mapping values are not allowed here",
                                          "  data: name: digits",
                                          "            ^"]


def test_a_yaml_error_names_where_its_context_starts(cli, workdir):
    (workdir / "bad.yaml").write_text("name: x\ndata:\n  limit: [1, 2\nmodel: {name: mlp}\n")
    first = cli("run", "bad.yaml").stderr.splitlines()[0]
    assert first == ("error: bad.yaml:4:6: invalid YAML: expected ',' or ']', but got ':' (while parsing a flow "
                     "sequence that starts at line 3, column 10)")


def test_export_help_says_n_stands_for_a_search_of_one_study_only(cli):
    text = " ".join(cli("export", "--help").stdout.split())
    assert 'One study: "N:S", or "N" when search N has one study.' in text
    assert "all its strategy studies" not in text


@pytest.mark.parametrize("trial, code, message", [
    ("2", 2, "trial 2 of 'demo:one_round' is FAIL, not COMPLETE"),
    ("3", 2, "is PRUNED, not COMPLETE"),
    ("42", 2, "has no trial 42"),
])
def test_export_refuses_bad_trials(cli, demo, trial, code, message):
    assert_error(cli("export", "demo:one_round", "--trial", trial, "--out", "x.yaml"), code, message)


def test_export_missing_weights_is_a_runtime_failure_naming_the_path(cli, demo):
    result = cli("export", "demo:per_pattern", "--trial", "0", "--out", "x.yaml", "--weights", "w.safetensors")
    assert_error(result, 1, "no saved weights", "per_pattern/trial-0/model.safetensors does not exist")
    assert not (demo / "x.yaml").exists()


def test_export_bsr_without_weights_is_bad_input(cli, demo):
    assert_error(cli("export", "demo:one_round", "--out", "x.yaml", "--bsr"), 2, "--bsr needs --weights")


def test_export_keeps_the_old_file_when_it_fails(cli, demo):
    (demo / "best.yaml").write_text("layers: {}\n")
    cli("export", "demo:per_pattern", "--trial", "0", "--out", "best.yaml", "--weights", "w.safetensors")
    assert (demo / "best.yaml").read_text() == "layers: {}\n"


def test_export_negative_trial_is_a_usage_error(cli, demo):
    assert cli("export", "demo:one_round", "--trial", "-1", "--out", "x.yaml").exit_code == 2


# ----------------------------------------------------------------------------- plot


def test_plot_writes_pngs_and_prints_paths(cli, demo):
    result = cli("plot", "demo", "--out", "plots")
    assert result.exit_code == 0, result.stderr
    kinds = ("history", "pareto", "cost", "selection")
    assert result.stdout.splitlines() == [f"wrote plots/demo-{k}.png" for k in kinds]
    assert all((demo / "plots" / f"demo-{k}.png").stat().st_size > 1000 for k in kinds)


def test_plot_of_the_search_and_of_one_study_replace_the_same_files(cli, demo):
    assert cli("plot", "demo", "--out", "plots").exit_code == 0
    assert cli("plot", "demo:one_round", "--out", "plots").exit_code == 0
    assert sorted(p.name for p in (demo / "plots").iterdir()) == [
        "demo-cost.png", "demo-history.png", "demo-pareto.png", "demo-selection.png"]


def test_plot_without_one_round_notes_the_skip(cli, demo):
    result = cli("plot", "demo:per_pattern", "--out", "plots")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].startswith("note: skipped selection plot")
    assert not (demo / "plots" / "demo-selection.png").exists()


def test_plot_of_a_study_without_complete_trials_fails(cli, workdir):
    import optuna

    (workdir / "studies").mkdir()
    optuna.create_study(storage="sqlite:///studies/empty.db", study_name="empty:one_round")
    assert_error(cli("plot", "empty", "--out", "plots"), 1, "nothing to plot for 'empty'")


# ----------------------------------------------------------------------------- run


def test_run_dry_run_prints_the_plan(cli, write_space):
    space = write_space()
    result = cli("run", space, "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "search 'tiny'" in result.stdout and "dry run:" in result.stdout


def test_run_forwards_its_options(cli, workdir, monkeypatch):
    seen = {}

    def fake(space_path, **kwargs):
        seen.update(kwargs, space_path=space_path)
        return RunSummary(["x:per_pattern"], "sqlite:///studies/x.db", completed=3, message="3 trials finished")

    monkeypatch.setattr(kronsearch.search, "run_search", fake)
    result = cli("run", "x.yaml", "--trials", "3", "--strategy", "per_pattern", "--device", "cpu", "--quiet",
                 "--storage", "sqlite:///y.db", "--fresh", "--artifacts", "shared")
    assert result.exit_code == 0 and result.stdout == "3 trials finished\n"
    assert str(seen.pop("space_path")) == "x.yaml"
    assert seen == {"trials": 3, "strategy": "per_pattern", "storage": "sqlite:///y.db", "fresh": True,
                    "dry_run": False, "device": "cpu", "backend": None, "address": None, "progress": False,
                    "wide": False, "artifacts": Path("shared")}


@pytest.mark.parametrize("args", [("--trials", "0"), ("--strategy", "greedy"), ("--device", "tpu")])
def test_run_rejects_bad_options(cli, workdir, args):
    assert cli("run", "x.yaml", *args).exit_code == 2


def test_run_bad_space_is_bad_input(cli, workdir):
    assert_error(cli("run", "missing.yaml"), 2, "missing.yaml")
    (workdir / "bad.yaml").write_text("name: [\n")
    assert_error(cli("run", "bad.yaml"), 2, "bad.yaml")


def test_run_interrupted_exits_130(cli, workdir, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(kronsearch.search, "run_search", interrupted)
    assert_error(cli("run", "x.yaml"), 130, RUN_INTERRUPTED)


def test_unexpected_errors_exit_1_with_the_message(cli, workdir, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(kronsearch.search, "run_search", broken)
    assert_error(cli("run", "x.yaml"), 1, "RuntimeError: boom second line")


def test_console_script_entry_point(workdir):
    """main() as the installed `kronsearch` script runs it: exit code and a single stderr line."""
    done = subprocess.run([sys.executable, "-c", "from kronsearch.cli import main; main()", "show", "nope"],
                          capture_output=True, text=True, cwd=workdir, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: no study 'nope'") and done.stderr.count("\n") == 1


def test_run_stdout_is_only_the_summary_without_blank_lines(cli, write_space):
    result = cli("run", write_space(search={"trials": 1}))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [result.stdout.strip()]
    assert "1 trial finished;" in result.stdout  # not "1 trials"


# ----------------------------------------------------------------------------- help, version, piped output


def test_help_shows_flags_without_a_value_type(cli):
    text = cli("run", "--help").stdout
    assert "<bool>" not in text
    assert any(line.split() == ["--fresh", "Delete", "the", "existing", "study", "and", "start", "over."]
               for line in text.splitlines())


def test_help_at_80_columns_breaks_lines_between_words():
    text = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["run", "--help"]).stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "<one_round|per_pattern|hybrid>" in text


@pytest.mark.parametrize("env", [{"COLUMNS": "80"}, {}])  # a terminal of 80 columns, and a pipe (unlimited)
def test_compare_fits_80_columns_and_wide_spells_every_header_out(demo, env):
    text = CliRunner(env=env).invoke(app, ["compare", "demo"]).stdout
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80, text
    assert "per-pattern ranking" in text and "…" not in text and "demo:per_pattern #1: val 86.00%" in text
    wide = CliRunner(env=env).invoke(app, ["compare", "demo", "--wide"]).stdout
    assert "per_pattern / one_round" in wide and "train MACs total" in wide


def test_dry_run_fits_80_columns(write_space):
    path = write_space(model={"name": "vit",
                              "options": {"hidden": None, "patch_size": 4, "dim": 32, "depth": 2, "heads": 2},
                              "include": ["blocks.*"]}, space={"blocks": ["2x2", "4x4", "8x8"]})
    result = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["run", path.name, "--dry-run"])  # cwd: the workdir
    assert result.exit_code == 0, result.stderr
    assert max(len(line.rstrip()) for line in result.stdout.splitlines()) <= 80, result.stdout
    assert "blocks.1.attn.proj" in result.stdout and "…" not in result.stdout
    wide = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["run", path.name, "--dry-run", "--wide"]).stdout
    assert "model vit {'patch_size': 4, 'dim': 32, 'depth': 2, 'heads': 2}" in wide  # one line


def test_version_prints_the_package_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout == f"kronsearch {kronsearch.__version__}\n"


def test_piped_show_is_never_cut_to_the_terminal_width(demo):
    result = CliRunner(env={"COLUMNS": "40"}).invoke(app, ["show", "demo", "--wide"])
    assert result.exit_code == 0, result.stderr
    assert "…" not in result.stdout
    assert "rank=2 lambda1=0.002 lambda2=0.0001" in result.stdout and "out of memory" in result.stdout


SHOW_MODULES = """
import atexit, sys
atexit.register(lambda: print(*(m for m in ("ray", "torch") if m in sys.modules)))
from kronsearch.cli import main
sys.argv = ["kronsearch", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("command", [["show", "demo"], ["compare", "demo"],
                                     ["export", "demo:one_round", "--out", "pattern-only.yaml"]])
def test_read_commands_import_neither_ray_nor_torch(demo, command):
    done = subprocess.run([sys.executable, "-c", SHOW_MODULES, *command], cwd=demo, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == ""  # the modules of the two that were loaded: none
