"""kronify: replace a model's nn.Linear layers, in place, by KronLinear or PatternSelectLinear."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from torch import nn

from kronsearch.layers.blocks import Block, format_block, valid_blocks
from kronsearch.layers.errors import BadInput
from kronsearch.layers.kron_linear import KronLinear
from kronsearch.layers.pattern_select import PatternSelectLinear
from kronsearch.layers.plan import LayerPattern, Plan, parse_plan

log = logging.getLogger("kronsearch")


@dataclass
class LayerChange:
    """What kronify did to one nn.Linear."""

    name: str
    shape: tuple[int, int]  # (out_features, in_features)
    kind: str  # "kron", "select" or "dense"
    blocks: list[Block] = field(default_factory=list)  # the block, or the candidates kept
    rank: int | None = None
    reason: str = ""  # why a layer stayed dense


@dataclass
class KronifyReport:
    """Every nn.Linear kronify looked at, in model order."""

    layers: list[LayerChange]

    @property
    def replaced(self) -> list[LayerChange]:
        return [c for c in self.layers if c.kind != "dense"]

    @property
    def dense(self) -> list[LayerChange]:
        return [c for c in self.layers if c.kind == "dense"]

    def __str__(self) -> str:
        lines = []
        for c in self.layers:
            what = ", ".join(format_block(b) for b in c.blocks)
            detail = f"{c.kind} [{what}] rank {c.rank}" if c.kind != "dense" else f"dense ({c.reason})"
            lines.append(f"{c.name}: {c.shape[0]}x{c.shape[1]} -> {detail}")
        return "\n".join(lines)


def matches(name: str, include: Sequence[str], exclude: Sequence[str] = ()) -> bool:
    """Whether a module name matches one of the `include` globs and none of the `exclude` ones (fnmatch)."""
    return any(fnmatch.fnmatchcase(name, g) for g in include) and not any(
        fnmatch.fnmatchcase(name, g) for g in exclude
    )


def matching_linears(model: nn.Module, include: Sequence[str] = ("*",),
                     exclude: Sequence[str] = ()) -> dict[str, nn.Linear]:
    """name -> nn.Linear for the model's linear layers that `matches` selects, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and matches(n, include, exclude)}


def kronify(
    model: nn.Module,
    plan: Mapping | None = None,
    *,
    block: Sequence[int] | None = None,
    candidates: Sequence[Sequence[int]] | None = None,
    rank: int = 1,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    init: str = "random",
) -> KronifyReport:
    """Replace matching nn.Linear modules of `model` in place; return what was done.

    Give exactly one of:
      plan: {layer name: LayerPattern or {block, rank}}: each named layer gets its own pattern
            (the structure `kronsearch export` writes; see `kronsearch.load_plan`);
      block=(h, w): one KronLinear pattern for every layer matching include/exclude (fnmatch globs
            on module names); layers it does not divide stay dense, with the reason logged;
      candidates=[(h, w), ...]: a PatternSelectLinear per matching layer (one-round selection);
            candidates that do not divide a layer are dropped for that layer.
    init: "random" (train from scratch) or "dense" (KronLinear.from_linear: the nearest
    Kronecker approximation of the existing weights, for converting a pretrained model; with
    candidates=, PatternSelectLinear.from_linear starts every candidate from it).
    A plan naming a layer that is not an nn.Linear, or a block that does not divide it, is an error.
    """
    if sum(x is not None for x in (plan, block, candidates)) != 1:
        raise BadInput("kronify takes exactly one of: plan, block=, candidates=")
    if init not in ("random", "dense"):
        raise BadInput(f"init must be 'random' or 'dense', got {init!r}")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    patterns = parse_plan(plan) if plan is not None else None
    if patterns is not None:
        unknown = sorted(set(patterns) - set(linears))
        if unknown:
            raise BadInput(f"plan names layers that are not nn.Linear in this model: {unknown}; "
                             f"nn.Linear layers: {sorted(linears)}")
    changes, replacements = [], {}
    for name, linear in linears.items():
        shape = (linear.out_features, linear.in_features)
        if patterns is not None:
            if name not in patterns:
                changes.append(LayerChange(name, shape, "dense", reason="not in the plan"))
                continue
            change, module = _to_kron(name, linear, patterns[name].block, patterns[name].rank, init, strict=True)
        elif not matches(name, include, exclude):
            change, module = LayerChange(name, shape, "dense", reason="not matched by include/exclude"), None
        elif block is not None:
            change, module = _to_kron(name, linear, cast(Block, tuple(block)), rank, init, strict=False)
        else:
            assert candidates is not None  # exactly one of plan, block, candidates (checked above)
            change, module = _to_select(name, linear, candidates, rank, init)
        if module is not None:
            replacements[name] = module
        else:
            log.info("kronify: %s stays dense: %s", name, change.reason)
        changes.append(change)
    for name, module in replacements.items():  # only once every layer passed: an error leaves the model as it was
        model.set_submodule(name, module)
    return KronifyReport(changes)


def _to_kron(name: str, linear: nn.Linear, block: Block, rank: int, init: str, strict: bool):
    shape = (linear.out_features, linear.in_features)
    if block not in valid_blocks(*shape):
        if strict:
            valid = ", ".join(format_block(b) for b in valid_blocks(*shape))
            raise BadInput(f"plan block {format_block(block)} does not divide layer {name!r} of shape "
                             f"(out={shape[0]}, in={shape[1]}); valid blocks: {valid}")
        return LayerChange(name, shape, "dense", reason=f"block {format_block(block)} does not divide it"), None
    if init == "dense":
        module = KronLinear.from_linear(linear, block, rank)
    else:
        w = linear.weight
        module = KronLinear(shape[1], shape[0], block, rank, linear.bias is not None, w.device, w.dtype)
    return LayerChange(name, shape, "kron", [block], rank), module


def _to_select(name: str, linear: nn.Linear, candidates: Sequence[Sequence[int]], rank: int, init: str):
    shape = (linear.out_features, linear.in_features)
    fitting = [tuple(c) for c in candidates if tuple(c) in valid_blocks(*shape)]
    if not fitting:
        tried = ", ".join(format_block(c) for c in candidates)
        return LayerChange(name, shape, "dense", reason=f"no candidate of [{tried}] divides it"), None
    if init == "dense":
        module = PatternSelectLinear.from_linear(linear, fitting, rank)
    else:
        w = linear.weight
        module = PatternSelectLinear(shape[1], shape[0], fitting, rank, linear.bias is not None, w.device, w.dtype)
    return LayerChange(name, shape, "select", module.candidates, rank), module


def model_plan(model: nn.Module) -> Plan:
    """The plan of a kronified (and finalized) model: its KronLinear layers' blocks and ranks."""
    return {name: LayerPattern(m.block, m.rank) for name, m in model.named_modules() if isinstance(m, KronLinear)}
