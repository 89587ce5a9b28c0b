"""Training-step time and peak memory of ViT-tiny, dense against kronified, per compute path.

    python benchmarks/model_speed.py                       # ViT-tiny, batch 64, 10 timed rounds
    python benchmarks/model_speed.py --smoke               # depth 1, batch 4, 1 round: checks the script runs

The model is the paper's ViT-tiny for CIFAR-100 shapes (dim 192, depth 12, 3 heads, mlp 4, patch 4,
3x32x32 input, 100 classes). Kronified models go through `kronify(include=["blocks.*"])` at rank 1
(attention qkv/proj and MLP fc1/fc2 of every block; patch embedding and head stay dense): one per
block 2x2, 4x4, 8x8, 16x16, and a one-round model with candidates 2x2, 4x4, 8x8 (PatternSelectLinear,
loss + l1_penalty, lambda2 1e-4 on every S). Each kronified model runs once per `--compute` mode
("factored", "merged", "auto"), with the same initial weights.

The one-round row runs every layer's forward as the sum of all its candidates: the step of the summed
contest that the one round ran before the race (commit 5ab447e). The race (kronsearch.selection.Race)
never trains that sum: each of its steps runs one candidate per layer alone, a step of the Kronecker
row of that candidate's block.

A step is zero_grad, forward, cross-entropy (+ penalty), backward and an AdamW step, on one fixed
random batch. Timing: every model takes `--warmup` steps (auto's one-time timing of each layer shape
happens there), then `--rounds` rounds; in each round every model runs one step, in an order rotated
from round to round, and its time is divided by the dense step of the same round. The table gives
the median step time and the median of those per-round ratios, so slow drifts of a shared machine
cancel. Peak memory: one extra step per model under torch.profiler (benchmarks/paper_tables.py's
peak_step_memory: torch's CPU allocations during the step, above the level at its start).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from paper_tables import peak_step_memory
from torch import nn

from kronsearch import KronLinear, PatternSelectLinear, kronify, l1_penalty
from kronsearch.layers.blocks import format_block
from kronsearch.layers.compute import compute_choices
from kronsearch.models import build_model

VIT_TINY = {"patch_size": 4, "dim": 192, "depth": 12, "heads": 3, "mlp_ratio": 4.0}
BLOCKS = [(2, 2), (4, 4), (8, 8), (16, 16)]
ONE_ROUND = [(2, 2), (4, 4), (8, 8)]
LAMBDA2 = 1e-4


class Variant:
    """One model, its optimizer and its training step."""

    def __init__(self, label: str, compute: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.label, self.compute, self.model, self.x, self.y = label, compute, model, x, y
        for module in model.modules():
            if isinstance(module, (KronLinear, PatternSelectLinear)):
                module.compute = compute
        self.penalty = any(isinstance(m, PatternSelectLinear) for m in model.modules())
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.times: list[float] = []
        self.ratios: list[float] = []

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(self.x), self.y)
        if self.penalty:
            loss = loss + l1_penalty(self.model, LAMBDA2)
        loss.backward()
        self.opt.step()

    def timed_step(self) -> float:
        start = time.perf_counter()
        self.step()
        return time.perf_counter() - start


def build_variants(args: argparse.Namespace) -> list[Variant]:
    """Dense first, then every kronified model in every requested compute mode."""
    options = dict(VIT_TINY, depth=1) if args.smoke else VIT_TINY
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=generator)
    y = torch.randint(0, 100, (args.batch,), generator=generator)

    def vit(**kron) -> nn.Module:
        torch.manual_seed(0)
        model = build_model("vit", (3, 32, 32), 100, **options)
        if kron:
            kronify(model, include=["blocks.*"], rank=1, **kron)
        return model

    variants = [Variant("dense", "-", vit(), x, y)]
    for compute in args.compute:
        for block in BLOCKS:
            variants.append(Variant(f"Kronecker {format_block(block)} r1", compute, vit(block=block), x, y))
        label = "one round " + "/".join(format_block(c) for c in ONE_ROUND)
        variants.append(Variant(label, compute, vit(candidates=ONE_ROUND), x, y))
    return variants


def describe_choice(key: tuple) -> str:
    """'768x192 [2x2, 4x4] rows 4096: merged'-style text for one compute_choices() key."""
    in_features, shapes, rows, dtype, device, grad = key
    (_, m1, _), (_, h, _), _ = shapes[0]
    blocks = ", ".join(f"{b[1]}x{b[2]}" for _, b, _ in shapes)
    return f"{m1 * h}x{in_features} [{blocks}] r{shapes[0][0][0]} rows {rows}{'' if grad else ' (no grad)'}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="images per step (default 64)")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first (default 2)")
    parser.add_argument("--compute", type=lambda s: s.split(","), default=["factored", "merged", "auto"],
                        help="comma-separated compute modes of the kronified models (default factored,merged,auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--smoke", action="store_true", help="depth 1, batch 4, 1 round, 1 warm-up")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.rounds, args.warmup = 4, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = build_variants(args)
    print(f"ViT-tiny {'(smoke: depth 1) ' if args.smoke else ''}training step, batch {args.batch}, float32, "
          f"{torch.get_num_threads()} threads; {args.warmup} warm-up steps, median of {args.rounds} interleaved "
          f"rounds; load average before: {os.getloadavg()[0]:.2f}\n", flush=True)
    for variant in variants:
        for _ in range(args.warmup):
            variant.step()
    dense = variants[0]
    for round_ in range(args.rounds):
        shift = round_ % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            variant.times.append(variant.timed_step())
        for variant in variants:
            variant.ratios.append(variant.times[-1] / dense.times[-1])
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{v.label} {v.compute} {v.ratios[-1]:.2f}"
                                                             for v in variants[1:]), file=sys.stderr, flush=True)
    peaks = [peak_step_memory(variant.step) for variant in variants]
    print("| model | compute | step ms (median) | vs dense (median ratio) | peak step MiB | peak vs dense |")
    print("|---|---|---|---|---|---|")
    for variant, peak in zip(variants, peaks):
        print(f"| {variant.label} | {variant.compute} | {statistics.median(variant.times) * 1e3:.0f} | "
              f"{statistics.median(variant.ratios):.2f} | {peak / 2**20:.1f} | {peak / peaks[0]:.2f} |")
    choices = compute_choices()
    if choices:
        print("\nauto's choices (layer shape [blocks] rank, rows bucket: path):")
        for key, path in choices.items():
            print(f"- {describe_choice(key)}: {path}")
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (other processes skew the ratios)")


if __name__ == "__main__":
    main()
