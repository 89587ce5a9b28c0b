"""Wall time of a search on the Ray backend with 1 and with 2 trials in flight, and what pruning saves.

    python benchmarks/ray_concurrency.py              # 4 trials of 20 epochs each, after a one-round trial's
                                                      # 5-epoch race (a few seconds a trial)
    python benchmarks/ray_concurrency.py --epochs 2   # quicker

One local Ray (os.cpu_count() CPUs) serves every run. Each trial reserves 1 CPU and trains with one
torch thread (the Ray backend sets torch's threads from resources_per_trial.cpu). The same 4
one-round configurations (random sampler, fixed seed: each its own rank and lambda2; a trial races
its candidates for a quarter of the epochs, kronsearch.selection.Race, before it trains the epochs)
run with backend.max_concurrent 1 and then 2, each into a fresh study; a warm-up search first loads
torch and the data into both Ray workers, so neither measured run pays for worker start-up. Prints
a markdown table: the wall time of each run, the sum of its trials' own training times (wall_time in
their metrics), and the speed-up (wall time at 1 / wall time at 2). On 2 idle cores the ideal
speed-up is 2; other load on the machine (printed as the 1-minute load average) lowers it.

Pruning: the same --prune-trials per_pattern configurations at max_concurrent 2, once with pruner none and
once with the median pruner, which Ray Tune applies after every epoch (trials stop mid-run). Wall time
and training MACs are compared: each trial's train_macs_total, which a pruned trial records up to the
epoch it stopped after. Everything is written to a temporary folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml
from optuna.trial import FrozenTrial, TrialState

from kronsearch.backends.ray import ray_session
from kronsearch.record import train_macs_total
from kronsearch.search import run_search
from kronsearch.storage import load_studies


def space(epochs: int, trials: int, max_concurrent: int, strategy: str = "one_round", pruner: str = "none") -> dict:
    return {
        "name": "ray-bench", "seed": 0,
        "data": {"name": "digits"},
        "model": {"name": "mlp", "options": {"hidden": [64]}},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 0.003},
        "search": {"strategy": strategy, "trials": trials, "sampler": "random", "pruner": pruner,
                   "save_weights": False},
        "backend": {"name": "ray", "max_concurrent": max_concurrent, "max_retries": 0,
                    "resources_per_trial": {"cpu": 1, "gpu": 0}},
        # a one-round trial samples rank and lambda2 (the race has no searched knob): the trials differ by lambda2
        "space": {"blocks": ["2x2", "4x4"], "ranks": [1, 2], "lambda2": {"low": 0.00001, "high": 0.001}},
    }


def timed_search(folder: Path, name: str, raw: dict) -> tuple[float, list[FrozenTrial]]:
    """(wall seconds, trials) of one fresh search."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    storage = f"sqlite:///{folder / name}.db"
    start = time.perf_counter()
    run_search(path, storage=storage, fresh=True, progress=False, studies_dir=folder / "studies")
    wall = time.perf_counter() - start
    (study,) = load_studies(f"ray-bench:{raw['search']['strategy']}", storage)
    return wall, study.get_trials()


def complete(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE]


def training_macs(trials: list[FrozenTrial]) -> int:
    """Training MACs of a run: each trial's own count, a pruned one's up to the epoch it stopped after."""
    return sum(train_macs_total(t) for t in trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--prune-trials", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kronsearch-bench-") as tmp:
        folder = Path(tmp)
        os.chdir(folder)  # nothing lands in the source tree
        start = time.perf_counter()
        with ray_session(None, folder):
            ray_start = time.perf_counter() - start
            timed_search(folder, "warmup", space(1, 2, 2))  # imports and data in both workers
            rows = []
            for concurrent in (1, 2):
                load = os.getloadavg()[0]
                wall, trials = timed_search(folder, f"c{concurrent}", space(args.epochs, args.trials, concurrent))
                rows.append((concurrent, wall, trials, load))
            pruning = []
            for pruner in ("none", "median"):
                load = os.getloadavg()[0]
                raw = space(args.epochs, args.prune_trials, 2, "per_pattern", pruner)
                pruning.append((pruner, *timed_search(folder, f"p-{pruner}", raw), load))
    print(f"{args.trials} one-round trials of {args.epochs} epochs after a race of a quarter of them (digits, "
          f"mlp [64], 1 CPU and 1 torch thread per trial); "
          f"{os.cpu_count()} CPUs; starting Ray took {ray_start:.1f} s (not included below)\n")
    print("| max_concurrent | wall time (s) | sum of trial times (s) | complete trials | load avg before |")
    print("|---|---|---|---|---|")
    for concurrent, wall, trials, load in rows:
        done = complete(trials)
        print(f"| {concurrent} | {wall:.1f} | {sum(t.user_attrs['wall_time'] for t in done):.1f} | "
              f"{len(done)} | {load:.2f} |")
    print(f"\nspeed-up (wall time at max_concurrent 1 / at 2): {rows[0][1] / rows[1][1]:.2f}x\n")
    print_pruning(pruning, args.epochs)


def print_pruning(runs: list[tuple[str, float, list[FrozenTrial], float]], epochs: int) -> None:
    """The pruning table: each pruner's wall time and training MACs, and what the median pruner saved."""
    print(f"{len(runs[0][2])} per_pattern trials of {epochs} epochs at max_concurrent 2, pruner none vs median "
          f"(the same configurations)\n")
    print("| pruner | wall time (s) | complete / pruned | epochs trained | training MACs | wall time saved | "
          "MACs saved | load avg before |")
    print("|---|---|---|---|---|---|---|---|")
    base_wall, base_macs = runs[0][1], training_macs(runs[0][2])
    for pruner, wall, trials, load in runs:
        macs = training_macs(trials)
        pruned = sum(t.state == TrialState.PRUNED for t in trials)
        trained = sum(len(t.intermediate_values) for t in trials)
        print(f"| {pruner} | {wall:.1f} | {len(complete(trials))} / {pruned} | {trained} | {macs:.3g} | "
              f"{1 - wall / base_wall:.0%} | {1 - macs / base_macs:.0%} | {load:.2f} |")


if __name__ == "__main__":
    main()
