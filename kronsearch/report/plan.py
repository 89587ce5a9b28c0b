"""The dry-run plan: which layers a space decomposes, their candidate blocks and what each costs."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from kronsearch.layers.blocks import format_block, kron_macs, kron_params
from kronsearch.layers.costs import model_cost
from kronsearch.space import Space
from kronsearch.trial_run import TrialSpec, build_trial_model


def render_plan(space: Space, wide: bool = False) -> str:
    """The dry-run plan: decomposed layers, their candidate blocks and counts, as text of at most 80 columns
    (`wide`: no line broken)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=100_000 if wide else 80, force_terminal=False)
    console.print(f"search {space.name!r}: {space.search['strategy']}, {space.search['trials']} trials, "
                  f"objectives {', '.join(o['metric'] for o in space.search['objectives'])}, "
                  f"backend {space.backend['name']}")
    source = lambda section: section["name"] or f"factory {section['factory']}"  # noqa: E731
    console.print(f"data {source(space.data)} {tuple(space.input_shape)} -> {space.num_classes} classes; "
                  f"model {source(space.model)} {space.model['options'] or ''}"
                  + (f", dense weights {space.model['checkpoint']} (init {space.model['init']})"
                     if space.model["checkpoint"] else ""))
    rank = space.ranks[0]
    table = Table(title=f"decomposed layers (counts at rank {rank})")
    for column in ("layer", "shape", "dense params", "candidate", "params", "MACs/row"):
        table.add_column(column, justify="right" if column not in ("layer", "candidate") else "left")
    for layer, (out, inp) in space.layers.items():
        blocks = space.layer_blocks(layer)
        if not blocks:
            table.add_row(layer, f"{out}x{inp}", f"{out * inp + out:,}", "(stays dense: no block divides)", "", "")
        for i, block in enumerate(blocks):
            table.add_row(layer if i == 0 else "", f"{out}x{inp}" if i == 0 else "",
                          f"{out * inp + out:,}" if i == 0 else "", format_block(block),
                          f"{kron_params(out, inp, block, rank):,}", f"{kron_macs(out, inp, block, rank):,}")
    console.print(table)
    dense = build_trial_model(space, TrialSpec("per_pattern", rank, 0.0))
    one_round = build_trial_model(space, TrialSpec("one_round", rank, 0.0, candidates={
        glob: [format_block(b) for b in blocks] for glob, blocks in space.blocks.items()}))
    for label, model in (("dense model", dense), ("one-round model (all candidates)", one_round)):
        cost = model_cost(model, space.input_shape).total
        console.print(f"{label}: {cost.params:,} training params, {cost.macs:,} MACs per sample")
    return buffer.getvalue()
