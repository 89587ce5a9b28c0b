"""One training epoch through the in-memory fast path against the same tensors through a DataLoader.

    python benchmarks/data_paths.py               # digits (batch 64) and Fashion-MNIST (batch 256), 10 rounds
    python benchmarks/data_paths.py --smoke       # digits only, a few hundred examples, 1 round: checks it runs

`kronsearch.data.batches.Batches` (what the trainer uses) indexes TensorDatasets directly (the splits
of every built-in dataset: the fast path); any other torch Dataset goes through a torch DataLoader.
Here the same splits (train, val and test) are trained on twice with `kronsearch.trainer.train`, one
epoch of an MLP (hidden [256], dense) each time:
- in-memory: the splits as `load_dataset` returns them (TensorDataset);
- DataLoader: the same tensors wrapped in a plain `torch.utils.data.Dataset` that returns one
  (image, label) per index, so the DataLoader (num_workers 0, default collate) runs.
Same model init, seed and settings. The batch orders differ (the DataLoader draws a base seed from
the trainer's generator before its permutation), so the two test accuracies printed agree only up to
the noise of a different batch order.

Timing: `--rounds` rounds, each path once per round, the order alternating from round to round, so
slow drifts of a shared machine fall on both. Reported: the median over rounds of the epoch's
training loop (the trainer's EpochReport.seconds: batches, forward, backward, step; no evaluation)
and of the whole train() call (setup, the epoch, validation after the epoch and at the end, the test
set), and the medians of the per-round ratios DataLoader / in-memory. One torch thread by default.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from kronsearch.data import DataSplits, load_dataset
from kronsearch.models import build_model
from kronsearch.trainer import TrainConfig, TrainResult, seed_everything, train

HIDDEN = [256]
LR = 3e-3


class PerItem(Dataset):
    """The tensors of a TensorDataset served one (image, label) per index: a plain Dataset, no fast path."""

    def __init__(self, split: TensorDataset) -> None:
        self.images, self.labels = split.tensors

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]


def per_item(data: DataSplits) -> DataSplits:
    """The same splits, each wrapped in PerItem."""
    return replace(data, train=PerItem(data.train), val=PerItem(data.val), test=PerItem(data.test))


def one_epoch(data: DataSplits, batch_size: int, seed: int) -> TrainResult:
    seed_everything(seed)
    model = build_model("mlp", data.input_shape, data.num_classes, hidden=HIDDEN)
    return train(model, data, TrainConfig(epochs=1, lr=LR, batch_size=batch_size, compute="auto",
                                          progress=False, seed=seed))


def measure(data: DataSplits, batch_size: int, rounds: int, seed: int) -> dict:
    """Each path once per round, alternating which goes first; medians and per-round ratios."""
    paths = {"memory": data, "loader": per_item(data)}
    runs: dict[str, list[TrainResult]] = {p: [] for p in paths}
    for round_ in range(rounds):
        order = list(paths) if round_ % 2 == 0 else list(reversed(paths))
        for path in order:
            runs[path].append(one_epoch(paths[path], batch_size, seed))
    epoch = {p: [r.history[0].seconds for r in rs] for p, rs in runs.items()}
    wall = {p: [r.wall_time for r in rs] for p, rs in runs.items()}
    return {
        "epoch": {p: statistics.median(v) for p, v in epoch.items()},
        "wall": {p: statistics.median(v) for p, v in wall.items()},
        "epoch_ratio": statistics.median(b / a for a, b in zip(epoch["memory"], epoch["loader"])),
        "wall_ratio": statistics.median(b / a for a, b in zip(wall["memory"], wall["loader"])),
        "test": {p: rs[-1].test_accuracy for p, rs in runs.items()},
        "steps": -(-len(data.train) // batch_size),
    }


HEADER = ("| dataset | train examples | batch | steps | in-memory epoch s | DataLoader epoch s | epoch ratio "
          "| in-memory train() s | DataLoader train() s | train() ratio | test acc in-memory / DataLoader |\n|"
          + "---|" * 11)


def row(name: str, data: DataSplits, batch_size: int, m: dict) -> str:
    return (f"| {name} | {len(data.train)} | {batch_size} | {m['steps']} | {m['epoch']['memory']:.3f} "
            f"| {m['epoch']['loader']:.3f} | {m['epoch_ratio']:.2f} | {m['wall']['memory']:.3f} "
            f"| {m['wall']['loader']:.3f} | {m['wall_ratio']:.2f} "
            f"| {m['test']['memory']:.4f} / {m['test']['loader']:.4f} |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per path (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="model init and batch order (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="digits only, 300 examples, 1 round; for CI")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads must be >= 1")
    if args.smoke:
        args.rounds = 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # (label, loader, batch): the smoke run stands digits in for Fashion-MNIST, so CI needs no data files
    tasks = ([("digits", lambda: load_dataset("digits", seed=0, limit=300), 64),
              ("digits", lambda: load_dataset("digits", seed=0, limit=300), 256)] if args.smoke else
             [("digits", lambda: load_dataset("digits", seed=0), 64),
              ("fashion-mnist", lambda: load_dataset("fashion-mnist", seed=0), 256)])
    print(f"MLP hidden {HIDDEN}, dense, 1 epoch, AdamW lr {LR}, compute auto; {args.rounds} round(s) per path, "
          f"order alternating; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"load average before {os.getloadavg()[0]:.2f}", flush=True)
    one_epoch(load_dataset("digits", seed=0, limit=64), 64, 0)  # untimed warm-up (torch start-up)
    start = time.perf_counter()
    rows = []
    for name, load, batch_size in tasks:
        data = load()
        rows.append(row(name, data, batch_size, measure(data, batch_size, args.rounds, args.seed)))
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    print()
    print(HEADER)
    print("\n".join(rows))
    print(f"\nload average after {os.getloadavg()[0]:.2f}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
