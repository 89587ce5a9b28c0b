"""Does the one round pick the block that is best alone, and at the cost of one training?

Full run (needs Fashion-MNIST: apt-get install dataset-fashion-mnist); the four tasks are independent,
so two processes can share a 2-core machine:

    python benchmarks/selection.py --tasks synthetic,vit-digits
    python benchmarks/selection.py --tasks mlp-fashion,lenet5-fashion

Smoke run for CI (digits only, one seed, tiny budgets; checks the script runs, its numbers mean nothing):

    python benchmarks/selection.py --smoke

Tasks (TASKS below; narrow-mlp-long and tie-mlp-long are narrow-mlp and tie-mlp at 24 epochs, the users'
regime where the race's quarter gives each candidate more than an epoch): the synthetic planted-block task (a
linear layer whose teacher is block-sparse with the block planted per seed, cycling 4x4, 8x8, 2x8, 8x2, 2x2, so
the largest candidate is the planted one on seed 1); a small ViT on scikit-learn's digits (every Linear of the
blocks picks its own block); an MLP on Fashion-MNIST (the 256-wide hidden layer picks, the head stays dense);
LeNet-5 on Fashion-MNIST (fc1, fc2, fc3 pick among the candidates that divide them). Fashion-MNIST trains on the
first `--limit` examples and is evaluated on its full 10k test set.

Per task and seed:
- every candidate is trained alone (a candidate that does not divide a layer is replaced there by
  the largest dividing candidate no taller than it), same epochs and settings;
- the one round (kronify candidates=..., the trainer's race, kronsearch/selection.py) runs once at
  `--tolerance`;
- if the one round's per-layer pick is not one of the runs alone, that plan is retrained alone.

Metrics: right = the pick is within the tolerance of the best test accuracy alone and no run alone
within it is cheaper (final MACs, then parameters), next to how often three fixed rules are right
(always the smallest candidate, always the largest, always the candidate best on average over the
seeds, which needs hindsight) and the noise ceiling of "right": for every ordered pair of seeds, the
right answer of one seed's full sweep (every candidate alone) taken as the pick on the other seed,
a sweep that is right with certainty on its own seed; regret = best test accuracy alone - the pick's test
accuracy alone (the picked plan retrained alone), and the fixed rules' and the other seed's sweep's regrets; the
pick's final MACs over the costliest candidate's; final gap = the one round's own final test accuracy - the best
alone; cost = the one-round run's train_macs_total (its race's validation passes included) and wall time against
one training of the pick alone and against the sweep (all runs alone); fell back = runs where a layer's race
decided by "fallback" (the evidence did not separate candidates that still learned, kronsearch/evidence.py);
wrong, decided by evidence = runs whose pick is not right although every layer decided by evidence.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from kronsearch.data import DataSplits, load_dataset
from kronsearch.layers.blocks import Block, format_block, valid_blocks
from kronsearch.layers.kronify import kronify
from kronsearch.layers.plan import LayerPattern
from kronsearch.models import build_model
from kronsearch.selection import RACE_FALLBACKS
from kronsearch.trainer import TrainConfig, TrainResult, seed_everything, train

PLANTED = [(4, 4), (8, 8), (2, 8), (8, 2), (2, 2)]


def fashion_mnist(limit: int | None) -> DataSplits:
    """Fashion-MNIST with at most `limit` training examples; val and test whole."""
    data = load_dataset("fashion-mnist", seed=0)
    if limit is None:
        return data
    return replace(data, train=TensorDataset(*(t[:limit] for t in data.train.tensors)))


def upsampled_digits(limit: int | None, side: int = 16) -> DataSplits:
    """scikit-learn digits resized to side x side (LeNet-5 needs >= 12), `limit` training examples."""
    data = load_dataset("digits", seed=0, limit=limit)

    def resize(split: TensorDataset) -> TensorDataset:
        x, y = split.tensors
        return TensorDataset(F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False), y)

    return replace(data, train=resize(data.train), val=resize(data.val), test=resize(data.test),
                   input_shape=(1, side, side), name="digits-16x16")


def stat(values: Sequence[float], digits: int) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


@dataclass
class Task:
    """One benchmark task: its data per seed, model, decomposed layers, candidates and training."""

    name: str
    data: Callable[[int, argparse.Namespace], DataSplits]  # (seed, args) -> splits
    model: str
    options: dict
    include: tuple[str, ...]
    candidates: list[Block]
    train: dict  # TrainConfig settings shared by every run of the task


def synthetic(seed: int, args: argparse.Namespace) -> DataSplits:
    n_train = 300 if args.smoke else 3000
    return load_dataset("synthetic", block=PLANTED[seed % len(PLANTED)], sparsity=0.5, seed=seed,
                        n_train=n_train, n_test=2000)


TASKS = {
    "synthetic": Task("synthetic", synthetic, "linear", {}, ("fc",),
                      [(2, 2), (4, 4), (8, 8), (2, 8), (8, 2)], {"epochs": 10, "lr": 1e-2, "lambda2": 1e-4}),
    "vit-digits": Task("vit-digits",
                       lambda seed, args: load_dataset("digits", seed=0, limit=300 if args.smoke else None),
                       "vit", {"patch_size": 4, "dim": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0}, ("blocks.*",),
                       [(2, 2), (4, 4), (8, 8)],
                       {"epochs": 12, "lr": 5e-3, "batch_size": 64, "weight_decay": 0.05, "warmup_epochs": 1,
                        "lambda2": 1e-4}),
    # a 64-wide hidden layer: a 16x16 block leaves S and A with 4 x 49 = 196 entries each
    "narrow-mlp": Task("narrow-mlp", lambda seed, args: fashion_mnist(args.limit), "mlp", {"hidden": [64]},
                       ("layers.0",), [(2, 2), (4, 4), (8, 8), (16, 16)], {"epochs": 6, "lr": 3e-3, "lambda2": 1e-4}),
    # a 256-wide hidden layer, five blocks of three shapes: all within about a point of each other
    "tie-mlp": Task("tie-mlp", lambda seed, args: fashion_mnist(args.limit), "mlp", {"hidden": [256]},
                    ("layers.0",), [(2, 2), (4, 4), (8, 8), (4, 16), (16, 4)],
                    {"epochs": 6, "lr": 3e-3, "lambda2": 1e-4}),
    "mlp-fashion": Task("mlp-fashion", lambda seed, args: fashion_mnist(args.limit), "mlp", {"hidden": [256]},
                        ("layers.0",), [(2, 2), (4, 4), (8, 8), (16, 16)], {"epochs": 8, "lr": 3e-3, "lambda2": 1e-4}),
    "lenet5-fashion": Task("lenet5-fashion", lambda seed, args: fashion_mnist(args.limit), "lenet5", {}, ("fc*",),
                           [(2, 2), (4, 4), (8, 8)], {"epochs": 6, "lr": 2e-3, "lambda2": 1e-4}),
}
# the users' regime (issue 32): 24 epochs, so the race's quarter gives each candidate 1.2-1.5 epochs, not 0.3
TASKS |= {f"{name}-long": replace(TASKS[name], name=f"{name}-long", train={**TASKS[name].train, "epochs": 24})
          for name in ("narrow-mlp", "tie-mlp")}
SMOKE_DATA = {name: lambda seed, args: load_dataset("digits", seed=0, limit=300)
              for name in ("mlp-fashion", "narrow-mlp", "tie-mlp", "narrow-mlp-long", "tie-mlp-long")} | {
              "lenet5-fashion": lambda seed, args: upsampled_digits(300)}


def layer_shapes(task: Task, data: DataSplits) -> dict[str, tuple[int, int]]:
    model = build_model(task.model, data.input_shape, data.num_classes, **task.options)
    return {n: (m.out_features, m.in_features) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(fnmatchcase(n, g) for g in task.include)}


def alone_plan(candidate: Block, shapes: dict[str, tuple[int, int]], candidates: list[Block]) -> dict[str, Block]:
    """The candidate in every layer it divides; elsewhere the largest dividing candidate no taller."""
    plan = {}
    for layer, shape in shapes.items():
        fits = [c for c in candidates if c in valid_blocks(*shape)]
        plan[layer] = candidate if candidate in fits else max(
            (c for c in fits if c[0] <= candidate[0]), key=lambda c: (c[0] * c[1], c), default=min(fits))
    return plan


def run(task: Task, data: DataSplits, seed: int, decompose: Callable[[nn.Module], object], **settings) -> TrainResult:
    seed_everything(seed)
    model = build_model(task.model, data.input_shape, data.num_classes, **task.options)
    decompose(model)
    return train(model, data, TrainConfig(**{**task.train, **settings, "seed": seed, "progress": False}))


def plan_label(plan: dict[str, Block]) -> str:
    blocks = [format_block(b) for b in plan.values()]
    return blocks[0] if len(set(blocks)) == 1 else ", ".join(f"{n} {b}" for n, b in zip(plan, blocks))


def scored(results: dict[str, TrainResult]) -> tuple[dict[str, float], dict[str, tuple[int, int]]]:
    """Each run's test accuracy and its cost (final MACs, then parameters): what "right" compares."""
    return ({k: r.test_accuracy for k, r in results.items()},
            {k: (r.final_macs, r.final_params) for k, r in results.items()})


def right_answer(accuracy: dict[str, float], cost: dict[str, tuple[int, int]], tolerance: float) -> str:
    """The cheapest run (final MACs, then parameters) within `tolerance` points of the best test accuracy."""
    best = max(accuracy.values())
    within = [k for k, a in accuracy.items() if 100 * (best - a) <= tolerance]
    return min(within, key=cost.__getitem__)


def is_right(choice: str, accuracy: dict[str, float], cost: dict[str, tuple[int, int]], tolerance: float) -> bool:
    """Within tolerance of the best alone, and no run within tolerance is cheaper."""
    answer = right_answer(accuracy, cost, tolerance)
    return 100 * (max(accuracy.values()) - accuracy[choice]) <= tolerance and cost[choice] <= cost[answer]


def another_seeds_sweep(per_seed: list[dict], tolerance: float) -> tuple[int, int, float]:
    """The noise ceiling of "right": every ordered pair of seeds (a, b), a != b, takes seed b's right answer
    (its full sweep of every candidate alone) as the pick on seed a. Returns (right, pairs, mean regret)."""
    right, regret = 0, []
    for a, b in ((a, b) for a in per_seed for b in per_seed if a is not b):
        choice = right_answer(b["alone"], b["cost"], tolerance)
        right += is_right(choice, a["alone"], a["cost"], tolerance)
        regret.append(100 * (a["best"] - a["alone"][choice]))
    return right, len(regret), statistics.fmean(regret) if regret else float("nan")


def benchmark(task: Task, seeds: Sequence[int], args: argparse.Namespace) -> tuple[list[str], str]:
    """Train everything for one task; return its per-seed lines and its summary table row."""
    lines, per_seed = [], []
    for seed in seeds:
        data = task.data(seed, args)
        shapes = layer_shapes(task, data)
        alone: dict[str, TrainResult] = {}
        for cand in task.candidates:
            plan = alone_plan(cand, shapes, task.candidates)
            key = plan_label(plan)
            if key not in alone:
                alone[key] = run(task, data, seed,
                                 lambda m, p=plan: kronify(m, {n: LayerPattern(b, 1) for n, b in p.items()}))
        budget = {} if args.select_fraction is None else {"select_epochs": args.select_fraction * task.train["epochs"]}
        kept = run(task, data, seed, lambda m: kronify(m, candidates=task.candidates, include=task.include),
                   tolerance=args.tolerance, finetune_epochs=0, race_fallback=args.fallback, **budget)
        pick = {n: tuple(int(v) for v in kept.selected[n].split("x")) for n in shapes}
        pick_key = plan_label(pick)
        labels = [plan_label(alone_plan(c, shapes, task.candidates)) for c in task.candidates]
        sweep = {k: alone[k] for k in labels}
        if pick_key not in alone:
            alone[pick_key] = run(task, data, seed,
                                  lambda m, p=pick: kronify(m, {n: LayerPattern(b, 1) for n, b in p.items()}))
        best = max(r.test_accuracy for r in sweep.values())
        decisions = kept.decisions.values()
        accuracy, cost = scored(alone)
        sweep_accuracy, sweep_cost = scored(sweep)
        per_seed.append({
            "alone": sweep_accuracy, "cost": sweep_cost, "best": best,
            "right_rules": {k: is_right(k, sweep_accuracy, sweep_cost, args.tolerance) for k in labels},
            "right": is_right(pick_key, {**sweep_accuracy, pick_key: accuracy[pick_key]},
                              {**sweep_cost, pick_key: cost[pick_key]}, args.tolerance),
            "pick": alone[pick_key].test_accuracy, "final": kept.test_accuracy,
            "pick_macs": alone[pick_key].final_macs / max(r.final_macs for r in sweep.values()),
            "macs_pick": kept.train_macs_total / alone[pick_key].train_macs_total,
            "wall_pick": kept.wall_time / alone[pick_key].wall_time,
            "macs_sweep": kept.train_macs_total / sum(alone[k].train_macs_total for k in set(labels)),
            "wall_sweep": kept.wall_time / sum(alone[k].wall_time for k in set(labels)),
            "epoch": max(d["epoch"] for d in decisions), "fallback": any(d["by"] == "fallback" for d in decisions),
            "wrong_by_evidence": not is_right(pick_key, {**sweep_accuracy, pick_key: accuracy[pick_key]},
                                              {**sweep_cost, pick_key: cost[pick_key]}, args.tolerance)
            and all(d["by"] != "fallback" for d in decisions)})
        lines.append(
            f"  {task.name} seed {seed}: alone " + ", ".join(f"{k} {alone[k].test_accuracy:.4f}" for k in labels)
            + f"; right {right_answer(sweep_accuracy, sweep_cost, args.tolerance)}; picked {pick_key} "
            f"({alone[pick_key].test_accuracy:.4f} alone), one round final {kept.test_accuracy:.4f}; "
            f"choices at epochs {', '.join(str(d['epoch']) for d in decisions)} of {task.train['epochs']} "
            f"({', '.join(sorted({d['by'] for d in decisions}))}); estimates "
            + "; ".join(", ".join(f"{k} {e['accuracy']}±{e['se']} ({e['steps']} steps)"
                                  for k, e in d["estimates"].items()) for d in decisions)
            + f"; cost x{per_seed[-1]['macs_pick']:.2f} MACs x{per_seed[-1]['wall_pick']:.2f} wall of the pick alone")
        print(lines[-1], flush=True)
    return lines, summary_row(task, per_seed, args.tolerance)


def summary_row(task: Task, per_seed: list[dict], tolerance: float) -> str:
    labels = list(per_seed[0]["alone"])
    mean_alone = {k: statistics.fmean(s["alone"][k] for s in per_seed) for k in labels}
    areas = [h * w for h, w in task.candidates]
    rules = {"smallest": labels[areas.index(min(areas))], "largest": labels[areas.index(max(areas))],
             "best on average": max(mean_alone, key=mean_alone.get)}
    regret = [100 * (s["best"] - s["pick"]) for s in per_seed]
    rule_regret = {r: statistics.fmean(100 * (s["best"] - s["alone"][k]) for s in per_seed) for r, k in rules.items()}
    rule_right = {r: sum(s["right_rules"][k] for s in per_seed) for r, k in rules.items()}
    n = len(per_seed)
    ceiling_right, pairs, ceiling_regret = another_seeds_sweep(per_seed, tolerance)
    return (f"| {task.name} | {sum(s['right'] for s in per_seed)}/{n} | "
            + " | ".join(f"{v}/{n}" for v in rule_right.values()) + f" | {ceiling_right}/{pairs}"
            + f" | {statistics.fmean(regret):.2f} | " + " | ".join(f"{v:.2f}" for v in rule_regret.values())
            + f" | {ceiling_regret:.2f}"
            + f" | {stat([s['pick_macs'] for s in per_seed], 2)}"
            f" | {stat([100 * (s['final'] - s['best']) for s in per_seed], 2)} "
            f"| {stat([s['macs_pick'] for s in per_seed], 2)} | {stat([s['wall_pick'] for s in per_seed], 2)} "
            f"| {stat([s['macs_sweep'] for s in per_seed], 2)} | {stat([s['wall_sweep'] for s in per_seed], 2)} "
            f"| {max(s['epoch'] for s in per_seed)} | {sum(s['fallback'] for s in per_seed)}/{n} "
            f"| {sum(s['wrong_by_evidence'] for s in per_seed)}/{n} |")


HEADER = ("| task | pick right | right: smallest | right: largest | right: best on average "
          "| right: another seed's sweep | regret | regret: smallest | regret: largest | regret: best on average "
          "| regret: another seed's sweep | pick's MACs / costliest | final gap | MACs / pick alone "
          "| wall / pick alone | MACs / sweep | wall / sweep | latest choice (epoch) | fell back "
          "| wrong, decided by evidence |\n|" + "---|" * 20)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma list of %(default)s")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma list (default %(default)s)")
    parser.add_argument("--tolerance", type=float, default=0.5,
                        help="accuracy points: the pick and 'right' both mean the cheapest within it "
                             "(default %(default)s)")
    parser.add_argument("--select-fraction", type=float, default=None,
                        help="one-round selection budget as a fraction of the epochs (default: the trainer's)")
    parser.add_argument("--fallback", choices=RACE_FALLBACKS, default=RACE_FALLBACKS[0],
                        help="train.race_fallback: what a race keeps at its cap, undecided (default %(default)s)")
    parser.add_argument("--limit", type=int, default=10000,
                        help="Fashion-MNIST training examples (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="tiny run on digits for CI; no Fashion-MNIST needed")
    args = parser.parse_args(argv)
    tasks_and_seeds(parser, args, TASKS)
    if not 0 <= args.tolerance <= 100:
        parser.error("--tolerance must be in [0, 100]")
    if args.select_fraction is not None and not 0 < args.select_fraction <= 1:
        parser.error("--select-fraction must be in (0, 1]")
    if args.limit < 1 or args.threads < 1:
        parser.error("--limit and --threads must be >= 1")
    if args.smoke:
        args.seeds = args.seeds[:1]
    return args


def tasks_and_seeds(parser: argparse.ArgumentParser, args: argparse.Namespace, allowed: Sequence[str]) -> None:
    """Turn args.tasks and args.seeds (comma lists) into lists, or exit naming what is allowed."""
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in allowed]
    if unknown or not args.tasks:
        parser.error(f"--tasks: unknown {unknown}; allowed: {', '.join(allowed)}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as err:
        parser.error(f"--seeds: a comma list of integers ({err})")
    if not args.seeds:
        parser.error("--seeds needs at least one value")


def print_table(header: str, rows: Sequence[str], start: float) -> None:
    """The summary table after the per-seed lines, and the whole run's wall time."""
    print()
    print(header)
    print("\n".join(rows))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    sys.stdout.flush()


def warm_up() -> None:
    """A tiny one-round training, untimed, so torch's one-time start-up cost (about 2 s here) does not
    land in the first measured run's wall time."""
    data = load_dataset("digits", seed=0, limit=64)
    model = build_model("linear", data.input_shape, data.num_classes)
    kronify(model, candidates=[(2, 2), (1, 1)])
    train(model, data, TrainConfig(epochs=2, progress=False))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warm_up()
    start = time.perf_counter()
    print(f"tasks {', '.join(args.tasks)}; seeds {','.join(map(str, args.seeds))}; tolerance "
          f"{args.tolerance} points; race fallback {args.fallback}; torch threads {torch.get_num_threads()}",
          flush=True)
    rows = []
    for name in args.tasks:
        task = TASKS[name]
        if args.smoke:
            task = replace(task, data=SMOKE_DATA.get(name, task.data), train={**task.train, "epochs": 2})
        _, row = benchmark(task, args.seeds, args)
        rows.append(row)
    print_table(HEADER, rows, start)


if __name__ == "__main__":
    main()
