"""Smoke test of benchmarks/selection.py: `--smoke` runs without Fashion-MNIST and prints the table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_selection_smoke():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "selection.py"), "--smoke"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "| model | run | blocks | test acc | block sparsity | train params | train MACs/sample | wall s |" in out
    rows = [line for line in out.splitlines() if re.match(r"\| (linear|lenet5) \|", line)]
    # linear: 4 candidates alone + the one round; lenet5: 2x2, 4x4, 8x8 alone (16x16 divides no layer) + one round
    assert [r.split(" | ")[0:2] for r in rows] == (
        [["| linear", f"{c} alone"] for c in ("2x2", "4x4 -> 2x8", "8x8 -> 5x16", "16x16 -> 10x32")]
        + [["| linear", "**one round**"]]
        + [["| lenet5", f"{c} alone"] for c in ("2x2", "4x4", "8x8")]
        + [["| lenet5", "**one round**"]])
    assert all(len(r.split(" | ")) == 8 for r in rows)
    assert "lenet5.fc3 (10x84): candidates 2x2; dropped 4x4, 8x8, 16x16 (do not divide)" in out
    assert re.search(r"\*\*linear\*\*: best alone .* wall time x[\d.]+ \(CPU time x[\d.]+\), train_macs_total x[\d.]+", out)
    assert re.search(r"\*\*lenet5\*\*: best alone .* wall time x[\d.]+ \(CPU time x[\d.]+\), train_macs_total x[\d.]+", out)
