"""One-round block-size selection against training every candidate alone (PAPER.md section 2).

Full run (Fashion-MNIST, linear and LeNet-5, seeds 0-2):

    python benchmarks/selection.py

which is the same as

    python benchmarks/selection.py --models linear,lenet5 --seeds 0,1,2 --epochs 10 --finetune-epochs 2 \\
        --limit 10000 --lr 1e-2 --lambda1 0.1 --lambda2 1e-4 --threads 1

On a 2-core CPU shared with other jobs it took 5.3 minutes of wall time (4.5 of CPU) at a load
average of 2.5-5, and 9.5 minutes at a load average of about 5.5; the CPU time is what an idle
machine needs. A warm-up epoch of a tiny model runs first, untimed.

Smoke run for CI (no Fashion-MNIST: scikit-learn's digits upsampled to 16x16 so LeNet-5 fits, 300
training examples, 2 epochs, seed 0; checks the script runs, its numbers mean nothing):

    python benchmarks/selection.py --smoke

For each model and seed it trains
- every candidate alone: each decomposed layer a KronLinear with that block (kronify with a plan),
  `--epochs` epochs, l1 weight `--lambda2` on S;
- the one round: every decomposed layer a PatternSelectLinear holding all its candidates,
  `--epochs - --finetune-epochs` selection epochs under `--lambda1` (group) and `--lambda2` (l1),
  then each layer's winner alone for `--finetune-epochs` epochs. Both sides train the same number
  of epochs in total.

Candidates. The squares 2x2, 4x4, 8x8 and 16x16, adapted per model:
- linear (one 10x784 layer `fc`; 4, 8 and 16 do not divide 10): each square that does not divide is
  replaced by the block of about the same area whose height is the largest divisor of 10 not above
  the side and whose width is the smallest divisor of 784 giving at least the square's area:
  2x2, 4x4 -> 2x8, 8x8 -> 5x14, 16x16 -> 10x28 (areas 4, 16, 70, 280 against 4, 16, 64, 256).
  Equal area keeps the parameter/MAC trade-off of the square it stands for.
- lenet5 (fc1 120x400, fc2 84x120, fc3 10x84 decomposed, via kronify include globs `fc*`; the
  convolutions stay dense): each layer keeps the squares that divide it (fc1: 2x2, 4x4, 8x8;
  fc2: 2x2, 4x4; fc3: 2x2), so fc3 has nothing to choose. A square's run alone uses that square
  where it divides and, elsewhere, the layer's largest dividing smaller square (8x8 alone is fc1 8x8,
  fc2 4x4, fc3 2x2): every run alone is a configuration the one round could have picked, and no
  layer falls back to dense. A square that divides no layer (16x16) is not run.
The script prints, per model and layer, which candidates were kept and which dropped.

Data: `--limit` caps the training examples only (a random subset of the training split, whose
order is already shuffled); validation (6000) and test (10000) stay whole, so accuracies are
measured on the full test set. One data split (seed 0) for every run; `--seeds` changes the model
initialisation and the batch order. Several seeds print mean ± std (sample std).

Settings. lambda1 = 0.1: on seed 0 (and seed 1 for the middle values) we tried 0, 0.01, 0.1, 0.3, 1
and 3. From 0 to 0.3 every value picked the same blocks on seed 0 and the final validation accuracy
moved by less than a point, so the winner is decided by the largest-||W_k|| rule more than by the
group penalty at this scale; 1 and 3 cost LeNet-5 validation accuracy (0.840 and 0.768 against
0.857) and 3 flipped fc2 to 2x2. 0.1 is also the value with which the one round recovers planted
blocks on the synthetic task (tests/test_trainer.py). lr 1e-2 (Adam(W); S at 10x) and lambda2 = 1e-4
are the trainer's tested settings. `--threads 1`: these models are small, and with two threads on
the shared machine runs were several times slower and their wall times erratic.

Runs go seed by seed (every run alone, then the one round), so a change in the machine's load hits
both sides of a seed's ratio alike. The cost line also gives the ratio of CPU time (process time
of train()), which other jobs on the machine disturb less than wall time.

Columns: test acc (top-1 on the test split, after the finetune for the one round); block sparsity
(area-weighted fraction of blocks with |S| <= 1e-2 in the final model); train params and train
MACs/sample (while training: the selection model, every candidate included, for the one round);
wall s (the trainer's wall time: training plus per-epoch validation and the final test). The cost
line compares the one round with the sum of the runs alone: wall time and train_macs_total (forward
MACs over every training sample of every epoch).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from kronsearch.data import DataSplits, load_dataset
from kronsearch.layers.kronify import kronify
from kronsearch.models import build_model
from kronsearch.patterns import Block, format_block, valid_blocks
from kronsearch.plan import LayerPattern
from kronsearch.trainer import TrainConfig, TrainResult, seed_everything, train

SIDES = (2, 4, 8, 16)
INCLUDE = {"linear": ("fc",), "lenet5": ("fc*",)}
DEFAULTS = {"epochs": 10, "finetune_epochs": 2, "limit": 10000, "models": "linear,lenet5", "seeds": "0,1,2",
            "lr": 1e-2, "lambda1": 0.1, "lambda2": 1e-4}
SMOKE = {"epochs": 2, "finetune_epochs": 1, "limit": 300, "seeds": "0"}


# ------------------------------------------------------------------------------------ data


def fashion_mnist(limit: int | None) -> DataSplits:
    """Fashion-MNIST with at most `limit` training examples; val and test whole."""
    data = load_dataset("fashion-mnist", seed=0)
    if limit is None:
        return data
    return replace(data, train=TensorDataset(*(t[:limit] for t in data.train.tensors)))


def upsampled_digits(limit: int, side: int = 16) -> DataSplits:
    """scikit-learn digits resized to side x side (LeNet-5 needs >= 12), `limit` training examples."""
    data = load_dataset("digits", seed=0, limit=limit)

    def resize(split: TensorDataset) -> TensorDataset:
        x, y = split.tensors
        return TensorDataset(F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False), y)

    return replace(data, train=resize(data.train), val=resize(data.val), test=resize(data.test),
                   input_shape=(1, side, side), name="digits-16x16")


# ------------------------------------------------------------------------------------ candidates


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def equal_area_block(side: int, out_features: int, in_features: int) -> Block:
    """side x side if it divides; else height = largest divisor of out <= side, width = smallest
    divisor of in with height * width >= side**2 (the largest divisor of in if none is that wide)."""
    if (side, side) in valid_blocks(out_features, in_features):
        return side, side
    h = max(d for d in divisors(out_features) if d <= side)
    widths = [d for d in divisors(in_features) if h * d >= side * side]
    return h, (min(widths) if widths else in_features)


@dataclass
class Candidate:
    """One row of 'trained alone': the square it stands for and the block each layer gets."""

    label: str
    plan: dict[str, Block]


@dataclass
class Setup:
    """A model's decomposed layers, the one round's candidates per layer and the runs alone."""

    shapes: dict[str, tuple[int, int]]  # layer -> (out, in)
    kept: dict[str, list[Block]]  # layer -> candidates in its PatternSelectLinear
    dropped: dict[str, list[str]]  # layer -> squares that do not divide it
    alone: list[Candidate]
    skipped: list[str]  # squares run by no candidate, with why


def model_setup(name: str, data: DataSplits) -> Setup:
    model = build_model(name, data.input_shape, data.num_classes)
    shapes = {n: (m.out_features, m.in_features) for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and any(fnmatchcase(n, g) for g in INCLUDE[name])}
    squares = [(s, s) for s in SIDES]
    if name == "linear":  # one layer: equal-area substitutes, so every square has a stand-in
        (layer, (out_f, in_f)), = shapes.items()
        blocks = list(dict.fromkeys(equal_area_block(s, out_f, in_f) for s in SIDES))
        alone = [Candidate(f"{s}x{s}" if b == (s, s) else f"{s}x{s} -> {format_block(b)}", {layer: b})
                 for s, b in ((s, equal_area_block(s, out_f, in_f)) for s in SIDES)]
        return Setup(shapes, {layer: blocks}, {layer: []}, alone, [])
    kept = {n: [b for b in squares if b in valid_blocks(*shape)] for n, shape in shapes.items()}
    dropped = {n: [format_block(b) for b in squares if b not in kept[n]] for n in shapes}
    alone, skipped = [], []
    for square in squares:
        if not any(square in blocks for blocks in kept.values()):
            skipped.append(f"{format_block(square)} alone: divides no layer")
            continue
        plan = {n: max((b for b in blocks if b[0] <= square[0]), key=lambda b: b[0]) for n, blocks in kept.items()}
        alone.append(Candidate(format_block(square), plan))
    return Setup(shapes, kept, dropped, alone, skipped)


# ------------------------------------------------------------------------------------ runs


def warm_up(data: DataSplits) -> None:
    """A tiny one-round training (64 examples, 1 select + 1 finetune epoch), untimed, so torch's one-time
    start-up cost (about 2 s here) does not land in the first measured run."""
    tiny = replace(data, train=TensorDataset(*(t[:64] for t in data.train.tensors)),
                   val=TensorDataset(*(t[:64] for t in data.val.tensors)),
                   test=TensorDataset(*(t[:64] for t in data.test.tensors)))
    model = build_model("linear", data.input_shape, data.num_classes)
    kronify(model, candidates=[(2, 2), (1, 1)])
    train(model, tiny, TrainConfig(epochs=1, finetune_epochs=1, progress=False))


def run(name: str, data: DataSplits, seed: int, config: TrainConfig, decompose: Callable[[nn.Module], object]
        ) -> tuple[TrainResult, float]:
    """Build, decompose and train one model; return the result and the CPU seconds train() took."""
    seed_everything(seed)
    model = build_model(name, data.input_shape, data.num_classes)
    decompose(model)
    cpu = time.process_time()
    result = train(model, data, config)
    return result, time.process_time() - cpu


def plan_text(plan: dict[str, Block]) -> str:
    return ", ".join(f"{n} {format_block(b)}" for n, b in plan.items())


def stat(values: Sequence[float], digits: int) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def count(values: Sequence[int]) -> str:
    """An integer that is the same for every seed (params, MACs); several values if not."""
    distinct = sorted(set(values))
    return ", ".join(f"{v:,}" for v in distinct)


def selected_text(results: Sequence[TrainResult], layers: Sequence[str]) -> str:
    """Per layer, the winner and how many seeds picked it, e.g. 'fc1 4x4 (2/3), 2x2 (1/3)'."""
    parts = []
    for layer in layers:
        votes = Counter(r.selected[layer] for r in results)
        parts.append(f"{layer} " + ", ".join(f"{b} ({k}/{len(results)})" for b, k in votes.most_common()))
    return "; ".join(parts)


def winner_share(result: TrainResult, layer: str) -> float:
    """||W_winner|| / sum_k ||W_k|| at the end of selection: 1 when the losers were switched off."""
    norms = [h for h in result.history if h.phase == "select"][-1].candidate_norms[layer]
    return norms[result.selected[layer]] / sum(norms.values())


def benchmark(name: str, data: DataSplits, seeds: Sequence[int], args: argparse.Namespace) -> list[str]:
    """Train everything for one model; return its markdown table rows and its cost line."""
    setup = model_setup(name, data)
    for layer, (out_f, in_f) in setup.shapes.items():
        dropped = f"; dropped {', '.join(setup.dropped[layer])} (do not divide)" if setup.dropped[layer] else ""
        print(f"  {name}.{layer} ({out_f}x{in_f}): candidates {', '.join(map(format_block, setup.kept[layer]))}"
              f"{dropped}")
    for line in setup.skipped:
        print(f"  {name}: {line}")
    if name == "linear":
        print(f"  {name}: runs alone: {'; '.join(c.label for c in setup.alone)}")
    common = {"lr": args.lr, "lambda2": args.lambda2, "progress": False}
    candidates = sorted({b for blocks in setup.kept.values() for b in blocks})
    layers = list(setup.shapes)
    alone: dict[str, list[TrainResult]] = {c.label: [] for c in setup.alone}
    one_round: list[TrainResult] = []
    cpu_alone, cpu_round = [], []  # per seed: summed over the runs alone, and the one round's
    for s in seeds:  # seed by seed, so a change in the machine's load hits both sides alike
        cpu_alone.append(0.0)
        for cand in setup.alone:
            plan = {n: LayerPattern(b, 1) for n, b in cand.plan.items()}
            result, cpu = run(name, data, s, TrainConfig(epochs=args.epochs, seed=s, **common),
                              lambda m, plan=plan: kronify(m, plan))
            alone[cand.label].append(result)
            cpu_alone[-1] += cpu
            print(f"  {name} seed {s} {cand.label} alone: test acc {result.test_accuracy:.4f}, "
                  f"{result.wall_time:.1f} s", flush=True)
        config = TrainConfig(epochs=args.epochs - args.finetune_epochs, finetune_epochs=args.finetune_epochs,
                             lambda1=args.lambda1, seed=s, **common)
        result, cpu = run(name, data, s, config, lambda m: kronify(m, candidates=candidates, include=INCLUDE[name]))
        one_round.append(result)
        cpu_round.append(cpu)
        print(f"  {name} seed {s} one round: {', '.join(f'{n} {b}' for n, b in result.selected.items())}, test acc "
              f"{result.test_accuracy:.4f}, {result.wall_time:.1f} s", flush=True)

    rows = []
    for cand in setup.alone:
        rs = alone[cand.label]
        rows.append(f"| {name} | {cand.label} alone | {plan_text(cand.plan)} | {stat([r.test_accuracy for r in rs], 4)} "
                    f"| {stat([r.block_sparsity for r in rs], 3)} | {count([r.train_params for r in rs])} "
                    f"| {count([r.train_macs for r in rs])} | {stat([r.wall_time for r in rs], 1)} |")
    shares = "; ".join(f"{layer} {stat([winner_share(r, layer) for r in one_round], 2)}" for layer in layers
                       if len(setup.kept[layer]) > 1)
    rows.append(f"| {name} | **one round** | {selected_text(one_round, layers)} "
                f"| {stat([r.test_accuracy for r in one_round], 4)} | {stat([r.block_sparsity for r in one_round], 3)} "
                f"| {count([r.train_params for r in one_round])} | {count([r.train_macs for r in one_round])} "
                f"| {stat([r.wall_time for r in one_round], 1)} |")

    # cost and choice, per seed then summarized
    wall_ratio = [one_round[i].wall_time / sum(rs[i].wall_time for rs in alone.values()) for i in range(len(seeds))]
    cpu_ratio = [r / a for r, a in zip(cpu_round, cpu_alone)]
    mac_ratio = [one_round[i].train_macs_total / sum(rs[i].train_macs_total for rs in alone.values())
                 for i in range(len(seeds))]
    best = max(alone, key=lambda label: statistics.fmean(r.test_accuracy for r in alone[label]))
    by_plan = {tuple(format_block(b) for b in c.plan.values()): c.label for c in setup.alone}
    picked = Counter(by_plan.get(tuple(r.selected[n] for n in layers), "a mix no run alone used") for r in one_round)
    picked_text = ", ".join(f"{label} ({k}/{len(seeds)})" for label, k in picked.most_common())
    summary = (f"- **{name}**: best alone (mean test acc): {best} "
               f"({stat([r.test_accuracy for r in alone[best]], 4)}); the one round picked the plan of: {picked_text}; "
               f"one round test acc {stat([r.test_accuracy for r in one_round], 4)}. Cost of the one round against the "
               f"sum of the {len(alone)} runs alone: wall time x{stat(wall_ratio, 2)} (CPU time x{stat(cpu_ratio, 2)}), train_macs_total "
               f"x{stat(mac_ratio, 3)}. Winner's share of sum_k ||W_k|| at the end of selection: {shares or 'n/a'}.")
    return rows + [summary]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"total epochs per run, the one round's finetune included (default {DEFAULTS['epochs']})")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help=f"of those, the one round's winner-alone epochs (default {DEFAULTS['finetune_epochs']})")
    parser.add_argument("--limit", type=int, default=None,
                        help=f"training examples (default {DEFAULTS['limit']}); val and test stay whole")
    parser.add_argument("--models", default=None, help=f"comma list of linear, lenet5 (default {DEFAULTS['models']})")
    parser.add_argument("--seeds", default=None, help=f"comma list (default {DEFAULTS['seeds']})")
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="Adam(W) lr (default %(default)s)")
    parser.add_argument("--lambda1", type=float, default=DEFAULTS["lambda1"],
                        help="group penalty weight, one round only (default %(default)s)")
    parser.add_argument("--lambda2", type=float, default=DEFAULTS["lambda2"],
                        help="l1 weight on every S, all runs (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: these models are small, and on a shared 2-core machine "
                             "two threads made runs several times slower and their wall times erratic)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny run on upsampled digits for CI; does not need Fashion-MNIST")
    args = parser.parse_args(argv)
    fallback = {**DEFAULTS, **(SMOKE if args.smoke else {})}
    for key in ("epochs", "finetune_epochs", "limit", "models", "seeds"):
        if getattr(args, key) is None:
            setattr(args, key, fallback[key])
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    unknown = [m for m in args.models if m not in INCLUDE]
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown}; allowed: {', '.join(INCLUDE)}")
    if not args.seeds:
        parser.error("--seeds: give at least one")
    if not 0 <= args.finetune_epochs < args.epochs:
        parser.error("--finetune-epochs must be >= 0 and below --epochs (the one round needs a selection epoch)")
    if args.limit < 1:
        parser.error("--limit must be >= 1")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = upsampled_digits(args.limit) if args.smoke else fashion_mnist(args.limit)
    print(f"data {data.name}: {len(data.train)} train, {len(data.val)} val, {len(data.test)} test; "
          f"epochs {args.epochs} (one round: {args.epochs - args.finetune_epochs} select + {args.finetune_epochs} "
          f"finetune); lr {args.lr}, lambda1 {args.lambda1}, lambda2 {args.lambda2}; seeds "
          f"{','.join(map(str, args.seeds))}; torch threads {torch.get_num_threads()}", flush=True)
    warm_up(data)
    rows, summaries = [], []
    for name in args.models:
        *model_rows, summary = benchmark(name, data, args.seeds, args)
        rows += model_rows
        summaries.append(summary)
    print()
    print("| model | run | blocks | test acc | block sparsity | train params | train MACs/sample | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("\n".join(summaries))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
