"""What the race's evidence says at a check: which candidates it separates, and whether it may decide at all.

A check measures every live candidate of a layer alone on the same validation examples (`Estimate`). Two kinds
of noise stand between those accuracies and the blocks' accuracies at the end of a training:

- the validation sample: the paired standard error of a gap between two candidates on the same examples;
- the volatility of a model far from converged: where the candidates still learn, the accuracy a check reads
  is a point on a trajectory, and which candidate leads moves with the init, the batch order and when each one
  takes off. Measured on the planted-block task of issue 32 (a 16x64 linear layer, rank-1 teacher with 4x8,
  8x2 or 16x16 blocks half zero, six candidates, batch 32, a reading every 10 steps per candidate, seeds 0-2):
  after 40 steps each, the planted block led on 5 of 9 runs and on the 16x16 runs was within 1-8 points of
  every other block, all at 16-25%; the planted 16x16 stayed flat for 40-60 steps per candidate and then rose
  past every other block (17% -> 80% in 50 steps), so a gap read while the field still moves says little.
  A candidate's own change cannot see this (a block that has not started is flat); the field's pace can.

So the noise of a gap is sqrt(se_paired^2 + (VOLATILITY_INTERVALS * pace)^2), where pace is the largest rise of
any live candidate between the layer's last two readings (one interval apart, the same examples); and a layer
is still learning when some candidate rose by more than the tolerance plus SETTLE_Z standard errors of its own
paired change. A candidate is separated (out) when its gap to the best exceeds the tolerance by OUT_Z noises; a
layer whose candidates are not all separated may decide by the tolerance rule ("budget") only once it has
settled; while it still learns the race extends (kronsearch/selection.py), and at its cap it falls back by its
rule (selection.RACE_FALLBACKS) and says so ("fallback").

A candidate also still learns while its per-example validation loss falls beyond noise (paired over the same
examples, far less noisy than hits): with ~400 examples a check's accuracy has se ~2 points against a 0.5-point
tolerance, so a rise of a point read as settled, and fields at 12-28% (synthetic seed 6, issue 32) were decided
by "budget"; their losses fell 3-13 standard errors an interval. Measured (docs/benchmarks/selection.md, "Loss
decides 'still learning' too"): runs wrong yet decided by evidence 7/30 -> 0/30, right picks and regret within noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

OUT_Z = 2.0
"""A candidate leaves when its accuracy gap to the best exceeds the tolerance by OUT_Z noises (paired standard
error and volatility): clearly out."""
PICK_Z = 1.0
"""At a decision by the tolerance rule the cheapest candidate whose gap is within the tolerance plus PICK_Z
noises wins."""
SETTLE_Z = 2.0
"""A candidate still learns when its accuracy rose by more than the tolerance plus SETTLE_Z standard errors of its
change between two readings on the same examples, or its mean validation loss fell by more than SETTLE_Z standard
errors of the paired per-example drop."""
VOLATILITY_INTERVALS = 1.0
"""How far ahead a gap may still move: the field's pace (the largest rise of a candidate in one interval)
times this many intervals. On the planted-block task a trailing block that had not started took 2-3
intervals (of a quarter of the race each) to pass the leaders once it did."""


@dataclass
class Estimate:
    """A candidate measured alone on the race's validation examples."""

    accuracy: float  # in [0, 1]
    loss: float  # mean cross-entropy
    correct: torch.Tensor  # (n,) bool per example, for paired comparisons between candidates
    losses: torch.Tensor | None = None  # (n,) cross-entropy per example where the validation gives it

    @property
    def examples(self) -> int:
        """How many validation examples the estimate came from."""
        return len(self.correct)

    @property
    def se(self) -> float:
        """Binomial standard error of the accuracy, in [0, 1]."""
        n = self.examples
        return math.sqrt(self.accuracy * (1 - self.accuracy) / n) if n else 0.0


def paired_gap(a: Estimate, b: Estimate) -> tuple[float, float]:
    """(a's accuracy - b's, its standard error) on the examples both were measured on (se 0 under two)."""
    n = min(a.examples, b.examples)
    diff = a.correct[:n].float() - b.correct[:n].float()
    return float(diff.mean()) if n else 0.0, float(diff.std() / math.sqrt(n)) if n > 1 else 0.0


def within_tolerance(estimates: dict[str, Estimate], tolerance: float, z: float, volatility: float = 0.0) -> list[str]:
    """The candidates whose accuracy is within `tolerance` (in [0, 1]) plus z noises of the best, a noise being
    sqrt(paired se^2 + volatility^2) (volatility in [0, 1]: see the module doc)."""
    top = estimates[max(estimates, key=lambda k: estimates[k].accuracy)]
    return [k for k, e in estimates.items()
            if (gap := paired_gap(top, e))[0] <= tolerance + z * math.hypot(gap[1], volatility)]


@dataclass
class Reading:
    """What one check's evidence says about one layer (accuracies in [0, 1])."""

    pace: float  # the largest rise of a live candidate since the layer's previous reading (0 without one)
    learning: list[str]  # the candidates that still rose beyond noise since then ("*": the field as a whole did)
    known: bool = True  # False: no previous reading of every candidate, so whether they still learn is unknown

    @property
    def settled(self) -> bool:
        """Every candidate was read before and none, nor the field's mean, still rises beyond noise."""
        return self.known and not self.learning

    @property
    def volatility(self) -> float:
        """How far a gap may still move: VOLATILITY_INTERVALS times the pace."""
        return VOLATILITY_INTERVALS * self.pace


def loss_drop(current: Estimate, previous: Estimate) -> tuple[float, float] | None:
    """(previous mean loss - current's, its paired standard error) on the examples both share; None without
    per-example losses in both."""
    if current.losses is None or previous.losses is None:
        return None
    n = min(len(current.losses), len(previous.losses))
    if n < 2:
        return None
    diff = previous.losses[:n] - current.losses[:n]
    return float(diff.mean()), float(diff.std() / math.sqrt(n))


def read(current: dict[str, Estimate], previous: dict[str, Estimate], tolerance: float) -> Reading:
    """The layer's pace and its candidates still learning, from two readings of the same candidates (each rise on
    the examples both readings share; a candidate missing from `previous` gives no pace: not known). A candidate
    still learns when its accuracy rose beyond the tolerance and noise, or its per-example validation loss fell by
    more than SETTLE_Z standard errors of the paired drop (where both readings have per-example losses). The
    field's mean rise is tested too: six candidates each rising within its own noise (near chance, early) are,
    together, still learning."""
    rises, ses, learning = {}, [], []
    for k, e in current.items():
        if k in previous and min(e.examples, previous[k].examples):
            rises[k], se = paired_gap(e, previous[k])
            ses.append(se)
            drop = loss_drop(e, previous[k])
            if rises[k] > tolerance + SETTLE_Z * se or (drop is not None and drop[0] > SETTLE_Z * drop[1]):
                learning.append(k)
    if rises and sum(rises.values()) / len(rises) > tolerance + SETTLE_Z * math.hypot(*ses) / len(ses):
        learning.append("*")
    return Reading(max([0.0, *rises.values()]), learning, known=len(rises) == len(current))
