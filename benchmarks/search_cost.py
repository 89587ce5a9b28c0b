"""What a search costs to reach a good pattern: one_round, per_pattern and hybrid at the same trial count.

Full run (needs Fashion-MNIST: apt-get install dataset-fashion-mnist); tasks are independent, so
processes can share a machine:

    python benchmarks/search_cost.py --tasks mlp-fashion
    python benchmarks/search_cost.py --tasks lenet5-fashion
    python benchmarks/search_cost.py --tasks vit-digits

Three seeds (the default) say little about MACs: per_pattern's cost follows the blocks its sampler draws
(on the MLP its studies cost 0.8e10 to 3.9e10 MACs over ten seeds). docs/benchmarks/search-cost.md (table 11) uses
`--seeds 0,1,2,3,4,5,6,7,8,9` for the MLP and the ViT (about 2.3 minutes a seed here) and 0-4 for
LeNet-5 (about 9 minutes a seed).

mlp-long is the users' regime (24 epochs, a 784-256-10 MLP): about 4x a short task's time a seed.

`--per-trial` also prints every trial's state, params, kept blocks and training MACs (where a study's
MACs go).

Smoke run for CI (digits only, one seed, 2 trials of 1 epoch; its numbers mean nothing):

    python benchmarks/search_cost.py --smoke

Per task and seed, every strategy runs as `kronsearch run` would (kronsearch.search.run_search, a
fresh study in a temporary folder, the space's own sampler and median pruner, `--trials` trials),
and every candidate block is trained alone once (rank 1, lambda2 at the range's geometric middle)
as the reference for the pick. Reported per task and strategy, mean over the seeds:

- best-so-far test accuracy of the tolerance pick (kronsearch.record.tolerance_pick: the cheapest
  trial within `--tolerance` points of the best val accuracy, as show and export choose) among the
  trials finished within 0.25, 0.5, 1 and 2x the per_pattern study's total training MACs ("-" where
  no trial had finished);
- total training MACs (train_macs_total of every finished trial, pruned ones included; a duplicate
  costs nothing) against per_pattern's: the mean of the per-seed ratios, their range, and the ratio of
  the MACs summed over the seeds (per_pattern's MACs vary with the blocks its sampler happens to draw:
  a seed that drew no 2x2, as costly as the dense layer, makes a small denominator); per seed, the
  share of a study's MACs spent in one-round races (their check included) and in trials that ended
  pruned (their races included); total wall time against per_pattern's;
- the final pick against the blocks alone: its block(s), regret (best test accuracy alone - the
  pick's block alone) and whether it is right (within the tolerance of the best alone and no block
  alone within it is cheaper), and its final MACs against the costliest block alone.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import optuna
import torch
import yaml
from optuna.trial import TrialState
from selection import (
    Task,
    alone_plan,
    fashion_mnist,
    is_right,
    layer_shapes,
    plan_label,
    print_table,
    right_answer,
    run,
    scored,
    tasks_and_seeds,
)

from kronsearch.data import load_dataset
from kronsearch.layers.blocks import format_block, parse_block
from kronsearch.layers.kronify import kronify
from kronsearch.layers.plan import LayerPattern
from kronsearch.record import RACES, TrialRecord, metrics, tolerance_pick, train_macs_total
from kronsearch.report.trials import trial_history
from kronsearch.schema import STUDY_RACE_FALLBACK
from kronsearch.search import run_search
from kronsearch.selection import RACE_CAP, RACE_FALLBACKS
from kronsearch.storage import load_studies

STRATEGIES = ("per_pattern", "one_round", "hybrid")
BUDGETS = (0.25, 0.5, 1.0, 2.0)
LAMBDA2 = (1e-5, 1e-3)

SPACES = {
    "mlp-fashion": {
        "data": {"name": "fashion-mnist", "limit": 10000},
        "model": {"name": "mlp", "options": {"hidden": [256, 256]}, "include": ["layers.*"]},
        "train": {"epochs": 5, "lr": 0.003, "threads": 1},
        "blocks": ["2x2", "4x4", "8x8", "4x16", "16x4"]},
    "lenet5-fashion": {
        "data": {"name": "fashion-mnist", "limit": 10000},
        "model": {"name": "lenet5", "include": ["fc*"]},
        "train": {"epochs": 5, "lr": 0.002, "weight_decay": 0.01, "threads": 1},
        "blocks": ["2x2", "4x4", "8x8", "2x8"]},
    "vit-digits": {
        "data": {"name": "digits"},
        "model": {"name": "vit", "options": {"patch_size": 4, "dim": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0},
                  "include": ["blocks.*"]},
        "train": {"epochs": 12, "batch_size": 64, "lr": 0.005, "weight_decay": 0.05, "warmup_epochs": 1,
                  "threads": 1},
        "blocks": ["2x2", "4x4", "8x8"]},
    # the users' regime (issue 32): 24 epochs, one hidden layer, so the race's quarter gives each candidate 1.2 epochs
    "mlp-long": {
        "data": {"name": "fashion-mnist", "limit": 10000},
        "model": {"name": "mlp", "options": {"hidden": [256]}, "include": ["layers.0"]},
        "train": {"epochs": 24, "lr": 0.003, "threads": 1},
        "blocks": ["2x2", "4x4", "8x8", "4x16", "16x4"]},
}


def space_file(folder: Path, task: str, seed: int, strategy: str, args: argparse.Namespace,
               races: str = RACES[0], fallback: str = STUDY_RACE_FALLBACK, cap: float = RACE_CAP) -> Path:
    """Write the task's space for one seed, strategy, search.races, train.race_fallback and train.race_cap;
    return its path."""
    spec = SPACES[task]
    train = {**spec["train"], "race_fallback": fallback, "race_cap": cap}
    data = dict(spec["data"])
    if args.smoke:
        train["epochs"], data = 1, {"name": "digits", "limit": 300}
    # one study name (and storage file) per variant, else a second one would resume the first's study
    doc = {"name": f"{task}-s{seed}-{races}-{fallback}-{cap:g}", "seed": seed, "data": data, "model": spec["model"],
           "train": train,
           "search": {"strategy": strategy, "trials": args.trials, "tolerance": args.tolerance,
                      "objectives": [{"metric": "val_accuracy", "direction": "maximize"}],
                      "sampler": "tpe", "pruner": "median", "races": races,
                      "one_round_trials": args.one_round_trials},
           "space": {"blocks": spec["blocks"], "ranks": [1, 2],
                     "lambda2": {"low": LAMBDA2[0], "high": LAMBDA2[1], "log": True}}}
    path = folder / f"{task}-s{seed}-{strategy}-{races}-{fallback}-{cap:g}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_study(path: Path, folder: Path) -> tuple[list[optuna.trial.FrozenTrial], dict[int, int], dict[int, int]]:
    """Run one study from its space file in `folder`; return its trials in order, per one-round trial the
    training MACs of its race (its check included: the last race epoch's train_macs_total in history.json), and
    per trial the epochs it trained, its race's included (history.json; a pruned trial keeps no folder, so the
    epochs on its pruning curve, which leaves a race out: backends.base.PlanSteps)."""
    summary = run_search(path, progress=False, studies_dir=folder / "studies")
    study, = load_studies(summary.study_names[0], summary.storage_url)  # opened as show opens it: its trial folders
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    races, epochs = {}, {}
    for trial in trials:
        history = trial_history(study, trial)
        epochs[trial.number] = len(history)
        raced = [e["train_macs_total"] for e in history if e.get("phase") == "select"]
        if raced:
            races[trial.number] = raced[-1]
    return trials, races, epochs


def curve(trials: Sequence[optuna.trial.FrozenTrial],
          tolerance: float) -> list[tuple[int, optuna.trial.FrozenTrial | None]]:
    """(cumulative training MACs, tolerance pick so far) after each finished trial, in trial order."""
    spent, done, points = 0, [], []
    for trial in trials:
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        if TrialRecord.of(trial).duplicate_of is None:
            spent += train_macs_total(trial) or 0
        done.append(trial)
        points.append((spent, tolerance_pick(done, tolerance)))
    return points


def at_budget(points: list[tuple[int, optuna.trial.FrozenTrial | None]], budget: float) -> float | None:
    """Test accuracy of the tolerance pick among the trials finished within `budget` MACs."""
    within = [pick for spent, pick in points if spent <= budget and pick is not None]
    return metrics(within[-1]).get("test_accuracy") if within else None


def pick_plan(trial: optuna.trial.FrozenTrial) -> dict[str, tuple[int, int]]:
    """layer -> block of the trial's final model."""
    return {name: parse_block(entry["block"]) for name, entry in metrics(trial).get("plan", {}).items()}


def trial_lines(task: str, seed: int, strategy: str, trials: Sequence[optuna.trial.FrozenTrial],
                races: dict[int, int], epochs: dict[int, int]) -> str:
    """One line per trial: state, params, the blocks it kept, its training MACs and its race's (where a study's
    MACs go)."""
    lines = [f"  {task} seed {seed} {strategy}, per trial:"]
    for trial in trials:
        blocks = sorted({format_block(b) for b in pick_plan(trial).values()})
        params = ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in trial.params.items())
        head = f"    #{trial.number} {trial.state.name.lower()}: {params}; kept {'/'.join(blocks) or '-'}; "
        if (original := TrialRecord.of(trial).duplicate_of) is not None:  # not trained: no MACs of its own
            lines.append(f"{head}answered from #{original}, no MACs")
            continue
        lines.append(f"{head}{epochs[trial.number]} epochs, MACs {train_macs_total(trial) or 0:.3g}"
                     + (f" (race {races[trial.number]:.3g})" if trial.number in races else "")
                     + (f" (from #{source}'s race)" if (source := TrialRecord.of(trial).race_of) is not None
                        else ""))
    return "\n".join(lines)


def alone_task(task: str, seed: int, args: argparse.Namespace) -> Task:
    spec = SPACES[task]
    options = spec["model"].get("options", {})
    train = {k: v for k, v in spec["train"].items() if k != "threads"}
    train["lambda2"] = (LAMBDA2[0] * LAMBDA2[1]) ** 0.5
    if args.smoke:
        train["epochs"] = 1
    blocks = [tuple(int(v) for v in b.split("x")) for b in spec["blocks"]]

    def data(seed: int, args: argparse.Namespace):
        if args.smoke or spec["data"]["name"] == "digits":
            return load_dataset("digits", seed=0, limit=300 if args.smoke else None)
        return fashion_mnist(spec["data"]["limit"])
    return Task(task, data, spec["model"]["name"], options, tuple(spec["model"]["include"]), blocks, train)


def study_runs(args: argparse.Namespace) -> list[tuple[str, str, str, str, float]]:
    """(label, strategy, search.races, train.race_fallback, train.race_cap) of every study a seed runs: per_pattern
    once (it never races), each other strategy once per --variants entry."""
    return [("per_pattern", "per_pattern", RACES[0], STUDY_RACE_FALLBACK, RACE_CAP)] + [
        (f"{strategy} ({races}, {fallback}{'' if cap == RACE_CAP else f', cap {cap:g}'}"
         f"{f', {args.one_round_trials} one-round' if args.one_round_trials and strategy == 'hybrid' else ''})",
         strategy, races, fallback, cap)
        for races, fallback, cap in args.variants for strategy in args.strategies if strategy != "per_pattern"]


def benchmark(task: str, seeds: Sequence[int], args: argparse.Namespace) -> list[str]:
    runs = study_runs(args)
    rows: dict[str, list[dict]] = {label: [] for label, *_ in runs}
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="kronsearch-cost-") as tmp:
            folder = Path(tmp)
            studies = {}
            for label, strategy, race_mode, fallback, cap in runs:
                start = time.perf_counter()
                space = space_file(folder, task, seed, strategy, args, race_mode, fallback, cap)
                trials, races, epochs = run_study(space, folder)
                studies[label] = (trials, races, time.perf_counter() - start)
                if args.per_trial:
                    print(trial_lines(task, seed, label, trials, races, epochs), flush=True)
        bench_task = alone_task(task, seed, args)
        data = bench_task.data(seed, args)
        shapes = layer_shapes(bench_task, data)
        alone = {}
        for cand in bench_task.candidates:
            plan = alone_plan(cand, shapes, bench_task.candidates)
            alone.setdefault(plan_label(plan), run(bench_task, data, seed, lambda m, p=plan: kronify(
                m, {n: LayerPattern(b, 1) for n, b in p.items()})))
        reference = curve(studies["per_pattern"][0], args.tolerance)[-1][0] if studies["per_pattern"][0] else 0
        for strategy, (trials, races, wall) in studies.items():
            points = curve(trials, args.tolerance)
            final = points[-1][1] if points else None
            plan = {n: b for n, b in pick_plan(final).items() if n in shapes} if final else {}
            label = plan_label(plan) if plan else None
            if label is not None and label not in alone:
                alone[label] = run(bench_task, data, seed, lambda m, p=plan: kronify(
                    m, {n: LayerPattern(b, 1) for n, b in p.items()}))
            sweep = {k: alone[k] for k in dict.fromkeys(plan_label(alone_plan(c, shapes, bench_task.candidates))
                                                          for c in bench_task.candidates)}
            best = max(r.test_accuracy for r in sweep.values())
            rows[strategy].append({
                "budgets": [at_budget(points, b * reference) for b in BUDGETS],
                "macs": points[-1][0] if points else 0, "wall": wall, "reference": reference,
                "pick": label, "right": label is not None and is_right(label, *scored({**sweep, label: alone[label]}),
                                                                       args.tolerance),
                "regret": 100 * (best - alone[label].test_accuracy) if label else None,
                "cost": alone[label].final_macs / max(r.final_macs for r in sweep.values()) if label else None,
                "answer": right_answer(*scored(sweep), args.tolerance)})
            spent = max(rows[strategy][-1]["macs"], 1)
            pruned = sum(train_macs_total(t) or 0 for t in trials if t.state == TrialState.PRUNED)
            reused = sum(TrialRecord.of(t).race_of is not None for t in trials)
            print(f"  {task} seed {seed} {strategy}: {len(points)} trials finished ({reused} reused a race), "
                  f"MACs {rows[strategy][-1]['macs']:.3g} (races {sum(races.values()) / spent:.0%}, "
                  f"pruned trials {pruned / spent:.0%}), "
                  f"wall {wall:.0f} s, pick {label} (right answer {rows[strategy][-1]['answer']}), "
                  f"at 0.25/0.5/1/2x per_pattern MACs: {rows[strategy][-1]['budgets']}", flush=True)
    return [summary_row(task, strategy, runs, rows["per_pattern"]) for strategy, runs in rows.items()]


def mean(values: Sequence[float | None], scale: float = 1.0, digits: int = 2) -> str:
    known = [v for v in values if v is not None]
    text = f"{scale * statistics.fmean(known):.{digits}f}" if known else "-"
    return text if len(known) == len(values) else f"{text} ({len(known)}/{len(values)})"


def level_or_ahead(runs: list[dict], reference: list[dict]) -> str:
    """Per budget, on how many seeds the pick's test accuracy is at least per_pattern's; a study with no finished
    trial by then counts as lowest (behind per_pattern's where that had one, level where neither had)."""
    def value(accuracy: float | None) -> float:
        return -1.0 if accuracy is None else accuracy

    return ", ".join(f"{sum(value(r['budgets'][i]) >= value(p['budgets'][i]) for r, p in zip(runs, reference))}"
                     f"/{len(runs)}" for i in range(len(BUDGETS)))


def summary_row(task: str, strategy: str, runs: list[dict], reference: list[dict]) -> str:
    budgets = [mean([r["budgets"][i] for r in runs], 100) for i in range(len(BUDGETS))]
    macs = [r["macs"] / max(p["macs"], 1) for r, p in zip(runs, reference)]
    summed = sum(r["macs"] for r in runs) / max(sum(p["macs"] for p in reference), 1)
    wall = [r["wall"] / max(p["wall"], 1e-9) for r, p in zip(runs, reference)]
    picks = ", ".join(str(r["pick"]) for r in runs)
    return (f"| {task} | {strategy} | " + " | ".join(budgets)
            + f" | {mean(macs)} | {min(macs):.2f}-{max(macs):.2f} | {summed:.2f} | {mean(wall)} | {picks} "
            f"| {sum(r['right'] for r in runs)}/{len(runs)} "
            f"| {mean([r['regret'] for r in runs])} | {mean([r['cost'] for r in runs])} "
            f"| {level_or_ahead(runs, reference)} |")


HEADER = ("| task | strategy | " + " | ".join(f"test acc of the pick at {b}x" for b in BUDGETS)
          + " | MACs / per_pattern | per seed | summed over seeds | wall / per_pattern | picks (per seed) | pick right "
          "| regret (points) | pick's MACs / costliest | seeds at or above per_pattern at "
          + "/".join(f"{b}x" for b in BUDGETS) + " |\n|" + "---|" * (11 + len(BUDGETS)))


def _cap(text: str) -> float:
    """A --variants entry's race cap; 0 (refused) where it is not a number."""
    try:
        return float(text)
    except ValueError:
        return 0.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--tasks", default=",".join(SPACES), help="comma list of %(default)s")
    parser.add_argument("--seeds", default="0,1,2", help="comma list (default %(default)s)")
    parser.add_argument("--trials", type=int, default=8, help="trials per study (default %(default)s)")
    parser.add_argument("--tolerance", type=float, default=0.5, help="accuracy points (default %(default)s)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help="comma list of %(default)s (per_pattern always runs: the reference)")
    parser.add_argument("--variants", default=f"{RACES[0]}:{STUDY_RACE_FALLBACK}",
                        help=f"comma list of RACES:FALLBACK[:CAP], search.races in {', '.join(RACES)}, "
                             f"train.race_fallback in {', '.join(RACE_FALLBACKS)} and train.race_cap >= 1 (default "
                             f"{RACE_CAP:g}); one_round and hybrid run once per entry (default %(default)s)")
    parser.add_argument("--one-round-trials", type=int, default=None,
                        help="hybrid: search.one_round_trials (default: the space's default, a third of --trials)")
    parser.add_argument("--per-trial", action="store_true", help="print every trial's params, blocks and MACs")
    parser.add_argument("--smoke", action="store_true", help="tiny run on digits for CI; no Fashion-MNIST needed")
    args = parser.parse_args(argv)
    tasks_and_seeds(parser, args, list(SPACES))
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    variants = [v.strip().split(":") for v in args.variants.split(",") if v.strip()]
    if not set(args.strategies) <= set(STRATEGIES) or not variants or not all(
            len(v) in (2, 3) and v[0] in RACES and v[1] in RACE_FALLBACKS and (len(v) == 2 or _cap(v[2]) >= 1)
            for v in variants):
        parser.error(f"--strategies takes {', '.join(STRATEGIES)}; --variants takes RACES:FALLBACK[:CAP] entries, "
                     f"RACES in {', '.join(RACES)}, FALLBACK in {', '.join(RACE_FALLBACKS)}, CAP a number >= 1")
    args.variants = [(v[0], v[1], _cap(v[2]) if len(v) == 3 else RACE_CAP) for v in variants]
    if args.trials < 1 or not 0 <= args.tolerance <= 100 or not 1 <= (args.one_round_trials or 1) <= args.trials:
        parser.error("--trials must be >= 1, --tolerance in [0, 100], --one-round-trials in [1, --trials]")
    if args.smoke:
        args.seeds, args.trials = args.seeds[:1], 2
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = []
    for task in args.tasks:
        rows += benchmark(task, args.seeds, args)
    print_table(HEADER, rows, start)


if __name__ == "__main__":
    main()
