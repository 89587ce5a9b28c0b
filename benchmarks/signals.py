"""Which early signal predicts a candidate block's accuracy when it is trained alone?

Full run (needs Fashion-MNIST: apt-get install dataset-fashion-mnist); tasks are independent, so two
processes can share a 2-core machine:

    python benchmarks/signals.py --tasks narrow-mlp,synthetic
    python benchmarks/signals.py --tasks tie-mlp,lenet5-fashion

Smoke run for CI (digits only, one seed, tiny budgets; its numbers mean nothing):

    python benchmarks/signals.py --smoke

Per task and seed, every candidate is trained alone (the ground truth: its final test accuracy on the
full test set), then the one round's race (kronsearch.selection.Race, stretched to RACE_SHARE of the
task's epochs so the probes see it at 5, 10, 25 and 50% of the run) is probed: the validation loss and
accuracy of each layer running each live candidate alone, the other layers running their leaders (the
race's own measurement). A candidate already out ranks last.

The summed contest's signals (the gate g_k, the push, the push per MAC, the validation loss of the
candidate alone inside the sum, the loss increase on its removal) were measured by this script at
commit d5492a1, before the race replaced that contest (docs/benchmarks/selection.md, table 10).

Reported per task and signal: Spearman's rank correlation of the signal with the candidates'
accuracy alone (mean over layers and seeds), sign-adjusted so that +1 is a perfect predictor, and how
often the signal's top candidate is within 0.5 point of the best alone, next to the seed-to-seed
spread (standard deviation) of the accuracies alone and the gap between the best and the worst
candidate alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from selection import SMOKE_DATA, Task, alone_plan, layer_shapes, plan_label, print_table, run, tasks_and_seeds
from selection import TASKS as SELECTION_TASKS
from torch import nn

import kronsearch.trainer as trainer_module
from kronsearch.layers.kronify import kronify
from kronsearch.layers.plan import LayerPattern
from kronsearch.models import build_model
from kronsearch.trainer import TrainConfig, seed_everything, train

POINTS = (0.05, 0.10, 0.25, 0.50)
RACE_SHARE = 0.5  # the race's length in epochs, as a share of the task's: the probes run at POINTS of the run
TOP = ": top within 0.5"
TASKS = {name: SELECTION_TASKS[name] for name in ("narrow-mlp", "tie-mlp", "lenet5-fashion", "synthetic")}


@torch.no_grad()
def val_loss_accuracy(model: nn.Module, data) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on the validation split."""
    model.eval()
    x, y = data.val.tensors
    out = torch.cat([model(x[i:i + 2048]) for i in range(0, len(x), 2048)])
    model.train()
    return F.cross_entropy(out, y).item(), (out.argmax(-1) == y).float().mean().item()


def race_signals(model: nn.Module, data, contest) -> dict[str, dict[str, dict[str, float]]]:
    """layer -> signal -> candidate -> value, from the race's own validation of every live candidate."""
    out = {}
    for name, layer in contest.layers.items():
        estimates = contest.measure_candidates(name)
        out[name] = {"race val loss": {k: -e.loss for k, e in estimates.items()},
                     "race val acc": {k: e.accuracy for k, e in estimates.items()}}
        for block in layer.candidates:
            k = f"{block[0]}x{block[1]}"
            for s in out[name].values():
                s.setdefault(k, -float("inf"))
    return out


def one_round_signals(task: Task, data, seed: int) -> dict[float, dict]:
    """Run the one round once and return {fraction of the race: layer -> signal -> candidate -> value}."""
    captured: list = []
    original = trainer_module.Race

    class Captured(original):  # the trainer's own race, kept for the probes
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            captured.append(self)

    records: dict[float, dict] = {}
    holder: dict = {}

    def after_step(step: int, total: int) -> None:  # total: the race's steps, RACE_SHARE of the run
        for point in POINTS:
            if point not in records and step >= point / RACE_SHARE * total:
                records[point] = race_signals(holder["model"], data, captured[-1])
        if captured[-1].done:
            raise StopIteration  # the race is over; the rest of the run is not needed

    trainer_module.Race = Captured
    try:
        seed_everything(seed)
        model = build_model(task.model, data.input_shape, data.num_classes, **task.options)
        kronify(model, candidates=task.candidates, include=task.include)
        holder["model"] = model
        settings = {**task.train, "seed": seed, "progress": False, "select_epochs": RACE_SHARE * task.train["epochs"]}
        try:
            train(model, data, TrainConfig(**settings), after_step=after_step)
        except StopIteration:
            pass
    finally:
        trainer_module.Race = original
    return records


def correlations(records: dict[float, dict], alone: dict[str, float]) -> dict[tuple[str, float], list[float]]:
    """(signal, point) -> Spearman's rho per layer with >= 3 candidates, against the accuracies alone;
    (signal + TOP, point) -> per layer 1.0 where the signal's top candidate is within 0.5 point of the best
    alone, else 0.0."""
    out: dict[tuple[str, float], list[float]] = {}
    for point, layers in records.items():
        for signals in layers.values():
            for signal, values in signals.items():
                keys = [k for k in values if k in alone]
                if len(keys) < 3 or len({alone[k] for k in keys}) < 2:
                    continue
                finite = [max(min(values[k], 1e30), -1e30) for k in keys]
                rho = spearmanr(finite, [alone[k] for k in keys]).statistic
                if rho == rho:  # constant signals have no correlation
                    out.setdefault((signal, point), []).append(float(rho))
                top = keys[finite.index(max(finite))]
                hit = max(alone[k] for k in keys) - alone[top] <= 0.005
                out.setdefault((signal + TOP, point), []).append(float(hit))
    return out


def benchmark(task: Task, seeds: list[int], args: argparse.Namespace) -> list[str]:
    """Train the candidates alone and probe the contests, seed by seed; return the task's table rows."""
    rhos: dict[tuple[str, float], list[float]] = {}
    accuracies: dict[str, list[float]] = {}
    for seed in seeds:
        data = task.data(seed, args)
        shapes = layer_shapes(task, data)
        alone = {}
        for cand in task.candidates:
            plan = alone_plan(cand, shapes, task.candidates)
            result = run(task, data, seed, lambda m, p=plan: kronify(m, {n: LayerPattern(b, 1) for n, b in p.items()}))
            alone[f"{cand[0]}x{cand[1]}"] = result.test_accuracy
            accuracies.setdefault(f"{cand[0]}x{cand[1]} ({plan_label(plan)})", []).append(result.test_accuracy)
        for key, values in correlations(one_round_signals(task, data, seed), alone).items():
            rhos.setdefault(key, []).extend(values)
        print(f"  {task.name} seed {seed}: alone " + ", ".join(f"{k} {v:.4f}" for k, v in alone.items()), flush=True)
    spread = statistics.fmean(statistics.stdev(v) for v in accuracies.values()) if len(seeds) > 1 else float("nan")
    means = {k: statistics.fmean(v) for k, v in accuracies.items()}
    gap = 100 * (max(means.values()) - min(means.values()))
    signals = [s for s in dict.fromkeys(s for s, _ in rhos) if not s.endswith(TOP)]
    rows = []
    for signal in signals:
        cells = [f"{statistics.fmean(rhos[(signal, p)]):+.2f} / {100 * statistics.fmean(rhos[(signal + TOP, p)]):.0f}%"
                 if (signal, p) in rhos else "-" for p in POINTS]
        rows.append(f"| {task.name} | {signal} | " + " | ".join(cells) + f" | {100 * spread:.2f} | {gap:.2f} |")
    print("  means alone: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in means.items()), flush=True)
    return rows


HEADER = ("| task | signal | " + " | ".join(f"rho / top right at {int(100 * p)}%" for p in POINTS)
          + " | seed spread alone (points) | best - worst alone (points) |\n|" + "---|" * (4 + len(POINTS)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma list of %(default)s")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma list (default %(default)s)")
    parser.add_argument("--limit", type=int, default=10000,
                        help="Fashion-MNIST training examples (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="tiny run on digits for CI; no Fashion-MNIST needed")
    args = parser.parse_args(argv)
    tasks_and_seeds(parser, args, TASKS)
    if args.limit < 1 or args.threads < 1:
        parser.error("--limit and --threads must be >= 1")
    if args.smoke:
        args.seeds = args.seeds[:1]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = []
    for name in args.tasks:
        task = TASKS[name]
        if args.smoke:
            task = replace(task, data=SMOKE_DATA.get(name, task.data), train={**task.train, "epochs": 2})
        rows += benchmark(task, args.seeds, args)
    print_table(HEADER, rows, start)


if __name__ == "__main__":
    main()
