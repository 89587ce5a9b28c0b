"""A pattern plan: which block and rank each layer gets. What the search exports and kronify applies."""

from __future__ import annotations

import os
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass

from kronsearch.layers.blocks import MAX_RANK, Block, format_block, parse_block
from kronsearch.layers.errors import BadInput
from kronsearch.layers.yamlfile import read_yaml_file

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60


@dataclass(frozen=True)
class LayerPattern:
    """The pattern of one layer: block shape (h, w) and rank r."""

    block: Block
    rank: int = 1

    def to_dict(self) -> dict:
        return {"block": format_block(self.block), "rank": self.rank}


Plan = dict[str, LayerPattern]
"""Layer name (as in model.named_modules()) -> its pattern."""


def parse_plan(layers: Mapping) -> Plan:
    """{name: {block: '4x4' | [4, 4], rank: 1}} -> Plan. Raises BadInput naming the bad layer."""
    plan = {}
    for name, entry in layers.items():
        if isinstance(entry, LayerPattern):
            plan[name] = entry
            continue
        if not isinstance(entry, Mapping) or "block" not in entry or set(entry) - {"block", "rank"}:
            raise BadInput(f"plan layer {name!r}: expected {{block: 'HxW', rank: R}}, got {entry!r}")
        try:
            block = parse_block(entry["block"])
        except ValueError as err:
            raise BadInput(f"plan layer {name!r}: {err}") from None
        rank = entry.get("rank", 1)
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= MAX_RANK or min(block) < 1:
            raise BadInput(f"plan layer {name!r}: block sides and rank must be integers >= 1, rank at most "
                             f"{MAX_RANK}, got {_SHORT.repr(entry)}")
        plan[name] = LayerPattern(block, rank)
    return plan


def load_plan(path: str | os.PathLike) -> Plan:
    """Read the per-layer plan from an exported pattern file (`kronsearch export`).

    Read with the bounds of space files (kronsearch.layers.yamlfile): at most 1 MB, no aliases, no repeated
    keys; ranks at most MAX_RANK. Raises BadInput naming the file and the layer.
    """
    document, _ = read_yaml_file(path, "plan file", BadInput)
    if not isinstance(document, Mapping) or not isinstance(document.get("layers"), Mapping):
        raise BadInput(f"{path}: a plan file has a 'layers' mapping of name -> {{block, rank}}")
    try:
        return parse_plan(document["layers"])
    except ValueError as err:
        raise BadInput(f"{path}: layers: {err}") from None
