"""Does the race find a planted block, through kronsearch.OneRound in a plain loop (the own-loop API)?

Issue 32's setup: a linear layer 64 -> 16 (synthetic data) whose rank-1 teacher has 4x8, 8x2 or 16x16 blocks,
half of them zero, labels = argmax of its output; six candidates (2x2, 4x4, 8x8, 4x8, 8x2, 16x16); batch 32,
Adam at lr 1e-2; a race of `--steps` steps (240: 40 per candidate), allowed to extend itself up to `--extend`
times that (OneRound(extend=...)). Per planted block and seed it prints the decision (block, how it was
decided, at which step) and every candidate's last estimate; then how often the planted block was kept, and how
often a wrong block was reported as decided by evidence ("survivor" or "budget", not "fallback").

    python benchmarks/planted.py                     # seeds 0-2 of each block: 9 races, about a minute here
    python benchmarks/planted.py --extend 1          # the race held at its budget
    python benchmarks/planted.py --fallback cheapest # at the cap, the cheapest plausible candidate
    python benchmarks/planted.py --smoke             # CI: one seed, 60 steps; its numbers mean nothing
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from kronsearch.data import load_dataset
from kronsearch.data.batches import Batches
from kronsearch.layers.kronify import kronify
from kronsearch.models import build_model
from kronsearch.one_round import OneRound
from kronsearch.selection import RACE_FALLBACKS, Decision
from kronsearch.trainer import TrainConfig, make_optimizer, seed_everything

PLANTED = [(4, 8), (8, 2), (16, 16)]
CANDIDATES = [(2, 2), (4, 4), (8, 8), (4, 8), (8, 2), (16, 16)]


def race(planted: tuple[int, int], seed: int, steps: int, extend: float, fallback: str) -> tuple[Decision, str]:
    """One race on the planted task: its decision for the layer and its candidates' last estimates in words."""
    data = load_dataset("synthetic", block=planted, sparsity=0.5, seed=seed, n_train=4000, n_test=1000)
    seed_everything(seed)
    model = build_model("linear", data.input_shape, data.num_classes)
    kronify(model, candidates=CANDIDATES)
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2, batch_size=32))
    one_round = OneRound(model, optimizer, select_steps=steps, validate=Batches(data.val, 256, "cpu"), seed=seed,
                         extend=extend, fallback=fallback)
    generator, train = torch.Generator().manual_seed(seed), Batches(data.train, 32, "cpu")
    while not one_round.done:
        for x, y in train.shuffled(generator):
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            if one_round.done:
                break
    estimates = ", ".join(f"{k} {100 * e.accuracy:.1f}" for k, e in one_round.race.estimates["fc"].items())
    return one_round.decisions["fc"], estimates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of each planted block (default 3)")
    parser.add_argument("--steps", type=int, default=240, help="the race's budget in steps (default 240)")
    parser.add_argument("--extend", type=float, default=2.0, help="the race's cap, times --steps (default 2)")
    parser.add_argument("--fallback", choices=RACE_FALLBACKS, default=RACE_FALLBACKS[0],
                        help="what the race keeps at its cap, undecided (default %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="one seed, 60 steps: checks the script runs")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.steps < 1 or not args.extend >= 1:
        parser.error("--seeds and --steps must be >= 1, --extend >= 1")
    if args.smoke:
        args.seeds, args.steps = 1, 60
    torch.set_num_threads(1)
    found = wrong_by_evidence = runs = 0
    for planted in PLANTED:
        for seed in range(args.seeds):
            decision, estimates = race(planted, seed, args.steps, args.extend, args.fallback)
            right = decision.block == f"{planted[0]}x{planted[1]}"
            found, runs = found + right, runs + 1
            wrong_by_evidence += not right and decision.by != "fallback"
            print(f"planted {planted[0]}x{planted[1]} seed {seed}: {decision.block} by {decision.by} at step "
                  f"{decision.step} ({'right' if right else 'WRONG'}); {estimates}", flush=True)
    print(f"planted block found {found}/{runs}; wrong, reported as decided by evidence {wrong_by_evidence}/{runs}")


if __name__ == "__main__":
    main()
