"""Trial and study helpers shared by show, compare, plot and export, the number formats they print, and the
narrow tables show and compare draw.

Everything is read through kronsearch.record (what `kronsearch run` stores in the study) and from
each trial's history.json in its artifact folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from kronsearch.layers.blocks import format_block, parse_block
from kronsearch.layers.errors import BadInput, RunFailure
from kronsearch.record import (
    StudyRecord,
    TrialRecord,
    best_first,
    malformed,
    malformed_study,
    metrics,
    study_tolerance,
    tolerance_pick,
)
from kronsearch.storage import artifact_dir_candidates

HISTORY_FILE = "history.json"

# ----------------------------------------------------------------------------- trial helpers


def duration(trial: FrozenTrial) -> float | None:
    """Seconds the trial cost: metrics.wall_time, else start-to-end; a reused duplicate costs its own time."""
    wall = metrics(trial).get("wall_time")
    if wall is not None and TrialRecord.of(trial).duplicate_of is None:
        return float(wall)
    return trial.duration.total_seconds() if trial.duration is not None else None


def trial_rank(trial: FrozenTrial) -> int | None:
    """The Kronecker rank: the "rank" param, else the rank every layer of metrics.plan shares."""
    if "rank" in trial.params:
        return int(trial.params["rank"])
    ranks = {entry.get("rank") for entry in metrics(trial).get("plan", {}).values()}
    return ranks.pop() if len(ranks) == 1 else None


def norm_block(block: Any) -> str:
    """'4X4', [4, 4] -> '4x4'; anything unparsable as str(block)."""
    try:
        return format_block(parse_block(block))
    except (ValueError, TypeError):
        return str(block)


def objectives(study: optuna.Study) -> list[dict]:
    """[{metric, direction}] in the study's objective order (from its "objectives" user attr)."""
    declared = StudyRecord.of(study).objectives
    if isinstance(declared, list) and len(declared) == len(study.directions):
        return [dict(o) for o in declared]
    return [{"metric": "val_accuracy" if i == 0 else f"objective_{i}", "direction": d.name.lower()}
            for i, d in enumerate(study.directions)]


def check_tolerance(tolerance: float | None) -> float | None:
    """A --tolerance given by the user (accuracy points), checked: BadInput unless a number in [0, 100]."""
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
                                  or not 0 <= tolerance <= 100):
        raise BadInput(f"--tolerance must be a number of accuracy points in [0, 100], got {tolerance!r}")
    return tolerance


def pick_tolerance(study: optuna.Study, tolerance: float | None = None) -> float:
    """The accuracy points a report picks at: `tolerance` (a --tolerance, checked) if given, else the study's."""
    points = check_tolerance(tolerance)
    return study_tolerance(study) if points is None else points


def study_pick(study: optuna.Study, tolerance: float | None = None) -> FrozenTrial | None:
    """The study's pick among its complete trials (record.tolerance_pick at pick_tolerance): the cheapest
    within that many accuracy points of the best val accuracy. None if none completed."""
    return tolerance_pick(study.get_trials(deepcopy=False), pick_tolerance(study, tolerance))


def best_trials(study: optuna.Study, tolerance: float | None = None) -> list[FrozenTrial]:
    """The pick (one objective, study_pick; [] if none completed) or the Pareto front (several), by number."""
    if len(study.directions) == 1:
        pick = study_pick(study, tolerance)
        return [] if pick is None else [pick]
    return sorted(study.best_trials, key=lambda t: t.number)


def default_trial(study: optuna.Study, tolerance: float | None = None) -> FrozenTrial:
    """What export exports by default: the pick (one objective), or the Pareto-front trial with the highest
    val_accuracy (several). BadInput if none completed."""
    front = best_trials(study, tolerance)
    if not front:
        raise BadInput(f"study {study.study_name!r} has no complete trial")
    return max(front, key=best_first)


def malformed_notes(studies: Sequence[optuna.Study]) -> list[str]:
    """One line per trial whose record another tool wrote malformed (record.malformed): the reports read those
    attrs as missing and go on with the rest of the study."""
    notes = []
    for study in studies:
        if (problems := malformed_study(study)) is not None:
            notes.append(f"study {study.study_name}: malformed record, read as missing: {problems}")
        notes += [f"trial {t.number} of {study.study_name}: malformed record, read as missing: {problems}"
                  for t in study.get_trials(deepcopy=False) if (problems := malformed(t)) is not None]
    return notes


def artifact_dirs(study: optuna.Study, trial: FrozenTrial) -> list[Path]:
    """Where the trial's folder may be, best first (storage.artifact_dir_candidates: relative to the
    storage file's folder, so a moved studies folder still works)."""
    return artifact_dir_candidates(study, TrialRecord.of(trial).artifact_dir)


def trial_history(study: optuna.Study, trial: FrozenTrial) -> list[dict]:
    """The trial's per-epoch records (dicts with at least "epoch"), oldest first.

    Read from history.json in the trial's artifact folder (a reused duplicate points at the folder
    of the trial it copied); studies written by kronsearch 0.1 kept it in the "history" user attr.
    Without either, Optuna's intermediate values give [{"epoch", "val_accuracy"}]; [] if none.
    """
    for folder in artifact_dirs(study, trial):
        try:
            history = json.loads((folder / HISTORY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(history, list):
            return [e for e in history if isinstance(e, dict)]
    legacy = TrialRecord.of(trial).history
    if isinstance(legacy, list):
        return legacy
    return [{"epoch": step, "val_accuracy": value} for step, value in sorted(trial.intermediate_values.items())]


def describe_blocks(blocks: Mapping[str, str], max_layers: int = 3) -> str:
    """layer -> block, compactly: 'fc1:4x4 fc2:2x2' for a few layers, else counts plus a short digest."""
    if not blocks:
        return "-"
    if len(blocks) <= max_layers:
        return " ".join(f"{layer}:{b}" for layer, b in blocks.items())
    counts = Counter(blocks.values())
    if len(counts) == 1:
        return f"{next(iter(counts))} (all {len(blocks)})"
    digest = hashlib.sha1(repr(sorted(blocks.items())).encode()).hexdigest()[:6]
    return " ".join(f"{b}×{n}" for b, n in counts.most_common()) + f" #{digest}"


# ----------------------------------------------------------------------------- formatting


def fmt_count(value: float | None) -> str:
    """12345678 -> '12.3M'."""
    if value is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def fmt_pct(value: float | None) -> str:
    """0.9123 -> '91.23%'."""
    return "-" if value is None else f"{100 * value:.2f}%"


def fmt_accuracies(m: Mapping[str, Any]) -> str:
    """'val 91.20% of 6,000, test 90.10% of 10,000': a trial's accuracies and how many examples each came from
    (trials from before the counts were recorded give the accuracies alone)."""
    def part(split: str) -> str:
        count = m.get(f"{split}_examples")
        return f"{split} {fmt_pct(m.get(f'{split}_accuracy'))}" + ("" if count is None else f" of {count:,}")
    return f"{part('val')}, {part('test')}"


def fmt_seconds(value: float | None) -> str:
    """75 -> '1m15s'."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_params(params: Mapping[str, Any]) -> str:
    """{'rank': 1, 'lambda2': 0.001} -> 'rank=1 lambda2=0.001'; per-layer blocks compacted."""
    layer_blocks = {p.split(":", 1)[1]: norm_block(v) for p, v in params.items() if p.startswith("block:")}
    parts = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in params.items() if not k.startswith("block:")]
    if layer_blocks:
        parts.append(f"blocks={describe_blocks(layer_blocks)}")
    return " ".join(parts)


# ----------------------------------------------------------------------------- narrow tables


def narrow_table(title: str, columns: Sequence[tuple[str, bool]], rows: Sequence[Sequence[str]]) -> Table:
    """A table whose numeric columns (flag True) never wrap nor shrink below their widest cell."""
    table = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True)
    for index, (name, numeric) in enumerate(columns):
        if numeric:
            widest = max([len(name.split()[-1] if name else "")] + [len(r[index]) for r in rows])
            table.add_column(name, justify="right", no_wrap=True, min_width=widest)
        else:
            table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    table.probe = lambda: narrow_table(title, columns, widest_row(rows))  # type: ignore[attr-defined]  # print_uncut
    return table


def widest_row(rows: Sequence[Sequence[str]]) -> list[list[str]]:
    """[] or one row: per column the cell with the longest word, which sets the column's minimum width
    (numeric cells have no spaces: the longest cell). A table of it measures as the whole table's minimum."""
    if not rows:
        return []
    return [[max((row[i] for row in rows), key=lambda cell: max(map(len, cell.split()), default=0))
             for i in range(len(rows[0]))]]


def report_table(title: str, columns: Sequence[tuple[str, bool]], rows: Sequence[Sequence[str]],
                 wide: bool = False) -> Table:
    """narrow_table, or with `wide` a boxed table of the same columns (numeric ones, flag True, right-aligned)."""
    if not wide:
        return narrow_table(title, columns, rows)
    table = Table(title=escape(title), title_justify="left")
    for name, numeric in columns:
        table.add_column(name, justify="right" if numeric else "left", no_wrap=numeric)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    table.probe = lambda: report_table(title, columns, widest_row(rows), wide)  # type: ignore[attr-defined]  # print_uncut
    return table


NARROW = 80  # columns of the default views of show and compare


@contextmanager
def narrowed(console: Console, wide: bool = False) -> Iterator[None]:
    """Unless `wide`, lines wrap at NARROW columns (or the console's width, if less) inside the block."""
    width = console.width
    console.width = width if wide else min(width, NARROW)
    try:
        yield
    finally:
        console.width = width


def print_uncut(console: Console, table: Table) -> None:
    """Print a table; one whose numbers cannot fit the console's width is printed wider, not cut. A table of
    narrow_table or report_table is measured by its probe, a copy with one row of its widest cells: measuring
    every row cost as much as printing them (1,000 trials, issue 33)."""
    probe = getattr(table, "probe", None)
    measured = probe() if probe is not None else table
    needed, width = Measurement.get(console, console.options.update_width(100_000), measured).minimum, console.width
    console.width = max(width, needed)  # the terminal then wraps the long lines; every cell stays whole
    try:
        console.print(table)
    finally:
        console.width = width


class ExportError(RunFailure):
    """The trial's recorded data is not enough to export what was asked (e.g. no model config)."""


class MissingWeights(ExportError, FileNotFoundError):
    """The trial's saved weights are not where the study says (or it saved none)."""


def bsr_path(weights: str | os.PathLike) -> Path:
    """best.safetensors -> best.bsr.safetensors, next to the weights file."""
    weights = Path(weights)
    return weights.with_name(f"{weights.stem}.bsr.safetensors")
