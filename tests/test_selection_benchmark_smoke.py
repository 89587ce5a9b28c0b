"""Smoke test of benchmarks/selection.py: `--smoke` runs without Fashion-MNIST and prints the summary table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("synthetic", "vit-digits", "mlp-fashion", "lenet5-fashion")


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "selection.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_selection_smoke_prints_one_summary_row_per_task_with_every_metric():
    done = run_script("--smoke")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count("| task | pick right | regret | regret: smallest | regret: largest |") == 1
    rows = [line for line in out.splitlines() if re.match(r"\| [a-z0-9-]+ \| \d+/1 \|", line)]
    assert [r.split(" | ")[0][2:] for r in rows] == list(TASKS)
    assert all(len(r.strip("|").split("|")) == 14 for r in rows)
    for task in TASKS:  # one line per (task, seed): every candidate alone, the lambda1 kept, the pick, the cost
        assert re.search(rf"  {task} seed 0: alone .* lambda1 [\d.]+ \(val .*\) picked .* cost x[\d.]+ MACs", out)


def test_selection_rejects_an_unknown_task_naming_the_allowed_ones():
    done = run_script("--tasks", "imagenet")
    assert done.returncode == 2
    assert "--tasks: unknown ['imagenet']; allowed: synthetic, vit-digits, mlp-fashion, lenet5-fashion" in done.stderr
