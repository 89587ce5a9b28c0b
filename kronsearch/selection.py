"""The one round's competition: exact zeros, a contest decided by the data, one continuous run.

Two proximal steps follow every optimizer step (the loss itself carries no penalty):

- `prox_l1_`, lambda2 * ||S||_1 on every S: soft-thresholding in the optimizer's own metric. Under
  Adam(W) the threshold of each entry is lr * lambda2 / (sqrt(v_hat) + eps), the prox of Adam's
  diagonal preconditioner, so lambda2 keeps the meaning it had as a subgradient penalty (a block
  dies when its loss gradient stays below lambda2) but the entry lands on exactly 0 and stays
  there instead of jittering around it. Under SGD the threshold is lr * lambda2.
- `GateSelection`, the contest inside every PatternSelectLinear: every candidate k has a gate g_k,
  its norm relative to the start (||W_k|| = g_k * ||W_k at step 0||). After the optimizer moved S,
  A and B, S_k is rescaled so that ||W_k|| is exactly its gate's: the optimizer shapes a candidate,
  the gate alone sets how much of it the layer uses. The gate follows the data:
      g_k <- max(0, g_k + rate * ((push_k - mean_j push_j) / scale - lambda1))
      push_k = -<dL/dW, W_k / ||W_k||> = -<dL/dS_k, S_k> / ||W_k||   (W_k is linear in S_k)
  push_k is the first-order loss decrease per unit of ||W_k||; scale is an EMA of the RMS of the
  pushes in the layer, so lambda1 has no units. A candidate that pulls harder than the layer's
  average grows, a weaker one shrinks, and lambda1 shrinks all of them: with lambda1 = 0 the contest
  is zero-sum. Nothing in the rule depends on how a candidate splits its norm between S, A and B,
  or on its size; rate = GATE_TRAVEL / select_steps gives a gate the same reach for any run length
  and learning rate.

A layer's contest ends when one candidate is left, or at the budget (`select_steps`): then the
largest gate wins, or the cheapest candidate among the gates within TIE of it, and the others fade
linearly to exactly 0 over FADE_FRACTION of the budget, so the winner absorbs their share while
training goes on. A candidate whose gate reached 0 is exactly zero; it leaves the layer and its
parameters leave the optimizer at once.

Designs measured against each other (synthetic: a linear layer with a planted block, 4x4/8x8/2x8/
8x2/2x2 on seeds 0-4, candidates 2x2/4x4/8x8/2x8/8x2, 10 epochs; Fashion-MNIST MLP-256, 10k examples,
8 epochs, candidates 2x2..16x16; benchmarks/selection.py unless marked prototype; "cost" is the
one round's training MACs over one training of its pick alone):
- prox only (prototype: plain SGD on S, group prox S_k *= max(0, 1 - eta*lambda1/||S_k||), seeds 0-1
  of planted 8x8 and 4x4): lambda1 1 left only 2x2 by step ~40 on every run (test 0.57 where the
  planted block alone reaches 0.97); lambda1 0.1 picked right but ended 1.5-2.3 points under it.
- single-path race (prototype: each step trains one sampled candidate, the worst by validation
  accuracy leaves at 3 points of the first 25%): 3 of 4 planted runs right, and on Fashion-MNIST
  seed 1 2.3 points under the best alone (the winner trained a quarter of the early steps).
- gates against lambda1 alone, g_k += rate * (push_k / scale - lambda1), GATE_TRAVEL 4, budget 25%:
  synthetic 5/5 right but no candidate left early (cost 1.5-3.4x, mean 2.3x); budget 10% or 15%:
  3/5 right. Fashion-MNIST: mean regret 0.37 point, final gap -0.76, cost 1.46x.
- gates against the strongest pull, push_k - lambda1 * max_j push_j: 3/5 right (2x2, the fastest
  early learner, ended the planted 2x8 and 8x2).
- gates against the layer's mean (this module), GATE_TRAVEL 12: synthetic 5/5 right, final gap
  +0.5 point, cost 1.8x; Fashion-MNIST regret 0.29, final gap -0.72, cost 1.09x. GATE_TRAVEL 4:
  5/5, cost 2.3x; 24: 4/5, cost 1.4x (noise decides sooner).
- gates paced by the learning-rate schedule (still during warm-up), on the digits ViT (warm-up 1 of
  12 epochs): regret 1.28 against 1.56 point, final gap -2.90 against -2.17: no better within the
  seed noise, so the rate stays constant.
- TIE 0.1 against none, on the digits ViT: mean regret 1.56 against 1.84 point (seed noise is
  about a point there); it is kept because equal candidates should cost the least.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from kronsearch.layers.kron_linear import KronLinear
from kronsearch.layers.pattern_select import PatternSelectLinear
from kronsearch.layers.blocks import kron_macs, kron_params

GATE_TRAVEL = 12.0
"""How far a gate can move over the selection budget at a pull one scale away from lambda1."""
FADE_FRACTION = 0.1
"""Losers fade to 0 over this fraction of the selection budget after a choice made at the budget."""
TIE = 0.1
"""At the budget, gates within this fraction of the largest count as equally good, and the cheapest of
them (fewest MACs per input row, then fewest parameters) wins."""
PUSH_EMA = 0.9
"""Smoothing of the per-layer push scale (about ten steps)."""


@torch.no_grad()
def prox_l1_(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], lambda2: float) -> None:
    """Soft-threshold each of `params` by lr * lambda2 in `optimizer`'s metric (see the module doc)."""
    if lambda2 <= 0:
        return
    wanted = {id(p) for p in params}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in wanted:
                continue
            threshold = group["lr"] * lambda2
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" in state:
                step = float(state["step"])
                bias = 1.0 - group["betas"][1] ** step
                threshold = threshold / ((state["exp_avg_sq"] / bias).sqrt() + group["eps"])
            p.copy_(p.sign() * (p.abs() - threshold).clamp_min(0))


def drop_from_optimizer(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
    """Remove `params` and their state (moments) from `optimizer`: they are no longer trained or stored."""
    gone = {id(p) for p in params}
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in gone]
    for p in params:
        optimizer.state.pop(p, None)


@dataclass
class Decision:
    """How one layer's contest ended."""

    block: str  # the winner
    step: int  # optimizer step of the choice (1-based)
    by: str  # "survivor": every other candidate reached 0; "budget": chosen at the budget (largest gate or TIE)
    loser_share: float  # sum of the losers' ||W_k|| / sum of all, at the choice (0 for a survivor)


class GateSelection:
    """Runs the contest of every PatternSelectLinear of `model` (see the module doc).

    Call `measure` after backward (it reads dL/dS), then `step` after the optimizer step.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, select_steps: int,
                 lambda1: float) -> None:
        self.optimizer = optimizer
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, PatternSelectLinear)}
        self.select_steps = max(1, select_steps)
        self.rate = GATE_TRAVEL / self.select_steps
        self.fade_steps = max(1, round(FADE_FRACTION * self.select_steps))
        self.lambda1 = lambda1
        self.reference = {n: m.weight_norms() for n, m in self.layers.items()}
        self.gates = {n: dict.fromkeys(m.branches, 1.0) for n, m in self.layers.items()}
        self.scale: dict[str, float | None] = dict.fromkeys(self.layers)
        self.pushes: dict[str, dict[str, float]] = {}
        self.fading: dict[str, dict[str, float]] = {}  # layer -> loser -> gate decrement per step
        self.decisions: dict[str, Decision] = {}
        self.removed_norms: dict[str, float] = {}  # layer -> largest ||W_k|| of a loser as it left
        self.steps = 0

    @property
    def open_layers(self) -> list[str]:
        """Layers whose contest is still running (no choice yet)."""
        return [n for n in self.layers if n not in self.decisions]

    @property
    def done(self) -> bool:
        """Every layer chose and every loser is gone."""
        return not self.open_layers and not self.fading

    def leader(self, layer: str) -> str:
        """The chosen candidate, or the one with the largest gate while the contest runs."""
        if layer in self.decisions:
            return self.decisions[layer].block
        gates = self.gates[layer]
        return max(gates, key=gates.get)

    @torch.no_grad()
    def measure(self) -> None:
        """Read each open candidate's push from the gradients of the step just back-propagated."""
        self.pushes = {}
        for name in self.open_layers:
            layer = self.layers[name]
            norms = layer.candidate_norms().tolist()
            self.pushes[name] = {
                k: -float((b.s.grad * b.s).sum()) / max(norm, 1e-30) if b.s.grad is not None else 0.0
                for (k, b), norm in zip(layer.branches.items(), norms)}

    @torch.no_grad()
    def step(self) -> bool:
        """Move the gates, rescale every S_k to its gate, remove the candidates at 0, decide.

        Returns True when a candidate left (the model's cost changed).
        """
        self.steps += 1
        for name in self.open_layers:
            self._update_gates(name)
        for name, fading in self.fading.items():
            gates = self.gates[name]
            for k, decrement in fading.items():
                # the last decrement lands on 0 exactly, whatever the rounding of the others
                gates[k] = 0.0 if gates[k] <= decrement * (1 + 1e-6) else gates[k] - decrement
        left = False
        for name in self.layers:
            if name in self.decisions and name not in self.fading:
                continue  # chosen and alone: its norm is the optimizer's again
            self._rescale(name)
            for k in [k for k, g in self.gates[name].items() if g == 0.0]:
                self._remove(name, k)
                left = True
            if name not in self.decisions and len(self.gates[name]) == 1:
                self.decisions[name] = Decision(next(iter(self.gates[name])), self.steps, "survivor", 0.0)
            elif name not in self.decisions and self.steps >= self.select_steps:
                self._choose(name)
            if name in self.fading and not self.fading[name]:
                del self.fading[name]
        return left

    @torch.no_grad()
    def finish(self) -> None:
        """End every contest now (the run is over): choose where still open, remove every loser."""
        for name in self.open_layers:
            self._choose(name)
        for name in list(self.fading):
            for k in list(self.fading[name]):
                self._remove(name, k)
            del self.fading[name]

    def _update_gates(self, name: str) -> None:
        """g_k <- max(0, g_k + rate * ((push_k - mean push) / scale - lambda1)), never emptying the layer."""
        pushes, gates = self.pushes.get(name, {}), self.gates[name]
        rms = math.sqrt(sum(p * p for p in pushes.values()) / max(len(pushes), 1))
        scale = self.scale[name]
        scale = rms if scale is None else PUSH_EMA * scale + (1 - PUSH_EMA) * rms
        self.scale[name] = scale
        mean = sum(pushes.values()) / max(len(pushes), 1)
        new = {k: max(0.0, g + self.rate * ((pushes.get(k, 0.0) - mean) / max(scale, 1e-30) - self.lambda1))
               for k, g in gates.items()}
        if not any(new.values()):  # the largest gate before this step stays
            keep = max(gates, key=gates.get)
            new[keep] = gates[keep]
        gates.update(new)

    def _choose(self, name: str) -> None:
        """The budget is spent: the cheapest of the gates within TIE of the largest wins, the others fade to 0."""
        gates, layer = self.gates[name], self.layers[name]
        top = max(gates.values())
        tied = [k for k, g in gates.items() if g >= (1 - TIE) * top]
        winner = min(tied, key=lambda k: self._cost(layer, k))
        norms = {k: g * self.reference[name][k] for k, g in gates.items()}
        share = 1.0 - norms[winner] / sum(norms.values())
        self.decisions[name] = Decision(winner, self.steps, "budget", share)
        self.fading[name] = {k: g / self.fade_steps for k, g in gates.items() if k != winner}

    @staticmethod
    def _cost(layer: PatternSelectLinear, candidate: str) -> tuple[int, int]:
        """(MACs per input row, parameters) of one candidate alone."""
        block, rank = layer.branches[candidate].block, layer.rank
        return (kron_macs(layer.out_features, layer.in_features, block, rank),
                kron_params(layer.out_features, layer.in_features, block, rank))

    def _rescale(self, name: str) -> None:
        """S_k *= g_k * ||W_k(0)|| / ||W_k|| for every live candidate still governed by its gate."""
        layer = self.layers[name]
        winner = self.decisions[name].block if name in self.decisions else None
        norms = dict(zip(layer.branches, layer.candidate_norms().tolist()))
        for k, branch in layer.branches.items():
            if k == winner:
                continue  # chosen: its norm is the optimizer's again
            target = self.gates[name][k] * self.reference[name][k]
            branch.s.mul_(target / norms[k] if norms[k] > 0 else 0.0)

    def _remove(self, name: str, candidate: str) -> None:
        """Take the candidate out of its layer and of the optimizer, recording the norm it left with."""
        layer = self.layers[name]
        norm = layer.weight_norms()[candidate]
        self.removed_norms[name] = max(self.removed_norms.get(name, 0.0), norm)
        layer.branches[candidate].s.zero_()
        drop_from_optimizer(self.optimizer, layer.remove(candidate))
        del self.gates[name][candidate]
        self.fading.get(name, {}).pop(candidate, None)

    @contextmanager
    def leaders_only(self) -> Iterator[None]:
        """Within the block every layer computes with its leader alone: the model that will be kept."""
        with ExitStack() as stack:
            for name, layer in self.layers.items():
                if len(layer.branches) > 1:
                    stack.enter_context(layer.only(self.leader(name)))
            yield


def s_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The S of every KronLinear (candidates included): the parameters the l1 prox acts on."""
    return [m.s for m in model.modules() if isinstance(m, KronLinear)]
