"""The one round inside your own training loop: bf16 autocast, gradient accumulation, clipping, your scheduler.

    python examples/own_loop.py

kronsearch.OneRound attaches to the model and the optimizer by hooks: each optimizer step trains one
candidate block per layer, the race validates them after `select_steps` steps, the losers leave the layer and
the optimizer, and the cheapest candidate within `tolerance` accuracy points of the best wins where the evidence
allows; while candidates that still learn are not separated the race runs on (up to twice `select_steps`), and
a layer it cannot decide keeps its most accurate candidate and says so (Decision.by "fallback"). The
loop itself is a plain PyTorch loop; the lines marked "kronsearch" are all it adds.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

import kronsearch


def digits(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """sklearn's 8x8 digits as (train, val) tensors: 1400 and 397 flat images in [0, 1]."""
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def main(epochs: int = 4, select_steps: int = 30, accumulate: int = 2, micro_batch: int = 32, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    (x, y), (val_x, val_y) = digits(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10))
    kronsearch.kronify(model, candidates=[(2, 2), (4, 4), (8, 8)], include=["0"])  # kronsearch
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    steps = epochs * len(y) // (micro_batch * accumulate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    val = [(val_x[i:i + 128], val_y[i:i + 128]) for i in range(0, len(val_y), 128)]
    one_round = kronsearch.OneRound(model, optimizer, select_steps=select_steps, validate=val,  # kronsearch
                                    tolerance=0.5, lambda2=1e-4)

    for _ in range(epochs):
        order = torch.randperm(len(y))
        for i, start in enumerate(range(0, len(y) - micro_batch + 1, micro_batch)):
            batch = order[start:start + micro_batch]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch]) / accumulate
            loss.backward()
            if (i + 1) % accumulate == 0:
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()  # the race advances here, one step per optimizer step
                optimizer.zero_grad()
                scheduler.step()

    one_round.finish()  # kronsearch: decides now if the loop ran fewer than select_steps steps
    plan = one_round.plan()  # kronsearch: {layer: LayerPattern(block, rank)}, as `kronsearch export` writes
    one_round.close()
    kronsearch.finalize_model(model)  # kronsearch: each PatternSelectLinear becomes its winner, a KronLinear
    model.eval()
    with torch.no_grad():
        accuracy = (model(val_x).argmax(-1) == val_y).float().mean().item()
    decisions = {n: f"{d.block} at step {d.step} ({d.by})" for n, d in one_round.decisions.items()}
    print(f"decisions: {decisions}")
    print(f"plan: { {n: p.to_dict() for n, p in plan.items()} }")
    print(f"val accuracy: {100 * accuracy:.1f}%")
    return {"decisions": one_round.decisions, "plan": plan, "accuracy": accuracy}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--select-steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.select_steps, seed=args.seed)
