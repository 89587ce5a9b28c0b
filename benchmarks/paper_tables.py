"""The paper's comparison on Fashion-MNIST, and what the search costs (docs/benchmarks/ has the results).

    python benchmarks/paper_tables.py --table linear  --seeds 0,1,2 --epochs 5 --limit 10000
    python benchmarks/paper_tables.py --table lenet5  --seeds 0,1,2 --epochs 5 --limit 10000
    python benchmarks/paper_tables.py --table vit     --seeds 0     --epochs 4 --limit 5000
    python benchmarks/paper_tables.py --table search
    python benchmarks/paper_tables.py --table speed
    python benchmarks/paper_tables.py --table linear --smoke   # CI: scikit-learn digits, seconds

Every table runs with torch.set_num_threads(1) (`--threads`): on the shared 2-core machine two
threads were several times slower. Data: Fashion-MNIST, `--limit` training examples (the first of
the seed-0 training split), validation (6000) and test (10000) whole; one data split for every run,
`--seeds` changes initialisation and batch order; several seeds print mean ± std (sample std).
`--smoke`: scikit-learn digits upsampled to 16x16, 200 training examples, 1 epoch, seed 0.

Tables 1-3 (linear, lenet5, vit), rows:
- dense: plain training.
- Kronecker (kronsearch): kronify + the trainer, l1 weight lambda2 on every S. lambda2 is tuned per
  (block, rank) on seed 0 so the block sparsity lands near 50%: a bisection in log space starting at
  `--lambda2` (x10 / /10 until the target is bracketed, then geometric midpoints), at most
  `--probes` trainings, stopping within ±0.05 of 0.5; the probe closest to 0.5 is kept (its seed-0
  run is the seed-0 result) and the other seeds reuse its lambda2. Tuned on sparsity only, never on
  accuracy.
- group_lasso, elastic_group_lasso, rigl, iterative_pruning: kronsearch.baselines at target block
  sparsity 0.5 (exact, per layer). The group-lasso strength is picked on seed 0 from
  `--strengths` by *validation* accuracy after pruning; elastic uses the same strength with
  l1 = strength / 10.
- All methods of a table use the same optimizer (AdamW), lr, cosine schedule, batch 128, epochs.
Blocks: linear (one 10x784 layer): 2x2, 2x8 (tall/wide: 10 = 5 * 2, 784 = 98 * 8) and 5x4, ranks 1 and 2.
LeNet-5: fc1 (120x400) and fc2 (84x120) 4x4, fc3 (10x84) 2x2 (4 does not divide 10); convs dense.
ViT: patch 4, dim 64, depth 2, heads 2, mlp ratio 2 (qkv 192x64, proj 64x64, fc1 128x64, fc2 64x128);
the blocks' Linears 4x4, the 10x64 head dense (4 does not divide 10), patch embedding dense. The ViT
table adds the block-size selection experiment: 2x2, 4x4, 8x8 each trained alone for `--epochs`
against one round (candidates 2x2/4x4/8x8: the trainer's race, kronsearch.selection.Race, of a quarter
of `--epochs` first, each layer keeping the cheapest candidate within `--tolerance` accuracy points of
the best, then its winners train `--epochs`; lambda2 `--select-lambda2` for all of them).

Columns: test acc (top-1, full test set); block sparsity (area-weighted fraction of zero blocks over
the decomposed layers); train params (trainable while training); train MACs (forward MACs per
sample while training, kronsearch.layers.costs); inference nnz (non-zero weight entries after merging);
setting (tuned lambda2 / strength).

Table 4 (search): search_spaces/vit.yaml and search_spaces/lenet5.yaml, rewritten into a temporary
folder with fewer trials/epochs (`--search-trials`, `--search-epochs`, `--search-limit`), each run
with strategy one_round, per_pattern and hybrid (kronsearch.search.run_search, fresh studies in a
temporary studies folder; every trial trains `--search-epochs`, a one-round trial after its race of a
quarter of them). Per strategy: the best trial (highest val accuracy), the compute spent
up to and including it (sum of trial wall_time and train_macs_total over the finished trials
numbered up to the best, duplicates excluded), the total; and agreement from
kronsearch.report.compare_data (one_round vs per_pattern studies together, hybrid on its own).

Table 5 (speed): benchmarks/layer_speed.py's KronLinear vs nn.Linear table (imported: its
`measure` and `SHAPES`; run as a subprocess if they are missing), then one ViT training step
(forward, loss, backward, AdamW step; batch 128, 28x28) dense vs kronified: median time over
`--steps` steps and peak memory of one step from torch.profiler.profile(profile_memory=True) (the
running sum, in start order, of every profiled op's own net CPU allocation (self_cpu_memory_usage) and of
the "[memory]" records outside ops: the peak of torch tensor memory above the level at the start of
the step, at op granularity; it sees torch tensors only, not Python objects).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from selection import fashion_mnist, stat, upsampled_digits  # noqa: E402

from kronsearch.baselines import METHODS, train_baseline  # noqa: E402
from kronsearch.data import DataSplits  # noqa: E402
from kronsearch.layers.blocks import format_block  # noqa: E402
from kronsearch.layers.costs import model_cost  # noqa: E402
from kronsearch.layers.kronify import kronify  # noqa: E402
from kronsearch.layers.plan import LayerPattern  # noqa: E402
from kronsearch.models import build_model  # noqa: E402
from kronsearch.trainer import TrainConfig, TrainResult, seed_everything, train  # noqa: E402

TABLES = ("linear", "lenet5", "vit", "search", "speed")
VIT = {"patch_size": 4, "dim": 64, "depth": 2, "heads": 2, "mlp_ratio": 2.0}
DEFAULTS = {  # per table: epochs, limit, lr
    "linear": {"epochs": 5, "limit": 10000, "lr": 1e-2},
    "lenet5": {"epochs": 5, "limit": 10000, "lr": 2e-3},
    "vit": {"epochs": 4, "limit": 5000, "lr": 2e-3},
}
BASELINES = [m for m in METHODS if m != "dense"]
HEADER = ("| method | block | rank | test acc | block sparsity | train params | train MACs | inference nnz "
          "| setting |\n|---|---|---|---|---|---|---|---|---|")


def count(values: Sequence[int]) -> str:
    distinct = sorted(set(values))
    return ", ".join(f"{v:,}" for v in distinct)


def row(method: str, block: str, rank: str, results: Sequence[TrainResult], setting: str) -> str:
    return (f"| {method} | {block} | {rank} | {stat([r.test_accuracy for r in results], 4)} "
            f"| {stat([r.block_sparsity for r in results], 3)} | {count([r.train_params for r in results])} "
            f"| {count([r.train_macs for r in results])} | {count([r.inference_nonzeros for r in results])} "
            f"| {setting} |")


class Table:
    """One model's comparison: builds, decomposes and trains; prints progress lines to stderr."""

    def __init__(self, name: str, data: DataSplits, args: argparse.Namespace, options: dict, include: Sequence[str]):
        self.name, self.data, self.args, self.options, self.include = name, data, args, options, include

    def model(self, seed: int) -> nn.Module:
        seed_everything(seed)
        return build_model(self.name, self.data.input_shape, self.data.num_classes, **self.options)

    def config(self, seed: int, **changes) -> TrainConfig:
        return TrainConfig(epochs=self.args.epochs, lr=self.args.lr, seed=seed, progress=False, **changes)

    def log(self, text: str) -> None:
        print(f"  [{self.name}] {text}", file=sys.stderr, flush=True)

    def kron(self, plan: dict[str, tuple[int, int]], rank: int, seed: int, lambda2: float) -> TrainResult:
        model = self.model(seed)
        kronify(model, {n: LayerPattern(b, rank) for n, b in plan.items()})
        result = train(model, self.data, self.config(seed, lambda2=lambda2))
        self.log(f"kron {plan_label(plan)} r{rank} seed {seed} lambda2 {lambda2:.2e}: acc {result.test_accuracy:.4f} "
                 f"sparsity {result.block_sparsity:.3f} ({result.wall_time:.1f} s)")
        return result

    def tuned_kron(self, plan: dict[str, tuple[int, int]], rank: int) -> tuple[list[TrainResult], float]:
        """lambda2 bisection on seed 0 for ~50% block sparsity, then the other seeds (see the module doc)."""
        seeds, target, tol = self.args.seeds, 0.5, 0.05
        lam, lo, hi, probes = self.args.lambda2, None, None, []
        for _ in range(self.args.probes):
            result = self.kron(plan, rank, seeds[0], lam)
            probes.append((abs(result.block_sparsity - target), lam, result))
            if abs(result.block_sparsity - target) <= tol:
                break
            if result.block_sparsity < target:
                lo = lam
                lam = math.sqrt(lam * hi) if hi else lam * 10
            else:
                hi = lam
                lam = math.sqrt(lo * lam) if lo else lam / 10
        _, lam, first = min(probes, key=lambda p: p[0])
        return [first] + [self.kron(plan, rank, s, lam) for s in seeds[1:]], lam

    def baseline(self, method: str, block, seed: int, strength: float) -> TrainResult:
        result = train_baseline(method, self.model(seed), self.data, self.config(seed), block=block,
                                target_sparsity=0.5, strength=strength, l1=strength / 10, include=self.include)
        label = plan_label(block) if isinstance(block, dict) else format_block(block)
        self.log(f"{method} {label} seed {seed} strength {strength:.0e}: acc {result.test_accuracy:.4f} "
                 f"val {result.val_accuracy:.4f} sparsity {result.block_sparsity:.3f} ({result.wall_time:.1f} s)")
        return result

    def strength(self, block) -> tuple[float, TrainResult]:
        """Group-lasso strength by seed-0 validation accuracy after pruning."""
        runs = [(s, self.baseline("group_lasso", block, self.args.seeds[0], s)) for s in self.args.strengths]
        return max(runs, key=lambda sr: (sr[1].val_accuracy, -sr[0]))

    def rows(self, plans: dict[str, dict[str, tuple[int, int]]], ranks: Sequence[int]) -> list[str]:
        """plans: label -> {layer: block}. Dense once, then per plan every baseline and Kronecker per rank."""
        seeds = self.args.seeds
        out = [row("dense", "-", "-", [self.baseline("dense", (1, 1), s, 0.0) for s in seeds], "")]
        for label, plan in plans.items():
            strength, first = self.strength(plan)
            for method in BASELINES:
                results = [first] if method == "group_lasso" else [self.baseline(method, plan, seeds[0], strength)]
                results += [self.baseline(method, plan, s, strength) for s in seeds[1:]]
                setting = f"strength {strength:.0e}" if "lasso" in method else ""
                out.append(row(method, label, "-", results, setting))
            for rank in ranks:
                results, lam = self.tuned_kron(plan, rank)
                out.append(row("**Kronecker**", label, str(rank), results, f"lambda2 {lam:.2e}"))
        return out


def plan_label(plan: dict[str, tuple[int, int]]) -> str:
    blocks = list(dict.fromkeys(plan.values()))
    if len(blocks) == 1:
        return format_block(blocks[0])
    return ", ".join(f"{n} {format_block(b)}" for n, b in plan.items())


def linear_names(model: nn.Module, include: Sequence[str]) -> dict[str, tuple[int, int]]:
    from fnmatch import fnmatchcase
    return {n: (m.out_features, m.in_features) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(fnmatchcase(n, g) for g in include)}


# ------------------------------------------------------------------------------------ tables 1-3


def table_linear(data: DataSplits, args) -> list[str]:
    t = Table("linear", data, args, {}, ["fc"])
    return t.rows({format_block(b): {"fc": b} for b in [(2, 2), (2, 8), (5, 4)]}, [1, 2])


def table_lenet5(data: DataSplits, args) -> list[str]:
    t = Table("lenet5", data, args, {}, ["fc*"])
    return t.rows({"4x4 (fc3 2x2)": {"fc1": (4, 4), "fc2": (4, 4), "fc3": (2, 2)}}, [1, 2])


def table_vit(data: DataSplits, args) -> list[str]:
    t = Table("vit", data, args, VIT, ["blocks.*"])
    layers = linear_names(t.model(0), ["blocks.*"])
    out = t.rows({"4x4": dict.fromkeys(layers, (4, 4))}, [1])
    out += ["", "Block-size selection (ViT): each candidate alone vs one round", "",
            "| run | blocks | test acc | block sparsity | train params | train MACs | wall s |",
            "|---|---|---|---|---|---|---|"]
    candidates = [(2, 2), (4, 4), (8, 8)]
    alone: dict[str, list[TrainResult]] = {}
    one_round: list[TrainResult] = []
    for seed in args.seeds:
        for b in candidates:
            alone.setdefault(format_block(b), []).append(t.kron(dict.fromkeys(layers, b), 1, seed, args.select_lambda2))
        model = t.model(seed)
        kronify(model, candidates=candidates, include=["blocks.*"])
        result = train(model, data, TrainConfig(epochs=args.epochs, lr=args.lr, tolerance=args.tolerance,
                                                lambda2=args.select_lambda2, seed=seed, progress=False))
        t.log(f"one round seed {seed}: {result.selected}, acc {result.test_accuracy:.4f}")
        one_round.append(result)
    for label, rs in alone.items():
        out.append(f"| {label} alone | all {label} | {stat([r.test_accuracy for r in rs], 4)} "
                   f"| {stat([r.block_sparsity for r in rs], 3)} | {count([r.train_params for r in rs])} "
                   f"| {count([r.train_macs for r in rs])} | {stat([r.wall_time for r in rs], 1)} |")
    picks = [f"seed {s}: " + ", ".join(f"{b} x{k}" for b, k in sorted(Counter(r.selected.values()).items()))
             for s, r in zip(args.seeds, one_round)]
    per_layer = "; ".join(f"{n.replace('blocks.', 'b')} " + "/".join(r.selected[n] for r in one_round)
                          for n in layers)
    out.append(f"| **one round** | {per_layer} | {stat([r.test_accuracy for r in one_round], 4)} "
               f"| {stat([r.block_sparsity for r in one_round], 3)} | {count([r.train_params for r in one_round])} "
               f"| {count([r.train_macs for r in one_round])} | {stat([r.wall_time for r in one_round], 1)} |")
    best = max(alone, key=lambda k: statistics.fmean(r.test_accuracy for r in alone[k]))
    total_alone = [sum(alone[k][i].train_macs_total for k in alone) for i in range(len(args.seeds))]
    ratio = [one_round[i].train_macs_total / total_alone[i] for i in range(len(args.seeds))]
    wall = [one_round[i].wall_time / sum(alone[k][i].wall_time for k in alone) for i in range(len(args.seeds))]
    out += ["", f"Best alone (mean test acc): {best}. One round's picks per seed: "
            f"{'; '.join(picks)} (layers per block). One round vs the {len(alone)} runs alone: "
            f"train_macs_total x{stat(ratio, 3)}, wall time x{stat(wall, 2)}."]
    return out


# ------------------------------------------------------------------------------------ table 4


def derived_space(source: Path, folder: Path, args, smoke: bool) -> Path:
    raw = yaml.safe_load(source.read_text())
    raw["name"] = raw["name"] + "-bench"
    raw["train"]["epochs"] = args.search_epochs
    raw["train"].pop("finetune_epochs", None)  # the same epochs for every strategy (one round: after its race)
    raw["train"]["warmup_epochs"] = 0
    if args.search_limit and raw["data"]["name"] != "digits":
        raw["data"]["limit"] = args.search_limit
    if smoke:
        raw["data"]["limit"] = 100
    raw["search"]["trials"] = args.search_trials
    raw["search"]["pruner"] = "none"  # every trial trains fully, so costs are comparable across strategies
    raw.setdefault("backend", {})["name"] = "local"
    path = folder / source.name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cost_to_best(study) -> dict:
    import optuna

    from kronsearch.record import Strategy, metrics, study_strategy, trial_kind, val_accuracy
    from kronsearch.report import duration
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                             optuna.trial.TrialState.FAIL)]
    counted = [t for t in trials if t.user_attrs.get("duplicate_of") is None]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and val_accuracy(t) is not None]
    best = max(complete, key=lambda t: (val_accuracy(t), -t.number))
    upto = [t for t in counted if t.number <= best.number]

    def total(ts, key):
        if key == "wall":
            return sum(duration(t) or 0.0 for t in ts)
        return sum(metrics(t).get("train_macs_total") or 0 for t in ts)

    m = metrics(best)
    kind = trial_kind(best, study_strategy(study))
    pattern = ({"selected": sorted(Counter((m.get("selected") or {}).values()).items()),
                "rank": best.params.get("rank")}
               if kind == Strategy.ONE_ROUND
               else {k: v for k, v in best.params.items() if k.startswith(("block", "rank"))})
    return {"trials": len(counted), "best": best.number, "kind": kind,
            "val": val_accuracy(best), "test": m.get("test_accuracy"), "pattern": pattern,
            "wall_to_best": total(upto, "wall"), "macs_to_best": total(upto, "macs"),
            "wall_total": total(counted, "wall"), "macs_total": total(counted, "macs")}


def table_search(args, smoke: bool) -> list[str]:
    import optuna

    from kronsearch.report import compare_data
    from kronsearch.search import run_search
    spaces = [ROOT / "search_spaces" / "vit.yaml"] + ([] if smoke else [ROOT / "search_spaces" / "lenet5.yaml"])
    out = ["| space | strategy | trials | best trial (kind) | best val acc | its test acc | best pattern "
           "| wall s to best | train MACs to best | wall s all | train MACs all |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for source in spaces:
            path = derived_space(source, folder, args, smoke)
            studies = {}
            for strategy in ("one_round", "per_pattern", "hybrid"):
                start = time.perf_counter()
                summary = run_search(path, strategy=strategy, fresh=True, progress=False,
                                     studies_dir=folder / "studies")
                studies[strategy] = optuna.load_study(study_name=summary.study_names[0],
                                                      storage=summary.storage_url)
                print(f"  [search] {source.name} {strategy}: {time.perf_counter() - start:.0f} s", file=sys.stderr,
                      flush=True)
                c = cost_to_best(studies[strategy])
                out.append(f"| {source.name} | {strategy} | {c['trials']} | {c['best']} ({c['kind']}) | {c['val']:.4f} "
                           f"| {c['test']:.4f} | {c['pattern']} | {c['wall_to_best']:.1f} | {c['macs_to_best']:.3g} "
                           f"| {c['wall_total']:.1f} | {c['macs_total']:.3g} |")
            for label, group in (("one_round vs per_pattern", [studies["one_round"], studies["per_pattern"]]),
                                 ("hybrid", [studies["hybrid"]])):
                data = compare_data(group)
                a = data["agreement"]
                if a is None:
                    notes.append(f"- {source.name}, {label}: no agreement ({'; '.join(data['notes'])})")
                    continue
                rank = a["one_round_rank"] and "r" + str(a["one_round_rank"])
                notes.append(f"- {source.name}, {label}: one-round pick {rank} "
                             f"{'=' if a['same_as_best'] else '!='} per-pattern best ({a['best_label']}); the pick's "
                             f"blocks rank {a['position']} of {a['patterns']} patterns tried (with its rank: "
                             f"{a['position_with_rank']}); compute ratio per_pattern/one_round: wall "
                             f"{fmt(data['compute']['ratio']['wall_time'])}, MACs "
                             f"{fmt(data['compute']['ratio']['train_macs_total'])}")
    settings = (f"trials {args.search_trials} per strategy (hybrid: its default max(1, trials // 3) one-round "
                f"trials first), epochs {args.search_epochs} (no finetune; a one-round trial races a quarter of "
                f"them first), "
                f"pruner none, fashion-mnist limit "
                f"{args.search_limit}")
    return out + ["", "Agreement (kronsearch.report.compare_data):"] + notes + ["", f"Settings: {settings}."]


def fmt(value) -> str:
    return "n/a" if value is None else f"x{value:.2f}"


# ------------------------------------------------------------------------------------ table 5


def layer_speed_rows(repeats: int, smoke: bool) -> list[str]:
    try:
        import layer_speed
        measure, shapes = layer_speed.measure, layer_speed.SHAPES
        from kronsearch.layers.blocks import kron_macs
    except (ImportError, AttributeError) as err:
        print(f"  [speed] layer_speed import failed ({err}); running it as a subprocess", file=sys.stderr)
        done = subprocess.run([sys.executable, str(HERE / "layer_speed.py")] + (["--smoke"] if smoke else
                              ["--repeats", str(repeats)]), capture_output=True, text=True, check=True)
        return done.stdout.splitlines()
    warmup = 1 if smoke else max(5, repeats // 10)
    out = [f"KronLinear vs nn.Linear (benchmarks/layer_speed.py's measure(); batch 256, float32, "
           f"{torch.get_num_threads()} thread(s), median of {repeats} paired forward+backward steps)", "",
           "| out x in | block | rank | KronLinear ms | nn.Linear ms | time ratio | MAC ratio |",
           "|---|---|---|---|---|---|---|"]
    for out_f, in_f, block, rank in shapes:
        k, d, ratio = measure(out_f, in_f, block, rank, 256, repeats, warmup)
        mac = kron_macs(out_f, in_f, block, rank) / (out_f * in_f)
        out.append(f"| {out_f} x {in_f} | {format_block(block)} | {rank} | {k * 1e3:.3f} | {d * 1e3:.3f} "
                   f"| {ratio:.3f} | {mac:.3f} |")
    return out


def peak_step_memory(step: Callable[[], None]) -> int:
    """Peak bytes above the start level of torch's CPU allocations during one step (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # every allocation/free lands in exactly one event's self_cpu_memory_usage (an op's own net, or a
    # "[memory]" record outside any op): replayed in start order they give the live bytes at op granularity
    records = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    level = peak = 0
    for _, delta in records:
        level += delta
        peak = max(peak, level)
    return peak


def table_speed(args, smoke: bool) -> list[str]:
    out = layer_speed_rows(args.repeats, smoke)
    batch, steps = (8, 2) if smoke else (128, args.steps)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    out += ["", f"ViT training step (patch 4, dim 64, depth 2, heads 2, mlp 2; batch {batch}, 28x28; forward + "
            f"cross-entropy + backward + AdamW step; median of {steps} steps after 3 warm-up steps; peak = torch "
            f"CPU allocations during one step, torch.profiler profile_memory=True)", "",
            "| model | train params | train MACs/sample | step ms (median) | step ms (min) | peak step memory MiB |",
            "|---|---|---|---|---|---|"]
    variants = [("dense", None), ("Kronecker 4x4 r1", (4, 4)), ("Kronecker 2x2 r1", (2, 2)),
                ("Kronecker 8x8 r1", (8, 8))]
    for label, block in variants:
        seed_everything(0)
        model = build_model("vit", (1, 28, 28), 10, **VIT)
        if block:
            kronify(model, block=block, include=["blocks.*"])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(model=model, opt=opt):  # this iteration's model, bound (called within the iteration)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        for _ in range(3):
            step()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        peak = peak_step_memory(step)
        cost = model_cost(model, (1, 28, 28)).total
        out.append(f"| {label} | {cost.params:,} | {cost.macs:,} | {statistics.median(times) * 1e3:.1f} "
                   f"| {min(times) * 1e3:.1f} | {peak / 2**20:.2f} |")
    return out


# ------------------------------------------------------------------------------------ main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--table", required=True, choices=TABLES)
    p.add_argument("--seeds", default="0,1,2", help="comma list (default 0,1,2)")
    p.add_argument("--epochs", type=int, default=None, help="per run (default: linear 5, lenet5 5, vit 4)")
    p.add_argument("--limit", type=int, default=None, help="training examples (default: 10000; vit 5000)")
    p.add_argument("--lr", type=float, default=None, help="AdamW lr (default: linear 1e-2, lenet5 and vit 2e-3)")
    p.add_argument("--lambda2", type=float, default=1e-4, help="Kronecker l1: start of the bisection (default 1e-4)")
    p.add_argument("--select-lambda2", type=float, default=1e-4,
                   help="l1 of the vit table's block-size selection runs, alone and one round (default 1e-4)")
    p.add_argument("--tolerance", type=float, default=TrainConfig.tolerance,
                   help="accuracy points: the one round's race keeps the cheapest candidate within them of the "
                        "best (vit table; default %(default)s)")
    p.add_argument("--probes", type=int, default=4, help="max trainings of the lambda2 bisection (default 4)")
    p.add_argument("--strengths", default="1e-4,1e-3,1e-2", help="group-lasso strengths tried on seed 0")
    p.add_argument("--search-trials", type=int, default=6)
    p.add_argument("--search-epochs", type=int, default=3)
    p.add_argument("--search-limit", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=50, help="layer_speed pairs per shape (speed table)")
    p.add_argument("--steps", type=int, default=20, help="timed ViT steps (speed table)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="tiny run on digits (16x16, 200 examples, 1 epoch, seed 0)")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.strengths = [float(s) for s in args.strengths.split(",") if s.strip()]
    defaults = DEFAULTS.get(args.table, {"epochs": 1, "limit": 200, "lr": 1e-3})
    if args.smoke:
        args.seeds, args.epochs, args.limit, args.probes = [0], 1, 200, 1
        args.strengths, args.search_trials, args.search_epochs, args.repeats = [1e-3], 2, 1, 3
    for key in ("epochs", "limit", "lr"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if not args.seeds or args.epochs < 1 or args.limit < 1 or args.probes < 1 or not args.strengths:
        p.error("need seeds, epochs >= 1, limit >= 1, probes >= 1 and strengths")
    if not 0 <= args.tolerance <= 100:
        p.error("--tolerance: accuracy points in [0, 100]")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"table {args.table}; seeds {','.join(map(str, args.seeds))}; torch threads {torch.get_num_threads()}"
          + ("; SMOKE (digits, numbers mean nothing)" if args.smoke else ""))
    if args.table in ("linear", "lenet5", "vit"):
        data = upsampled_digits(args.limit) if args.smoke else fashion_mnist(args.limit)
        print(f"data {data.name}: {len(data.train)} train, {len(data.val)} val, {len(data.test)} test; epochs "
              f"{args.epochs}, lr {args.lr}, batch 128, AdamW, cosine; target block sparsity 0.5\n")
        rows = {"linear": table_linear, "lenet5": table_lenet5, "vit": table_vit}[args.table](data, args)
        print(HEADER)
        print("\n".join(rows))
    elif args.table == "search":
        print("\n".join(table_search(args, args.smoke)))
    else:
        print("\n".join(table_speed(args, args.smoke)))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
