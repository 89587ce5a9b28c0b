"""The one round's contest: a race between candidate blocks, decided by validation and cost.

Two pieces act on every optimizer step of a run with PatternSelectLinear layers:

- `prox_l1_`, lambda2 * ||S||_1 on every S: soft-thresholding in the optimizer's own metric. Under Adam(W) the
  threshold of each entry is lr * lambda2 / (sqrt(v_hat) + eps), the prox of Adam's diagonal preconditioner, so
  lambda2 keeps the meaning it had as a subgradient penalty (a block dies when its loss gradient stays below
  lambda2) but the entry lands on exactly 0 and stays there. Under SGD the threshold is lr * lambda2.
- `Race`, the contest of every PatternSelectLinear, run before the training (`select_epochs`). Each step trains one
  candidate per layer, alone (`PatternSelectLinear.only`), in turns, one block as a path through the layers that
  have it; half a race before its end and at its end every live candidate is validated on its path and
  kronsearch/evidence.py decides: a clearly worse candidate leaves, the cheapest (MACs, then parameters) within the
  tolerance wins once the field has settled, else the race extends itself up to its cap, then falls back and says
  so. The winner trains `epochs` with the race's optimizer state under a fresh schedule (kronsearch/trainer.py);
  kronsearch/one_round.py (`OneRound`) drives race and prox by hooks, in the trainer and in any loop.

Why a race, measured (docs/benchmarks/selection.md: table 10, benchmarks/signals.py; table 3, benchmarks/selection.py):
- The paper's summed contest (W = sum_k W_k, a group penalty lambda1 on ||W_k||, the largest norm wins) kept the
  candidate with the most parameters, the fastest early learner, where the blocks end within a point of each other
  and that candidate costs as much as the dense layer; each step cost the sum of all candidates (3-4x per_pattern).
- Signals read from the summed contest (gate, push, push per MAC, the validation loss of a candidate alone inside
  the sum, the loss increase on its removal) ranked the candidates a little better than the race's own validation at
  the same share of the run (Spearman's rho, table 10: tie-mlp +0.50 against +0.30-0.39 at 25%), at K times a race
  step's cost; neither separates blocks within a point of each other, and both find a block that is clearly worse
  (narrow-mlp: +0.76-0.91 against +0.60-0.87 from 10% of the run). So the design spends the least compute on the
  contest and lets the tolerance rule decide what the estimates cannot: a candidate not clearly worse than the best
  (by the tolerance plus PICK_Z paired standard errors) is good enough, and the cheapest of those wins.
- Stacked layers race paths, not independent draws (table 11): when every layer drew its own candidate, a layer's
  next layer trained on a mix of K different feature maps, one per upstream candidate, and at a check a candidate
  measured beside the other layers' leaders met a downstream layer that had seen its features on a K-th of the
  steps: on a 784-256-256-10 Fashion-MNIST MLP (5 blocks, seeds 0-1, ranks 1-2) the first layer's candidates
  measured 5-72% (median 39%; chance 10%) at the race's last check, as paths 38-75% (median 69%); a one-round study's
  MACs against per_pattern's fell from 2.14x to 1.58x (MLP), 1.19x to 1.05x (ViT), 1.26x to 1.20x (LeNet-5). The
  price: the layers on one path share one estimate, so where blocks tie they tend to choose alike.
- Picks: table 3 (docs/benchmarks/selection.md); issue 32's planted blocks (benchmarks/planted.py) 9/9.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from kronsearch.data.batches import Batches
from kronsearch.evidence import OUT_Z, PICK_Z, Estimate, Reading, read, within_tolerance
from kronsearch.layers.blocks import kron_macs, kron_params
from kronsearch.layers.costs import model_cost
from kronsearch.layers.errors import BadInput
from kronsearch.layers.kron_linear import KronLinear
from kronsearch.layers.pattern_select import PatternSelectLinear

Validation = Batches | Iterable[tuple[Tensor, Tensor]] | Callable[[nn.Module], Tensor | tuple[Tensor, float]]
"""What a race validates on: Batches (its `ordered()` batches), any re-iterable of (inputs, labels) batches (a
DataLoader without shuffling), or a callable model -> a bool tensor of per-example hits (or (hits, mean loss)) on the
same examples at every call. Batches give per-example losses too, which also tell whether the candidates still learn
(kronsearch/evidence.py); a callable does not. Every rank must see the same examples."""

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
    """How one layer's race ended."""

    block: str  # the winner
    step: int  # optimizer step of the choice (1-based)
    by: str  # DECIDED_BY: "survivor" (every other candidate separated), "budget" (settled: the cheapest within
    # tolerance), "fallback" (not separated while still learning, at the cap or finish(): Race.fallback's rule)
    rule: str | None = None  # with "fallback": the rule (RACE_FALLBACKS) that kept `block`
    plausible: tuple[str, ...] = ()  # with "fallback": the candidates within tolerance and noise, cheapest first


DECIDED_BY = ("survivor", "budget", "fallback")
"""Every Decision.by; only the first two are decisions by evidence (kronsearch/evidence.py)."""


def s_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The S of every KronLinear (candidates included): the parameters the l1 prox acts on."""
    return [m.s for m in model.modules() if isinstance(m, KronLinear)]


RACE_CHECKS = (1.0,)
"""Fractions of the selection budget at which the race validates every live candidate: once, at its end. A check
halfway dropped cheaper blocks that still trailed by their early pace (docs/benchmarks/selection.md, table 3)."""
READING_INTERVAL = 0.5
"""The race reads its candidates one interval (this share of its steps) before its end, without deciding, so its
check knows which candidates still learn (kronsearch/evidence.py); an extended race checks once an interval."""
RACE_CAP = 2.0
"""Where the evidence does not separate candidates that still learn, the race extends itself, an interval at a
time, up to this multiple of its steps; then it falls back (RACE_FALLBACKS) and says so."""
RACE_FALLBACKS = ("most_accurate", "cheapest")
"""What a race keeps at its cap, undecided (the first: OneRound's and TrainConfig's default; a study's: schema.
STUDY_RACE_FALLBACK): the most accurate, or the cheapest within the tolerance plus PICK_Z paired standard errors of
it. cheapest's regret: 0.70 against 0.51 point over table 3's 30 MLP runs (docs/benchmarks/selection.md)."""
CHECK_EXAMPLES = 2048
"""Validation examples one check spends at most, over all the (layer, candidate) pairs it measures."""
CHECK_SHARE = 0.25
"""...and at most this share of the examples the race trains on, so the checks stay a small part of a
trial's cost (forward only)."""


class Race:
    """The one round as a race: each step every open layer trains one of its candidates, alone.

    Enter `routed()` around the forward pass and call `step()` after the optimizer step, or attach
    kronsearch.one_round.OneRound, which does both by hooks. The blocks take turns in a random order drawn per
    cycle, each step one block as a path through every open layer that has it (a layer without it takes its own
    next candidate): each candidate trains on an equal share of the steps, on the same block's features upstream.
    At the checks (`checks`, fractions of the budget; RACE_CHECKS: at its end) every live candidate is
    validated on its path, each path once for all the layers on it, and read an interval before the end
    (READING_INTERVAL) for its pace: a candidate separated from the best beyond noise (kronsearch/evidence.py,
    OUT_Z) leaves the layer and the optimizer; at the budget a layer whose candidates settled keeps its
    cheapest candidate within the tolerance (PICK_Z, "budget"); one whose candidates still learn and are not
    separated races on, an interval at a time, up to `extend` times the budget, then falls back by the rule
    `fallback` ("fallback", RACE_FALLBACKS). Only the trained candidates get gradients: the others keep theirs.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, select_steps: int,
                 tolerance: float, validation: Validation, seed: int = 0, batch_size: int | None = None,
                 check_examples: int | None = None, checks: Sequence[float] = RACE_CHECKS,
                 extend: float = RACE_CAP, fallback: str = RACE_FALLBACKS[0]) -> None:
        if fallback not in RACE_FALLBACKS:
            raise BadInput(f"fallback is one of {', '.join(RACE_FALLBACKS)}, got {fallback!r}")
        if not extend >= 1:
            raise BadInput(f"extend is the race's cap as a multiple of select_steps, >= 1 (1: never extend), "
                           f"got {extend!r}")
        self.model, self.optimizer, self.validation, self.fallback = model, optimizer, validation, fallback
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, PatternSelectLinear)}
        self.select_steps = max(1, select_steps)
        self.checks = sorted({max(1, round(f * self.select_steps)) for f in checks})
        self.interval = max(1, round(READING_INTERVAL * self.select_steps))
        self.cap_steps = max(self.select_steps, round(extend * self.select_steps))
        self.readings = {self.select_steps - self.interval} - {0, *self.checks}
        self.previous: dict[str, dict[str, Estimate]] = {}  # layer -> its candidates at the last reading
        self.evidence: dict[str, Reading] = {}  # layer -> what its last check's evidence said
        self.trained: dict[str, Counter[str]] = {n: Counter() for n in self.layers}  # steps each candidate trained
        self.tolerance = tolerance / 100
        self.generator = torch.Generator().manual_seed(seed)
        self.turns: dict[str, list[str]] = {n: [] for n in self.layers}
        self.path_turns: list[str] = []
        self.estimates: dict[str, dict[str, Estimate]] = {}
        self.decisions: dict[str, Decision] = {}
        self.active: dict[str, str] = {}
        self.steps = 0
        self.eval_macs = 0  # forward MACs over every example of the race's own validation passes
        if check_examples is None:
            batch_size = batch_size or getattr(validation, "batch_size", None)
            raced = self.select_steps * batch_size if batch_size else CHECK_EXAMPLES / CHECK_SHARE
            check_examples = min(CHECK_EXAMPLES, round(CHECK_SHARE * raced))
        self.check_examples = max(1, check_examples)
        self._macs: dict[tuple, int] = {}

    @property
    def open_layers(self) -> list[str]:
        """Layers whose race still runs (no choice yet)."""
        return [n for n in self.layers if n not in self.decisions]

    @property
    def done(self) -> bool:
        """Every layer chose; its losers are gone."""
        return not self.open_layers

    def leader(self, layer: str) -> str:
        """The chosen candidate; racing, the cheapest within tolerance at the last check (before one: the cheapest)."""
        if layer in self.decisions:
            return self.decisions[layer].block
        live = self.layers[layer].branches
        estimates = {k: e for k, e in self.estimates.get(layer, {}).items() if k in live}
        pool = within_tolerance(estimates, self.tolerance, PICK_Z) if estimates else list(live)
        return min(pool, key=lambda k: self._cost(layer, k))

    def draw(self) -> dict[str, str]:
        """The next step's routing, {open layer: candidate}: one block in turn for every open layer that has
        it live (a path through the model), each other open layer its own next candidate in its turns."""
        self.active = {}
        if not self.path_turns:
            live = list(dict.fromkeys(k for n in self.open_layers for k in self.layers[n].branches))
            self.path_turns = [live[i] for i in torch.randperm(len(live), generator=self.generator)]
        block = self.path_turns.pop()
        for name in self.open_layers:
            if block in self.layers[name].branches:
                self.active[name] = block
                continue
            if not self.turns[name]:
                live = list(self.layers[name].branches)
                self.turns[name] = [live[i] for i in torch.randperm(len(live), generator=self.generator)]
            self.active[name] = self.turns[name].pop()
        return self.active

    @contextmanager
    def fixed(self, routing: dict[str, str]) -> Iterator[None]:
        """Within the block each layer of `routing` computes with its candidate alone."""
        with ExitStack() as stack:
            for name, candidate in routing.items():
                stack.enter_context(self.layers[name].only(candidate))
            yield

    @contextmanager
    def routed(self) -> Iterator[dict[str, str]]:
        """Within the block each open layer computes with its next candidate in turn: {layer: candidate}."""
        with self.fixed(self.draw()):
            yield self.active

    def routed_macs(self, input_shape: tuple[int, ...]) -> int:
        """Forward MACs per sample of the model as `routed` runs it now (cached per routing)."""
        key = tuple(sorted(self.active.items())) + tuple(len(m.branches) for m in self.layers.values())
        if key not in self._macs:
            with self.fixed(self.active):
                self._macs[key] = model_cost(self.model, input_shape).total.macs
        return self._macs[key]

    @property
    def extended(self) -> bool:
        """The race runs past its budget: the evidence has not yet separated candidates that still learn."""
        return self.steps >= self.select_steps and not self.done

    @torch.no_grad()
    def step(self) -> bool:
        """Count the step; read, or at a check validate and decide. True when a candidate left (the cost changed)."""
        for name, candidate in self.active.items():
            self.trained[name][candidate] += 1
        self.steps += 1
        self.active = {}
        if not self.open_layers:
            return False
        if self.steps in self.readings:
            self._read()
            return False
        past = self.steps - self.select_steps
        if self.steps not in self.checks and (past < 0 or past % self.interval) and self.steps < self.cap_steps:
            return False
        return self._check(budget=past >= 0, final=self.steps >= self.cap_steps)

    @torch.no_grad()
    def finish(self) -> None:
        """End every race now (the run is over): validate and choose where still open."""
        if self.open_layers:
            self._check(budget=True, final=True)

    def _read(self) -> None:
        """Measure every open layer's candidates without deciding: the reading the next check's pace is taken from."""
        measured: dict[tuple, Estimate] = {}
        self.previous.update({name: self.measure_candidates(name, measured) for name in self.open_layers})

    def _check(self, budget: bool, final: bool) -> bool:
        """Validate every open layer's candidates; remove those separated by evidence; from the budget on, decide
        where the evidence allows (survivor, budget), and at the cap (`final`) fall back where it does not."""
        left, measured = False, dict[tuple, Estimate]()  # path -> estimate: a path is measured once per check
        current_of = {name: self.measure_candidates(name, measured) for name in self.open_layers}
        for name, current in current_of.items():
            self.estimates.setdefault(name, {}).update(current)
            evidence = self.evidence[name] = read(current, self.previous.get(name, {}), self.tolerance)
            self.previous[name] = current
            out = set(current) - set(within_tolerance(current, self.tolerance, OUT_Z, evidence.volatility))
            for k in out:
                self._remove(name, k)
                left = True
            live = self.layers[name].branches
            if len(live) == 1:
                self.decisions[name] = Decision(next(iter(live)), self.steps, "survivor")
            elif budget and (evidence.settled or final):
                self.decisions[name] = (Decision(self.leader(name), self.steps, "budget") if evidence.settled
                                        else self._fall_back(name, {k: current[k] for k in live}))
                for k in [k for k in live if k != self.decisions[name].block]:
                    self._remove(name, k)
                left = True
        return left

    def _fall_back(self, name: str, live: dict[str, Estimate]) -> Decision:
        """Layer `name`'s decision at the cap, undecided: by `fallback`'s rule, with its plausible candidates."""
        plausible = sorted(within_tolerance(live, self.tolerance, PICK_Z), key=lambda k: self._cost(name, k))
        winner = self.leader(name) if self.fallback == "cheapest" else max(live, key=lambda k: live[k].accuracy)
        return Decision(winner, self.steps, "fallback", self.fallback, tuple(plausible))

    def records(self) -> dict[str, dict]:
        """layer -> {block, step, by (with "fallback": rule, plausible), estimates, pace} per decided layer, JSON-able:
        estimates are every candidate's at the last check it took part in, {accuracy, se (points), examples, steps it
        trained}; pace is the largest rise of a candidate over the last interval (points)."""
        def estimate(name: str, k: str, e: Estimate) -> dict:
            return {"accuracy": round(100 * e.accuracy, 2), "se": round(100 * e.se, 2), "examples": e.examples,
                    "steps": self.trained[name][k]}

        return {name: {"block": d.block, "step": d.step, "by": d.by,
                       **({"rule": d.rule, "plausible": list(d.plausible)} if d.by == "fallback" else {}),
                       "estimates": {k: estimate(name, k, e) for k, e in self.estimates.get(name, {}).items()},
                       "pace": round(100 * self.evidence[name].pace, 2) if name in self.evidence else None}
                for name, d in self.decisions.items()}

    def path(self, name: str, candidate: str) -> tuple[tuple[str, str], ...]:
        """The routing that measures `candidate` of layer `name`, as sorted (layer, candidate) pairs: the same block
        in every layer that still has it (the path it trained in, see `draw`), each other layer's leader."""
        return tuple(sorted((other, candidate if candidate in module.branches else self.leader(other))
                            for other, module in self.layers.items() if len(module.branches) > 1 or other == name))

    @torch.no_grad()
    def measure_candidates(self, name: str, measured: dict[tuple, Estimate] | None = None) -> dict[str, Estimate]:
        """Every live candidate of layer `name` on its path (`path`), on the same first validation examples (the
        check's budget split evenly over the distinct paths); `measured` shares paths between the layers."""
        measured = {} if measured is None else measured
        paths = {k: self.path(name, k) for k in self.layers[name].branches}
        distinct = {self.path(n, k) for n in self.open_layers for k in self.layers[n].branches}
        examples = max(1, self.check_examples // max(len(distinct), 1))
        self.model.eval()
        try:
            for path in paths.values():
                if path not in measured:
                    with self.fixed(dict(path)):
                        measured[path] = self._alone(examples)
        finally:
            self.model.train()
        return {k: measured[path] for k, path in paths.items()}

    def _alone(self, examples: int) -> Estimate:
        """The model as it computes now on the first `examples` validation examples (a callable: its own).
        Under torch.distributed every rank takes rank 0's result, so all ranks decide alike."""
        per_example: Tensor | None = None  # (n,) loss per example: from batches, not a callable
        if callable(self.validation):
            measured = self.validation(self.model)
            hits, loss = measured if isinstance(measured, tuple) else (measured, float("nan"))
            hits = torch.as_tensor(hits).flatten().bool().cpu()
        else:
            batches = self.validation.ordered() if hasattr(self.validation, "ordered") else self.validation
            losses, correct, seen = [], [], 0
            for images, labels in batches:
                images, labels = images[:examples - seen], labels[:examples - seen]
                logits = self.model(images)
                losses.append(F.cross_entropy(logits, labels, reduction="none"))
                correct.append(logits.argmax(-1) == labels)
                seen += len(labels)
                if seen >= examples:
                    break
            if not seen:
                raise BadInput("the race's validation data gave no examples; give it (inputs, labels) batches "
                               "or a callable returning a bool tensor of per-example hits")
            self.eval_macs += seen * model_cost(self.model, tuple(images.shape[1:])).total.macs
            hits, per_example = torch.cat(correct).cpu(), torch.cat(losses).cpu()
            loss = float(per_example.mean())
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            n = len(hits)
            parts = [hits.double(), *([] if per_example is None else [per_example.double()])]
            shared = torch.cat([*parts, torch.tensor([float(loss)], dtype=torch.float64)])
            dist.broadcast(shared, src=0)
            hits, loss = shared[:n].bool(), float(shared[-1])
            per_example = None if per_example is None else shared[n:2 * n].float()
        return Estimate(float(hits.float().mean()) if len(hits) else 0.0, float(loss), hits, per_example)

    def _cost(self, name: str, candidate: str) -> tuple[int, int]:
        """(MACs per input row, parameters) of one candidate alone."""
        layer = self.layers[name]
        block, rank = cast(KronLinear, layer.branches[candidate]).block, layer.rank
        return (kron_macs(layer.out_features, layer.in_features, block, rank),
                kron_params(layer.out_features, layer.in_features, block, rank))

    def _remove(self, name: str, candidate: str) -> None:
        """Take the candidate out of its layer, of the optimizer and of the layer's turns."""
        layer = self.layers[name]
        drop_from_optimizer(self.optimizer, layer.remove(candidate))
        if candidate in self.turns[name]:
            self.turns[name].remove(candidate)

    @contextmanager
    def leaders_only(self) -> Iterator[None]:
        """Within the block every layer computes with its leader alone: the model that will be kept."""
        with ExitStack() as stack:
            for name, layer in self.layers.items():
                if len(layer.branches) > 1:
                    stack.enter_context(layer.only(self.leader(name)))
            yield
