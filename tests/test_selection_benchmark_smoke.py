"""Smoke tests of the selection benchmarks (selection.py, signals.py, search_cost.py, planted.py): `--smoke` runs
without Fashion-MNIST and prints the summary table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each runs a selection benchmark (8-15 s each); CI runs them

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("synthetic", "vit-digits", "narrow-mlp", "tie-mlp", "mlp-fashion", "lenet5-fashion", "narrow-mlp-long",
         "tie-mlp-long")


def run_script(*args: str, script: str = "selection.py") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_selection_smoke_prints_one_summary_row_per_task_with_every_metric():
    done = run_script("--smoke")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count("| task | pick right | right: smallest | right: largest | right: best on average "
                     "| right: another seed's sweep | regret |") == 1
    rows = [line for line in out.splitlines() if re.match(r"\| [a-z0-9-]+ \| \d+/1 \|", line)]
    assert [r.split(" | ")[0][2:] for r in rows] == list(TASKS)
    assert all(len(r.strip("|").split("|")) == 20 for r in rows)
    for task in TASKS:  # one line per (task, seed): every candidate alone, the right answer, the pick, the cost
        assert re.search(rf"  {task} seed 0: alone .*; right .+; picked .* estimates .* cost x[\d.]+ MACs", out)


def test_another_seeds_sweep_takes_each_seeds_right_answer_as_the_pick_on_every_other_seed():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from selection import another_seeds_sweep
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    cost = {"2x2": (4, 4), "8x8": (1, 1)}
    seeds = [{"alone": {"2x2": 0.90, "8x8": 0.899}, "cost": cost, "best": 0.90},  # right: 8x8 (0.1 under, cheaper)
             {"alone": {"2x2": 0.90, "8x8": 0.88}, "cost": cost, "best": 0.90}]  # right: 2x2 (8x8 is 2 under)
    # seed 0 takes seed 1's 2x2 (within 0.5 but not the cheapest: wrong, regret 0); seed 1 takes 8x8 (wrong, regret 2)
    assert another_seeds_sweep(seeds, 0.5) == (0, 2, pytest.approx(1.0))
    assert another_seeds_sweep(seeds, 5.0) == (2, 2, pytest.approx(1.05))  # 8x8 is right on both: regret 0.1 and 2


def test_selection_rejects_an_unknown_task_naming_the_allowed_ones():
    done = run_script("--tasks", "imagenet")
    assert done.returncode == 2
    assert ("--tasks: unknown ['imagenet']; allowed: synthetic, vit-digits, narrow-mlp, tie-mlp, mlp-fashion, "
            "lenet5-fashion, narrow-mlp-long, tie-mlp-long") in done.stderr


def test_signals_smoke_prints_a_correlation_row_per_task_and_race_signal():
    done = run_script("--smoke", "--tasks", "tie-mlp,synthetic", script="signals.py")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if re.match(r"\| (tie-mlp|synthetic) \| race val", line)]
    assert len(rows) == 4
    assert all(re.search(r"\| [+-]\d\.\d\d / \d+% \|", r) for r in rows)


@pytest.fixture(scope="module")
def search_cost_smoke() -> subprocess.CompletedProcess:
    done = run_script("--smoke", "--per-trial", "--tasks", "vit-digits",
                      "--variants", "per_rank:most_accurate,per_trial:most_accurate:1.5",
                      script="search_cost.py")
    assert done.returncode == 0, done.stderr
    return done


def test_search_cost_smoke_prints_a_row_per_strategy_with_costs_against_per_pattern(search_cost_smoke):
    rows = [line for line in search_cost_smoke.stdout.splitlines() if line.startswith("| vit-digits |")]
    assert [r.split(" | ")[1] for r in rows] == [
        "per_pattern", "one_round (per_rank, most_accurate)", "hybrid (per_rank, most_accurate)",
        "one_round (per_trial, most_accurate, cap 1.5)", "hybrid (per_trial, most_accurate, cap 1.5)"]
    assert rows[0].split(" | ")[6:9] == ["1.00", "1.00-1.00", "1.00"]  # per_pattern's MACs against its own
    assert all(re.search(r"\| [01]/1, [01]/1, [01]/1, [01]/1 \|$", r) for r in rows)  # seeds level or ahead


def test_search_cost_smoke_runs_the_long_training_task_under_the_study_defaults():
    done = run_script("--smoke", "--tasks", "mlp-long", "--one-round-trials", "1", script="search_cost.py")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| mlp-long |")]
    assert [r.split(" | ")[1] for r in rows] == ["per_pattern", "one_round (per_rank, cheapest)",
                                                 "hybrid (per_rank, cheapest, 1 one-round)"]


def test_search_cost_per_trial_prints_each_trials_state_params_blocks_and_macs(search_cost_smoke):
    out = search_cost_smoke.stdout
    for label in ("per_pattern", "one_round (per_rank, most_accurate)", "hybrid (per_rank, most_accurate)",
                  "one_round (per_trial, most_accurate, cap 1.5)"):
        assert f"vit-digits seed 0 {label}, per trial:" in out
    trials = re.findall(r"    #\d+ (complete|pruned|fail): rank \d.*; kept (\S+); \d+ epochs, MACs (\S+)(.*)", out)
    answered = re.findall(r"    #1 complete: rank \d.*block.*; kept \S+; answered from #0, no MACs", out)
    assert len(trials) == 8 and len(answered) == 2  # two trials per study; each hybrid's seed answered from #0
    assert all(float(macs) > 0 for _, _, macs, _ in trials)
    per_trial = re.findall(r"seed 0 one_round \(per_trial, most_accurate, cap 1.5\), per trial:\n(.*)\n(.*)\n", out)[0]
    races = [float(m) for m in re.findall(r"\(race (\S+)\)", "\n".join(per_trial))]
    assert len(races) == 2 and all(0 < r for r in races)  # every one-round trial raced
    per_rank = re.findall(r"seed 0 one_round \(per_rank, most_accurate\), per trial:\n(.*)\n(.*)\n", out)[0]
    assert "(race " in per_rank[0]  # the first trial races; the second trains its pick if of the same rank
    same_rank = re.search(r"rank (\d)", per_rank[0])[1] == re.search(r"rank (\d)", per_rank[1])[1]
    assert ("(from #0's race)" in per_rank[1]) == same_rank == ("(race " not in per_rank[1])
    assert re.search(r"seed 0 one_round \(per_rank, most_accurate\): .*\(races \d+%, pruned trials \d+%\)", out)


def test_planted_smoke_prints_each_races_decision_and_the_counts():
    done = run_script("--smoke", script="planted.py")
    assert done.returncode == 0, done.stderr
    lines = re.findall(r"planted (\d+x\d+) seed 0: (\d+x\d+) by (survivor|budget|fallback) at step \d+ "
                       r"\((right|WRONG)\); .*", done.stdout)
    assert [line[0] for line in lines] == ["4x8", "8x2", "16x16"]
    assert all((planted == kept) == (verdict == "right") for planted, kept, _, verdict in lines)
    found = sum(verdict == "right" for *_, verdict in lines)
    assert f"planted block found {found}/3; wrong, reported as decided by evidence" in done.stdout
