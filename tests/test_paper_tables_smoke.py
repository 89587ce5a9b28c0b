"""Smoke test of benchmarks/paper_tables.py: every `--table` runs with `--smoke` (digits, no Fashion-MNIST)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each runs benchmarks/paper_tables.py (8-16 s each); CI runs them

ROOT = Path(__file__).resolve().parents[1]


def smoke(table: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paper_tables.py"), "--table", table, "--smoke"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


HEADER = "| method | block | rank | test acc | block sparsity | train params | train MACs | inference nnz | setting |"


@pytest.mark.parametrize("table, blocks", [("linear", ["2x2", "2x8", "5x4"]), ("lenet5", ["4x4 (fc3 2x2)"]),
                                           ("vit", ["4x4"])])
def test_model_tables(table, blocks):
    out = smoke(table)
    assert HEADER in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and line.count("|") == 10]
    methods = [r[0].lstrip("| ") for r in rows[1:]]  # rows[0] is the header
    assert methods[0] == "dense"
    for method in ("group_lasso", "elastic_group_lasso", "rigl", "iterative_pruning", "**Kronecker**"):
        assert {r[1] for r in rows[1:] if r[0].lstrip("| ") == method} == set(blocks)
    for r in rows[1:]:
        if r[0].lstrip("| ") in ("group_lasso", "elastic_group_lasso", "rigl", "iterative_pruning"):
            assert r[4] == "0.500"  # pruned to the target exactly
    if table == "vit":
        assert re.search(r"\| \*\*one round\*\* \|", out) and "| 8x8 alone |" in out


def test_search_table():
    out = smoke("search")
    for strategy in ("one_round", "per_pattern", "hybrid"):
        assert re.search(rf"\| vit\.yaml \| {strategy} \| \d+ \| \d+ \(", out)
    assert "Agreement (kronsearch.report.compare_data):" in out


def test_speed_table():
    out = smoke("speed")
    assert "| out x in | block | rank |" in out
    for label in ("dense", "Kronecker 4x4 r1"):
        assert re.search(rf"\| {label} \| [\d,]+ \| [\d,]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", out)
