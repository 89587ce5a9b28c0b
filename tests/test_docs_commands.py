"""Every shell command of the documentation (README.md, docs/) runs as written, or says why CI cannot run it.

Each shell block is marked `<!-- docs-test: run -->` or `<!-- docs-test: skip <why> -->` on the line above its
fence (tests/docblocks.py). A "run" block runs through bash in a fresh folder holding copies of the shipped
spaces cut to tiny runs (2 trials of 2 epochs on 200 examples), with `kronsearch` and `python` this checkout's,
as the examples' tests run the examples. The python blocks run in tests/test_load_model.py (README, inference)
and tests/test_one_round.py (your own loop).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from tests.docblocks import ROOT, ShellBlock, shell_blocks
from tests.postgres import postgres_server

TINY = {"search": {"trials": 2}, "train": {"epochs": 1, "select_epochs": 1, "warmup_epochs": 0, "finetune_epochs": 0},
        "data": {"limit": 150}}
OPTUNA_CLI = "import sys, optuna.cli; sys.exit(optuna.cli.main())"  # `optuna`, as its console script runs it


def unique_run_blocks() -> list[ShellBlock]:
    """The "run" blocks, one per distinct text (the README and docs/workflow.md share the workflow's)."""
    seen: dict[str, ShellBlock] = {}
    for block in shell_blocks():
        if block.marker == "run":
            seen.setdefault(block.body, block)
    return list(seen.values())


def tiny_space(text: str) -> str:
    """A shipped space file cut to a tiny run; its comments go (the runs only need its keys)."""
    space = yaml.safe_load(text)
    for section, changes in TINY.items():
        if section == "data" and "factory" in space["data"]:
            continue  # a data factory makes its own splits: no limit
        space.setdefault(section, {}).update(changes)
    return yaml.safe_dump(space, sort_keys=False)


def docs_folder(folder: Path) -> dict[str, str]:
    """Lay out `folder` as the docs' commands expect a clone to look (search_spaces/, examples/); the environment
    in which `kronsearch`, `optuna` and `python` are this interpreter running this checkout."""
    spaces = folder / "search_spaces"
    spaces.mkdir()
    for path in (ROOT / "search_spaces").glob("*.yaml"):
        (spaces / path.name).write_text(tiny_space(path.read_text(encoding="utf-8")), encoding="utf-8")
    shutil.copytree(ROOT / "examples", folder / "examples")
    bin_dir = folder / ".bin"
    bin_dir.mkdir()
    for name, command in (("python", f'exec "{sys.executable}" "$@"'),
                          ("kronsearch", f'exec "{sys.executable}" -m kronsearch "$@"'),
                          ("optuna", f'exec "{sys.executable}" -c "{OPTUNA_CLI}" "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{command}\n")
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1", "COLUMNS": "100", "RAY_AUTH_MODE": "disabled"}


def test_every_shell_block_of_the_docs_is_run_or_says_why_not():
    blocks = shell_blocks()
    assert len(blocks) >= 10
    unmarked = [b.name for b in blocks if not b.marker]
    assert not unmarked, f"shell blocks without <!-- docs-test: run --> or <!-- docs-test: skip why -->: {unmarked}"
    unexplained = [b.name for b in blocks if b.marker == "skip" and len(b.reason) < 10]
    assert not unexplained, f"skipped shell blocks must say why: {unexplained}"


def test_the_docs_run_the_main_workflow():
    runs = "\n".join(block.body for block in unique_run_blocks())
    for command in ("kronsearch run search_spaces/vit.yaml", "kronsearch show", "kronsearch compare",
                    "kronsearch plot", "kronsearch export"):
        assert command in runs, command


@pytest.mark.slow  # each block trains a few tiny studies: 15-40 s
@pytest.mark.parametrize("block", unique_run_blocks(), ids=lambda block: block.name)
def test_the_docs_shell_block_runs_as_written(block: ShellBlock, tmp_path: Path):
    env = docs_folder(tmp_path)
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.body], cwd=tmp_path, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert done.returncode == 0, f"{block.name} exited {done.returncode}:\n{done.stdout[-3000:]}"
    assert "Traceback" not in done.stdout and "error:" not in done.stdout, done.stdout[-3000:]


@pytest.mark.slow  # a PostgreSQL server and two tiny runs at once: about 30 s
def test_the_machines_page_postgresql_commands_run_as_two_machines_on_one_server(tmp_path: Path):
    (block,) = [b for b in shell_blocks() if b.page == "docs/machines.md" and "kronsearch run" in b.body
                and "postgresql" in b.body]
    run_line, show_line = [line.split("  #")[0] for line in block.body.splitlines()]
    env = docs_folder(tmp_path)
    with postgres_server() as url:
        def as_here(line: str) -> str:  # the page's placeholders: its server, its space file and search name
            line = re.sub(r"postgresql\+psycopg://\S+", url, line).replace("/mnt/shared", str(tmp_path / "shared"))
            return line.replace("space.yaml", "search_spaces/vit.yaml").replace("my-search", "vit-digits")

        machines = [subprocess.Popen(["bash", "-c", as_here(run_line)], cwd=tmp_path, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
        outputs = [machine.communicate(timeout=300)[0] for machine in machines]
        assert [m.returncode for m in machines] == [0, 0], outputs
        shown = subprocess.run(["bash", "-c", as_here(show_line)], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        assert shown.returncode == 0, shown.stdout
        trials = optuna.load_study(study_name="vit-digits:one_round", storage=url).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2  # the space's 2 trials, no more
    assert "2 trials" in shown.stdout and not any("error:" in output for output in outputs)
