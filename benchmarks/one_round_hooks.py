"""The one round's hooks (kronsearch.OneRound): their step-time overhead, and bf16 autocast against float32.

    python benchmarks/one_round_hooks.py                 # ViT-tiny hooks overhead + digits ViT bf16/fp32, 3 seeds
    python benchmarks/one_round_hooks.py --parts bf16    # only (b)
    python benchmarks/one_round_hooks.py --smoke         # depth 1, batch 4, 1 seed of 1 epoch: checks it runs

(a) Hooks overhead. Two copies of the racing ViT-tiny of benchmarks/model_speed.py (VIT_TINY, candidates
2x2/4x4/8x8 at rank 1 on blocks.*, factored compute, AdamW, lambda2 1e-4, one fixed random batch of
`--batch`): one driven by OneRound's hooks (a plain zero_grad/forward/backward/step loop), one by the
explicit calls of the Race (kronsearch.selection) that the trainer made before OneRound: `race.routed()`
around the forward, `prox_l1_` on the trained S and `race.step()` after the optimizer step. The race's
budget is far beyond the run, so no validation check runs: only the per-step work is timed. Each round
times `--steps` steps of each, in an order alternating from round to round; the reported ratio is the
median over rounds of hooks / explicit.

(b) bf16. kronsearch.trainer.train on digits with search_spaces/vit.yaml's settings (ViT dim 32 depth 2,
12 epochs, batch 64, AdamW lr 5e-3, wd 0.05, warm-up 1, candidates 2x2/4x4/8x8 at rank 1, lambda2 1e-4,
factored compute, 1 thread), once in float32 and once inside `torch.autocast("cpu", torch.bfloat16)`, for
`--seeds` seeds: the mean test accuracy of each and the median optimizer-step time ratio bf16 / float32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from kronsearch import OneRound, kronify
from kronsearch.data import load_dataset
from kronsearch.models import build_model
from kronsearch.selection import Race, prox_l1_, s_parameters
from kronsearch.trainer import TrainConfig, train

VIT_TINY = {"patch_size": 4, "dim": 192, "depth": 12, "heads": 3, "mlp_ratio": 4.0}  # model_speed.py's
CANDIDATES = [(2, 2), (4, 4), (8, 8)]
LAMBDA2 = 1e-4
DIGITS_VIT = {"patch_size": 4, "dim": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0}  # search_spaces/vit.yaml


def racing_vit(options: dict) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("vit", (3, 32, 32), 100, **options)
    kronify(model, include=["blocks.*"], rank=1, candidates=CANDIDATES)
    for module in model.modules():
        if hasattr(module, "compute"):
            module.compute = "factored"
    return model


class Hooked:
    """The plain loop; OneRound's hooks route, clear, prox and advance the race."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.x, self.y = model, x, y
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.one_round = OneRound(model, self.opt, select_steps=10**9, validate=[(x, y)], lambda2=LAMBDA2)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()


class Explicit:
    """The trainer's loop before OneRound: the Race's calls written out."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.x, self.y = model, x, y
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.race = Race(model, self.opt, 10**9, 1.0, [(x, y)], 0)
        self.s = s_parameters(model)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with self.race.routed():
            loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        prox_l1_(self.opt, [p for p in self.s if p.grad is not None], LAMBDA2)
        self.race.step()


def hooks_overhead(args: argparse.Namespace) -> dict:
    options = dict(VIT_TINY, depth=1) if args.smoke else VIT_TINY
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=generator)
    y = torch.randint(0, 100, (args.batch,), generator=generator)
    runners = {"hooks": Hooked(racing_vit(options), x, y), "explicit": Explicit(racing_vit(options), x, y)}
    for runner in runners.values():
        for _ in range(args.warmup):
            runner.step()
    times: dict[str, list[float]] = {k: [] for k in runners}
    ratios = []
    for r in range(args.rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        this = {}
        for name in order:
            start = time.perf_counter()
            for _ in range(args.steps):
                runners[name].step()
            this[name] = (time.perf_counter() - start) / args.steps
            times[name].append(this[name])
        ratios.append(this["hooks"] / this["explicit"])
    return {"hooks_ms": 1e3 * statistics.median(times["hooks"]),
            "explicit_ms": 1e3 * statistics.median(times["explicit"]),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def digits_run(seed: int, bf16: bool, args: argparse.Namespace) -> tuple[float, float]:
    """(test accuracy, median optimizer-step seconds) of one one-round training on digits."""
    data = load_dataset("digits", seed=seed, **({"limit": 200} if args.smoke else {}))
    torch.manual_seed(seed)
    model = build_model("vit", data.input_shape, data.num_classes, **DIGITS_VIT)
    kronify(model, include=["blocks.*"], rank=1, candidates=CANDIDATES)
    config = TrainConfig(epochs=1 if args.smoke else 12, batch_size=64, optimizer="adamw", lr=0.005,
                         weight_decay=0.05, warmup_epochs=0 if args.smoke else 1, lambda2=LAMBDA2, seed=seed,
                         compute="factored", threads=1, progress=False)
    stamps: list[float] = []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        result = train(model, data, config, after_step=lambda step, total: stamps.append(time.perf_counter()))
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return result.test_accuracy, statistics.median(gaps) if gaps else float("nan")


def bf16_vs_fp32(args: argparse.Namespace) -> dict:
    out: dict[str, list[float]] = {"fp32_acc": [], "bf16_acc": [], "fp32_step": [], "bf16_step": []}
    for seed in range(args.seeds):
        for bf16 in (False, True) if seed % 2 == 0 else (True, False):  # alternate which runs first
            accuracy, step = digits_run(seed, bf16, args)
            key = "bf16" if bf16 else "fp32"
            out[f"{key}_acc"].append(accuracy)
            out[f"{key}_step"].append(step)
            print(f"seed {seed} {key}: test accuracy {100 * accuracy:.2f}%, median step {1e3 * step:.2f} ms",
                  flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="depth 1, batch 4, 2 rounds; 1 seed of 1 epoch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3, help="steps per model per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parts", default="hooks,bf16", help="comma list of the parts to run (default %(default)s)")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"hooks", "bf16"}:
        parser.error(f"--parts: a comma list of hooks, bf16; got {args.parts!r}")
    if args.smoke:
        args.batch, args.rounds, args.steps, args.warmup, args.seeds = 4, 2, 1, 1, 1
    torch.set_num_threads(args.threads)

    if "hooks" in parts:
        print_hooks_overhead(args)
    if "bf16" in parts:
        print_bf16_vs_fp32(args)


def print_hooks_overhead(args: argparse.Namespace) -> None:
    a = hooks_overhead(args)
    print(f"\n(a) hooks overhead, ViT-tiny{' (depth 1)' if args.smoke else ''}, batch {args.batch}, factored, "
          f"{args.rounds} rounds x {args.steps} steps, {args.threads} thread(s)\n")
    print("| loop | median step (ms) |")
    print("|---|---|")
    print(f"| explicit Race calls | {a['explicit_ms']:.1f} |")
    print(f"| OneRound hooks | {a['hooks_ms']:.1f} |")
    print(f"\nhooks / explicit: median {a['ratio']:.3f} (rounds: {a['ratio_min']:.3f} to {a['ratio_max']:.3f}); "
          f"target <= 1.03: {'met' if a['ratio'] <= 1.03 else 'MISSED'}")


def print_bf16_vs_fp32(args: argparse.Namespace) -> None:
    b = bf16_vs_fp32(args)
    fp32, bf16 = (100 * statistics.mean(b[k]) for k in ("fp32_acc", "bf16_acc"))
    step_ratio = statistics.median(s / f for s, f in zip(b["bf16_step"], b["fp32_step"]))
    print(f"\n(b) bf16 autocast vs float32, digits ViT (search_spaces/vit.yaml settings), {args.seeds} seed(s)\n")
    print("| precision | test accuracy per seed (%) | mean (%) | median step (ms) |")
    print("|---|---|---|---|")
    for key, mean in (("fp32", fp32), ("bf16", bf16)):
        seeds = ", ".join(f"{100 * v:.2f}" for v in b[f"{key}_acc"])
        print(f"| {'float32' if key == 'fp32' else 'bf16 autocast'} | {seeds} | {mean:.2f} | "
              f"{1e3 * statistics.median(b[f'{key}_step']):.2f} |")
    print(f"\nbf16 - float32: {bf16 - fp32:+.2f} points (target within 0.5: "
          f"{'met' if abs(bf16 - fp32) <= 0.5 or bf16 > fp32 else 'MISSED'}); "
          f"step time bf16 / float32: {step_ratio:.2f}")


if __name__ == "__main__":
    main()
