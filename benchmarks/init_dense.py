"""Does starting the Kronecker layers from a trained dense model help, against starting from random?

    python benchmarks/init_dense.py               # Fashion-MNIST, MLP-256 and LeNet-5, seeds 0,1 (~10 min, 1 thread,
                                                  # measured before the race, at commit 5ab447e)
    python benchmarks/init_dense.py --smoke       # digits, tiny budgets: checks the script runs, numbers mean nothing

Per model (`--models`):
1. A dense model is trained (`--dense-epochs`, seed 0) on Fashion-MNIST (the seed-0 split: 54000
   train, 6000 val, the 10000 test images) and its state saved; its accuracy is the reference row.
2. Two patterns, each at every rank of `--ranks`, trained for each of `--epochs` (separate runs,
   each a full cosine schedule), on every seed of `--seeds`:
   - one round: `kronify(candidates=2x2, 4x4, 8x8)` on the hidden Linear layers (MLP: layers.*;
     LeNet-5: fc1 and fc2, where 8x8 divides fc1 only; the head stays dense). The trainer's race
     (kronsearch.selection.Race, TrainConfig.select_epochs: a quarter of the epochs) comes first and
     keeps per layer the cheapest candidate within `--tolerance` accuracy points of the best; the
     winner then trains the epochs;
   - 4x4: `kronify(block=(4, 4))` on the same layers, the epochs alone.
   init "dense": the saved dense model is loaded and kronified with init="dense" (each KronLinear is
   the nearest rank-r Kronecker sum of the trained layer; each one-round candidate holds its own
   nearest sum, PatternSelectLinear.from_linear); the layers left dense (convolutions, head)
   keep their trained weights. init "random": a fresh model kronified with init="random".
   Both under the same TrainConfig and seed (the seed fixes the fresh model, the factors that
   from_linear does not set, and the batch order). `--lr` sets the kronified runs' learning rate
   (a fine-tuning rate) while the dense model keeps its own.
Columns: start test acc = the kronified model's test accuracy before any training (for the one
round, each layer's cheapest candidate alone: the race's leader before its first check, the model
the trainer reports while racing); val / test acc after training (mean ± std over seeds); dense -
random = the paired per-seed difference of test accuracy, in points; picked = the one round's block
per decomposed layer, per seed; wall = train() seconds (the one round's race included), mean over seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from selection import stat, upsampled_digits  # noqa: E402

from kronsearch.data import DataSplits, load_dataset  # noqa: E402
from kronsearch.data.batches import Batches  # noqa: E402
from kronsearch.layers.blocks import kron_macs, kron_params  # noqa: E402
from kronsearch.layers.kronify import kronify  # noqa: E402
from kronsearch.layers.pattern_select import PatternSelectLinear  # noqa: E402
from kronsearch.models import build_model  # noqa: E402
from kronsearch.trainer import TrainConfig, TrainResult, accuracy, seed_everything, train  # noqa: E402

CANDIDATES = [(2, 2), (4, 4), (8, 8)]
SINGLE = (4, 4)


@dataclass
class Setup:
    """A model, the layers decomposed, and its learning rate (the tested one of docs/benchmarks/ tables 2-3)."""

    name: str
    options: dict
    include: tuple[str, ...]
    lr: float


MODELS = {
    "mlp": Setup("mlp", {"hidden": [256]}, ("layers.*",), 3e-3),
    "lenet5": Setup("lenet5", {}, ("fc1", "fc2"), 2e-3),
}


def fashion(limit: int | None) -> DataSplits:
    data = load_dataset("fashion-mnist", seed=0)
    if limit is None:
        return data
    return replace(data, train=TensorDataset(*(t[:limit] for t in data.train.tensors)))


def smoke_data(model: str) -> DataSplits:
    """Digits for CI (LeNet-5 needs at least 12x12: upsampled to 16x16)."""
    return upsampled_digits(200) if model == "lenet5" else load_dataset("digits", seed=0, limit=200)


def config(setup: Setup, args: argparse.Namespace, epochs: int, seed: int, lr: float | None = None) -> TrainConfig:
    """Every run's settings; `tolerance` decides the one round's race and does nothing without candidates."""
    return TrainConfig(epochs=epochs, lr=lr or setup.lr, lambda2=args.lambda2, tolerance=args.tolerance,
                       batch_size=args.batch, compute="auto", progress=False, seed=seed)


@contextmanager
def cheapest_alone(model: torch.nn.Module) -> Iterator[None]:
    """Within the block every PatternSelectLinear computes with its cheapest candidate alone (MACs per
    input row, then parameters): the race's leader before its first check (kronsearch.selection.Race)."""
    with ExitStack() as stack:
        for layer in model.modules():
            if isinstance(layer, PatternSelectLinear):
                shape, rank = (layer.out_features, layer.in_features), layer.rank
                cheapest = min(layer.branches, key=lambda k: (kron_macs(*shape, layer.branches[k].block, rank),
                                                              kron_params(*shape, layer.branches[k].block, rank)))
                stack.enter_context(layer.only(cheapest))
        yield


def decompose(setup: Setup, pattern: str, rank: int, init: str) -> Callable[[torch.nn.Module], object]:
    if pattern == "one round":
        return lambda m: kronify(m, candidates=CANDIDATES, rank=rank, include=setup.include, init=init)
    return lambda m: kronify(m, block=SINGLE, rank=rank, include=setup.include, init=init)


def run(setup: Setup, data: DataSplits, dense_state: Path, pattern: str, rank: int, init: str, epochs: int,
        seed: int, args: argparse.Namespace) -> tuple[float, TrainResult]:
    """(test accuracy before training, the training's result) of one kronified model."""
    seed_everything(seed)
    model = build_model(setup.name, data.input_shape, data.num_classes, **setup.options)
    if init == "dense":
        model.load_state_dict(torch.load(dense_state, weights_only=True))
    decompose(setup, pattern, rank, init)(model)
    with cheapest_alone(model):
        start = accuracy(model, Batches(data.test, 1024, "cpu"))
    return start, train(model, data, config(setup, args, epochs, seed, args.lr))


def picked(results: Sequence[TrainResult]) -> str:
    return ", ".join("/".join(r.selected.values()) for r in results) if results[0].selected else "-"


def benchmark(setup: Setup, data: DataSplits, args: argparse.Namespace, folder: Path) -> list[str]:
    """Train the dense reference, then every (pattern, rank, epochs, init, seed); the table rows."""
    seed_everything(0)
    dense = build_model(setup.name, data.input_shape, data.num_classes, **setup.options)
    ref = train(dense, data, config(setup, args, args.dense_epochs, 0))
    state = folder / f"{setup.name}-dense.pt"
    torch.save(dense.state_dict(), state)
    print(f"  {setup.name} dense: val {ref.val_accuracy:.4f} test {ref.test_accuracy:.4f} ({ref.wall_time:.1f} s)",
          file=sys.stderr, flush=True)
    rows = [(f"| {setup.name} | dense (reference, seed 0) | - | {args.dense_epochs} | - | - | {ref.val_accuracy:.4f} "
             f"| {ref.test_accuracy:.4f} | - | - | {ref.wall_time:.1f} |")]
    for pattern in ("one round", "4x4"):
        for rank in args.ranks:
            for epochs in args.epochs:
                out = {}
                for init in ("dense", "random"):
                    out[init] = [run(setup, data, state, pattern, rank, init, epochs, seed, args)
                                 for seed in args.seeds]
                    print(f"  {setup.name} {pattern} r{rank} {epochs} ep {init}: " + ", ".join(
                        f"start {s:.4f} val {r.val_accuracy:.4f} test {r.test_accuracy:.4f} picked {picked([r])}"
                        for s, r in out[init]), file=sys.stderr, flush=True)
                for init in ("dense", "random"):
                    starts = [s for s, _ in out[init]]
                    results = [r for _, r in out[init]]
                    delta = (stat([100 * (d.test_accuracy - r.test_accuracy)
                                   for (_, d), (_, r) in zip(out["dense"], out["random"])], 2)
                             if init == "dense" else "")
                    rows.append(
                        f"| {setup.name} | {pattern} | {rank} | {epochs} | {init} | {stat(starts, 4)} "
                        f"| {stat([r.val_accuracy for r in results], 4)} "
                        f"| {stat([r.test_accuracy for r in results], 4)} "
                        f"| {delta} | {picked(results)} | {statistics.fmean(r.wall_time for r in results):.1f} |")
    return rows


HEADER = ("| model | pattern | rank | epochs | init | start test acc | val acc | test acc | test: dense - random "
          "(points) | picked (per seed) | wall s |\n|" + "---|" * 11)


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", default=",".join(MODELS), help="comma list of %(default)s")
    parser.add_argument("--seeds", default="0,1", help="comma list (default %(default)s)")
    parser.add_argument("--ranks", default="1,4", help="comma list (default %(default)s)")
    parser.add_argument("--epochs", default="1,2", help="training epochs of the kronified models, one run each "
                                                        "(default %(default)s)")
    parser.add_argument("--dense-epochs", type=int, default=3, help="epochs of the dense model (default %(default)s)")
    parser.add_argument("--tolerance", type=float, default=TrainConfig.tolerance,
                        help="the one round's race: accuracy points within which the cheapest candidate wins "
                             "(default %(default)s)")
    parser.add_argument("--lambda2", type=float, default=1e-4, help="l1 on S, every run (default %(default)s)")
    parser.add_argument("--lr", type=float, default=None,
                        help="lr of the kronified runs (default: the model's, 3e-3 MLP, 2e-3 LeNet-5, "
                             "which the dense model always uses)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="Fashion-MNIST training examples (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="digits, 200 examples, seed 0, rank 1, 1 epoch; for CI")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown}; allowed: {', '.join(MODELS)}")
    try:
        args.seeds, args.ranks, args.epochs = int_list(args.seeds), int_list(args.ranks), int_list(args.epochs)
    except ValueError as err:
        parser.error(f"--seeds / --ranks / --epochs: comma lists of integers ({err})")
    if not (args.seeds and args.ranks and args.epochs) or min(args.ranks + args.epochs) < 1:
        parser.error("--seeds, --ranks and --epochs need at least one value; ranks and epochs >= 1")
    if args.dense_epochs < 1 or args.batch < 1 or args.threads < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--dense-epochs, --batch, --threads and --limit must be >= 1")
    if args.lambda2 < 0 or not 0 <= args.tolerance <= 100 or (args.lr is not None and args.lr <= 0):
        parser.error("--lambda2 must be >= 0, --tolerance in [0, 100], --lr > 0")
    if args.smoke:
        args.seeds, args.ranks, args.epochs, args.dense_epochs = args.seeds[:1], args.ranks[:1], args.epochs[:1], 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"models {', '.join(args.models)}; seeds {','.join(map(str, args.seeds))}; ranks "
          f"{','.join(map(str, args.ranks))}; epochs {','.join(map(str, args.epochs))} (dense {args.dense_epochs}); "
          f"candidates {', '.join(f'{h}x{w}' for h, w in CANDIDATES)}, race tolerance {args.tolerance}; "
          f"lambda2 {args.lambda2}; "
          f"batch {args.batch}, AdamW, cosine; torch threads {torch.get_num_threads()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            setup = MODELS[name]
            data = smoke_data(name) if args.smoke else fashion(args.limit)
            if name == args.models[0]:
                print(f"data {data.name}: {len(data.train)} train, {len(data.val)} val, {len(data.test)} test; "
                      f"lr: {', '.join(f'{m} {MODELS[m].lr}' for m in args.models)}"
                      + (f" (kronified runs {args.lr})" if args.lr else ""), flush=True)
            rows += benchmark(setup, data, args, Path(tmp))
    print()
    print(HEADER)
    print("\n".join(rows))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
