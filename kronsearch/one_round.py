"""OneRound: the one round attached to any model and optimizer, by hooks, so any training loop runs it.

    one_round = kronsearch.OneRound(model, optimizer, select_steps=300, validate=val_loader)
    for x, y in loader:                      # the loop as it was
        loss_fn(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    one_round.finish()                       # only where the loop ran fewer than select_steps steps
    kronsearch.finalize_model(model)         # each PatternSelectLinear becomes its winner

It is the trainer's own race (kronsearch/selection.py `Race`; kronsearch.trainer.train attaches the
same object), driven by hooks instead of calls:

- a forward pre-hook on every PatternSelectLinear routes the layer to one candidate: in training mode
  the race's current turn (drawn at the first forward after an optimizer step, kept for every forward
  until the next step, so gradient accumulation trains one candidate over all its micro-batches), in
  eval mode the layer's leader, the model that will be kept;
- an optimizer step pre-hook clears the gradients of the candidates that sat out the step (so
  `zero_grad(set_to_none=False)` cannot let Adam move them by momentum);
- an optimizer step post-hook applies lambda2's l1 prox to S (selection.prox_l1_) and advances the race
  one step: at its check (the race's end) it validates every live candidate on its path and removes the
  losers from the layer and from the optimizer (selection.drop_from_optimizer). Where the evidence does not
  separate candidates that still learn, the race runs on past select_steps (up to `extend` times it) and
  the loop must keep stepping; `finish()` ends it at once by the fallback rule, and says so in Decision.by.

The race counts optimizer steps that ran: a GradScaler step skipped on inf/NaN never calls
`optimizer.step()`, so no hook fires and the race neither advances nor moves a candidate. Clipping and
LR schedulers act on the optimizer as usual; a scheduler keeps working after removals because the param
groups stay (only their "params" lists shrink).

What a user's optimizer (or wrapper) must allow: `register_step_pre_hook`/`register_step_post_hook`
(any torch.optim.Optimizer), `param_groups` whose "params" lists may be replaced, and `state` keyed by
parameter (torch's own optimizers; a ZeroRedundancyOptimizer or a fused multi-tensor wrapper that copies
parameters into its own buffers does not qualify). Give it the optimizer whose `step()` the loop calls.

Under DistributedDataParallel: attach to the DDP-wrapped model (or its module) with
`find_unused_parameters=True` (each step trains one candidate per layer, and removed candidates are never
used again); every rank must use the same seed and validation examples (not a DistributedSampler's shard).
Each check's estimates are broadcast from rank 0, so every rank takes the same decision at the same step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import torch
from torch import Tensor, nn

from kronsearch.layers.errors import BadInput
from kronsearch.layers.kron_linear import KronLinear
from kronsearch.layers.pattern_select import PatternSelectLinear
from kronsearch.layers.plan import LayerPattern, Plan
from kronsearch.record import DEFAULT_TOLERANCE
from kronsearch.selection import RACE_CAP, RACE_FALLBACKS, Decision, Race, Validation, prox_l1_, s_parameters


@dataclass
class StepRecord:
    """One optimizer step of the race."""

    step: int  # 1-based, counting optimizer steps that ran
    trained: dict[str, str]  # layer -> the candidate that trained this step
    left: dict[str, list[str]] = field(default_factory=dict)  # layer -> candidates that left at this step
    decided: dict[str, str] = field(default_factory=dict)  # layer -> the winner chosen at this step


def unwrapped(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (names without 'module.')."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class OneRound:
    """The one round of `model`'s PatternSelectLinear layers, driven by `optimizer`'s steps (module doc).

    select_steps: the race's length in optimizer steps; validate: what each check measures candidates on
    (selection.Validation: (inputs, labels) batches, or model -> per-example hits); tolerance: accuracy
    points within which the cheapest candidate wins; lambda2: the l1 prox on every S after each step (0:
    none); check_examples: validation examples one check spends at most (None: selection.CHECK_EXAMPLES);
    seed: the order in which candidates take turns (the same on every rank); extend: where the evidence does not
    separate candidates that still learn, the race goes on up to extend * select_steps steps (keep the loop
    running: `done` says when it is over), then falls back by the rule `fallback` and says so (Decision.by
    "fallback"; selection.RACE_FALLBACKS); 1: never extend (selection.RACE_CAP, kronsearch/evidence.py).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, select_steps: int, validate: Validation,
                 tolerance: float = DEFAULT_TOLERANCE, lambda2: float = 0.0, seed: int = 0,
                 check_examples: int | None = None, extend: float = RACE_CAP,
                 fallback: str = RACE_FALLBACKS[0]) -> None:
        inner = unwrapped(model)
        problems = []
        if not any(isinstance(m, PatternSelectLinear) for m in inner.modules()):
            problems.append("the model has no PatternSelectLinear layer; give it candidates first, e.g. "
                            "kronsearch.kronify(model, candidates=[(2, 2), (4, 4)])")
        if isinstance(select_steps, bool) or not isinstance(select_steps, int) or select_steps < 1:
            problems.append(f"select_steps must be an integer >= 1 (optimizer steps), got {select_steps!r}")
        if not 0 <= tolerance <= 100:
            problems.append(f"tolerance is in accuracy points, 0 to 100, got {tolerance!r}")
        if not lambda2 >= 0:
            problems.append(f"lambda2 must be >= 0, got {lambda2!r}")
        if check_examples is not None and check_examples < 1:
            problems.append(f"check_examples must be None or >= 1, got {check_examples!r}")
        if not callable(validate) and not hasattr(validate, "__iter__") and not hasattr(validate, "ordered"):
            problems.append(f"validate must be (inputs, labels) batches (a DataLoader, a list) or a callable "
                            f"model -> per-example hits, got {type(validate).__name__}")
        if not hasattr(optimizer, "register_step_post_hook") or not hasattr(optimizer, "param_groups"):
            problems.append(f"optimizer must be a torch.optim.Optimizer (step hooks, param_groups), "
                            f"got {type(optimizer).__name__}")
        elif not problems:
            problems += _optimizer_problems(inner, optimizer)
        if problems:
            raise BadInput("OneRound: " + "; ".join(problems))
        self._attach(Race(inner, optimizer, select_steps, tolerance,
                          CheckedValidation(validate) if callable(validate) else validate, seed,
                          check_examples=check_examples, extend=extend, fallback=fallback), lambda2)
        self._check_steps = True  # a user's loop: every racing step must have trained a candidate

    @classmethod
    def around(cls, race: Race, lambda2: float = 0.0) -> OneRound:
        """Attach the hooks to an existing race (the trainer builds its own, with its batch size)."""
        one_round = cls.__new__(cls)
        one_round._attach(race, lambda2)
        return one_round

    def _attach(self, race: Race, lambda2: float) -> None:
        taken = [n for n, m in race.layers.items() if getattr(m, "_one_round_attached", False)]
        if taken:
            raise BadInput(f"OneRound: layers {', '.join(taken)} already race under another OneRound; close() "
                           f"it first (one race per layer)")
        for layer in race.layers.values():
            layer._one_round_attached = True  # type: ignore[assignment]  # a plain flag, not a submodule
            # finalize_model refuses the layer while its race has not decided
            layer._one_round_race = True  # type: ignore[assignment]
        self.race, self.lambda2 = race, lambda2
        self._check_steps, self._eval_forwards = False, 0
        self.model, self.optimizer = race.model, race.optimizer
        self.records: list[StepRecord] = []
        self._s = s_parameters(self.model)
        self._stashed: dict[str, nn.ModuleDict] = {}
        self._handles = [self.optimizer.register_step_pre_hook(self._before_step),
                         self.optimizer.register_step_post_hook(self._after_step)]
        for name, layer in race.layers.items():  # partials, not ids: a deep copy of the model routes its copy
            self._handles.append(layer.register_forward_pre_hook(partial(self._route, name)))
            self._handles.append(layer.register_forward_hook(partial(self._unroute, name), always_call=True))

    # ------------------------------------------------------------------------------------ what it exposes

    @property
    def live(self) -> dict[str, list[str]]:
        """layer -> its live candidates."""
        return {n: list(self._branches(n)) for n in self.race.layers}

    @property
    def decisions(self) -> dict[str, Decision]:
        """layer -> its Decision (block, step, by), once taken."""
        return dict(self.race.decisions)

    @property
    def steps(self) -> int:
        """Optimizer steps the race has counted."""
        return self.race.steps

    @property
    def done(self) -> bool:
        """Every layer has its winner."""
        return self.race.done

    def leader(self, layer: str) -> str:
        """The candidate `layer` keeps (while racing: the cheapest within tolerance so far)."""
        return self.race.leader(layer)

    def routed_macs(self, input_shape: tuple[int, ...]) -> int:
        """Forward MACs per sample of the model as this step's routing runs it."""
        return self.race.routed_macs(input_shape)

    def finish(self) -> dict[str, Decision]:
        """End the race now (a loop shorter than select_steps): validate and choose where still open."""
        open_before = self.race.open_layers
        live = self.live
        self.race.finish()
        if open_before:
            self._record(self.race.steps, {}, live)
        return self.decisions

    def plan(self) -> Plan:
        """The pattern the model ends with, as `kronsearch export` writes it and kronify applies it:
        {layer: LayerPattern(block, rank)} for every Kronecker layer. Raises BadInput while a race is open."""
        if not self.race.done:
            raise BadInput(f"the race is open at step {self.race.steps} of {self.race.select_steps} in "
                           f"{', '.join(self.race.open_layers)}; call finish() to decide now")
        inside = tuple(f"{n}." for n in self.race.layers)
        plan = {n: LayerPattern(cast(KronLinear, self._branches(n)[d.block]).block, self.race.layers[n].rank)
                for n, d in self.race.decisions.items()}
        plan.update({n: LayerPattern(m.block, m.rank) for n, m in self.model.named_modules()
                     if isinstance(m, KronLinear) and not n.startswith(inside)})
        return dict(sorted(plan.items()))

    def close(self) -> None:
        """Remove every hook: the model and optimizer behave as if never attached (call before finalize_model)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for layer in self.race.layers.values():
            layer._one_round_attached = False  # type: ignore[assignment]

    # ------------------------------------------------------------------------------------ the hooks

    def _branches(self, name: str) -> nn.ModuleDict:
        return self._stashed.get(name, self.race.layers[name].branches)

    def _route(self, name: str, module: PatternSelectLinear, args: tuple) -> None:
        """Forward pre-hook: an open layer computes with one candidate (a layer already narrowed, by `only`
        or by the race's own checks, is left alone)."""
        if len(module.branches) < 2 or name in self.race.decisions:
            return
        if not module.training:
            self._eval_forwards += 1
        if module.training:
            if name not in self.race.active:
                self.race.draw()
            candidate = self.race.active[name]
        else:
            candidate = self.race.leader(name)
        self._stashed[name] = module.branches
        module.branches = nn.ModuleDict({candidate: module.branches[candidate]})

    def _unroute(self, name: str, module: PatternSelectLinear, args: tuple, output: object) -> None:
        stashed = self._stashed.pop(name, None)
        if stashed is not None:
            module.branches = stashed

    def _before_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        """Only this step's candidates have gradients: the others sat out. (A step with a closure, LBFGS's, runs
        its forward inside step(): its check waits for the post-hook.)"""
        closure = args[1] if len(args) > 1 else kwargs.get("closure")  # args: (optimizer, closure?), as torch passes
        if closure is None:
            self._check_trained()
        for name, trained in self.race.active.items():
            for k, branch in self.race.layers[name].branches.items():
                if k != trained:
                    for p in branch.parameters():
                        p.grad = None

    def _after_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        """The prox where the optimizer stepped (a candidate that sat out keeps its S), then the race's step."""
        self._check_trained()
        racing = not self.race.done
        prox_l1_(optimizer, [p for p in self._s if p.grad is not None] if racing else self._s, self.lambda2)
        if racing:
            trained, live = dict(self.race.active), self.live
            self.race.step()
            self._record(self.race.steps, trained, live)
        self._eval_forwards = 0

    def _check_trained(self) -> None:
        """BadInput at a racing step of a user's loop in which no candidate trained: the model ran no forward
        since the last step, or ran it in eval mode (each layer's leader, which the race does not count)."""
        if not self._check_steps or self.race.done or self.race.active:
            return
        step = f"optimizer step {self.race.steps + 1} (the race's {self.race.select_steps} steps)"
        if self._eval_forwards:
            raise BadInput(f"OneRound: {step} follows forwards in eval() mode only, which run each layer's leader "
                           f"and train no candidate; call model.train() before the training forwards (eval() only "
                           f"for validation)")
        raise BadInput(f"OneRound: {step} with no forward pass of the model since the last step: no candidate "
                       f"trained; step the optimizer after the forward and backward of each batch")

    def _record(self, step: int, trained: dict[str, str], live_before: dict[str, list[str]]) -> None:
        now = self.live
        left = {n: [k for k in ks if k not in now[n]] for n, ks in live_before.items() if len(ks) > len(now[n])}
        decided = {n: d.block for n, d in self.race.decisions.items() if d.step == step and n in live_before
                   and len(live_before[n]) > 1}
        self.records.append(StepRecord(step, trained, left, decided))


def _optimizer_problems(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """What is wrong with `optimizer` for racing `model`: it must hold every trainable tensor of every candidate."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    kron = {n: [p for p in m.branches.parameters() if p.requires_grad] for n, m in model.named_modules()
            if isinstance(m, PatternSelectLinear)}
    tensors = [p for ps in kron.values() for p in ps]
    found = sum(id(p) in held for p in tensors)
    if found == len(tensors):
        return []
    if not any(id(p) in held for p in model.parameters()):
        return ["the optimizer holds none of the model's parameters: it belongs to another model; build it from "
                "this model's parameters after kronify, e.g. torch.optim.AdamW(model.parameters())"]
    missing = [n for n, ps in kron.items() if not all(id(p) in held for p in ps)]
    return [f"the optimizer holds {found} of the {len(tensors)} Kronecker tensors of the candidate layers (missing "
            f"in {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): it was built before kronify replaced "
            f"the layers, or from part of the model; build it after kronsearch.kronify(...), from model.parameters()"]


class CheckedValidation:
    """A user's `validate` callable whose answer is checked at every race check: per-example hits (a bool tensor,
    or 0/1 values, one per validation example), or (hits, mean loss). An accuracy, a NaN or any other value is a
    BadInput saying what is allowed, not a decision taken on it."""

    def __init__(self, validate: Callable[[nn.Module], Tensor | tuple[Tensor, float]]) -> None:
        self.validate = validate

    def __call__(self, model: nn.Module) -> Tensor | tuple[Tensor, float]:
        answer = self.validate(model)
        hits, loss = answer if isinstance(answer, tuple) and len(answer) == 2 else (answer, None)
        allowed = ("validate(model) must return per-example hits, a bool tensor (or 0/1 values) with one entry per "
                   "validation example, or (hits, mean loss)")
        try:
            values = torch.as_tensor(hits).detach()
        except (TypeError, ValueError, RuntimeError):
            raise BadInput(f"OneRound: {allowed}; it returned {type(hits).__name__} {_shown(hits)}") from None
        if values.ndim == 0 or values.numel() == 0:
            number = hits if isinstance(hits, (int, float)) else values.item() if values.numel() else None
            what = "no hits" if values.numel() == 0 else f"one number, {_shown(number)}, not a hit per example"
            raise BadInput(f"OneRound: {allowed}; it returned {what}")
        if values.dtype != torch.bool and not bool(((values == 0) | (values == 1)).all()):
            bad = values[~((values == 0) | (values == 1))].flatten()[0].item()
            raise BadInput(f"OneRound: {allowed}; it returned values other than 0 and 1, e.g. {_shown(bad)}")
        if loss is not None and (isinstance(loss, bool) or not isinstance(loss, (int, float, torch.Tensor))
                                 or torch.as_tensor(loss).numel() != 1 or not math.isfinite(float(loss))):
            raise BadInput(f"OneRound: {allowed}; its loss is {_shown(loss)}, not a finite number")
        return answer


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
