"""`kronsearch show`: a study's trials and its best trial or Pareto front, as data and as rich tables."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.markup import escape

from kronsearch.processes import worker_alive
from kronsearch.record import (
    SCALAR_METRICS,
    StudyRecord,
    TrialRecord,
    malformed,
    malformed_study,
    metrics,
    study_strategy,
    tolerance_pick,
    trial_kind,
    val_accuracy,
)
from kronsearch.report.trials import (
    best_trials,
    describe_blocks,
    duration,
    fmt_accuracies,
    fmt_count,
    fmt_params,
    fmt_pct,
    fmt_seconds,
    narrow_table,
    norm_block,
    objectives,
    pick_tolerance,
    print_uncut,
)


def trial_state(trial: FrozenTrial) -> tuple[str, str | None]:
    """(Optuna's state, or INTERRUPTED for a trial cut off: marked so, or RUNNING in a process of this host
    that is gone, which the next run will mark; why it was interrupted, else None)."""
    interrupted = TrialRecord.of(trial).interrupted
    if trial.state == TrialState.FAIL and interrupted is not None:
        return "INTERRUPTED", interrupted
    if trial.state == TrialState.RUNNING and worker_alive(trial) is False:
        return "INTERRUPTED", (f"process {TrialRecord.of(trial).worker} is gone; the next run retries the "
                               f"configuration")
    return trial.state.name, None


def last_epoch(trial: FrozenTrial) -> dict | None:
    """{"epoch", "val_accuracy"} of the trial's latest reported epoch (Optuna's intermediate values), or None."""
    if not trial.intermediate_values:
        return None
    epoch = max(trial.intermediate_values)
    return {"epoch": epoch, "val_accuracy": trial.intermediate_values[epoch]}


def trial_row(trial: FrozenTrial, study: optuna.Study) -> dict:
    """One trial as a plain dict: state, kind, params, objective values, the metrics `show` lists."""
    m = metrics(trial)
    names = [o["metric"] for o in objectives(study)]
    state, interrupted = trial_state(trial)
    return {
        "number": trial.number,
        "state": state,
        "kind": trial_kind(trial, study_strategy(study)),
        "params": dict(trial.params),
        "values": dict(zip(names, trial.values)) if trial.values else None,
        **{key: m.get(key) for key in SCALAR_METRICS if key != "wall_time"},
        "selected": {layer: norm_block(b) for layer, b in (m.get("selected") or {}).items()},
        "race": m.get("decisions") or {},
        "duration": duration(trial),
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "duplicate_of": TrialRecord.of(trial).duplicate_of,
        "race_of": TrialRecord.of(trial).race_of,
        "challenges": TrialRecord.of(trial).challenges,
        "fail_reason": TrialRecord.of(trial).fail_reason,
        "interrupted": interrupted,
        "last_epoch": last_epoch(trial) if state == "RUNNING" else None,
        "malformed": malformed(trial),
    }


def study_report(study: optuna.Study, tolerance: float | None = None) -> dict:
    """A study's trials, its pick (record.tolerance_pick at `tolerance` points, by default the study's
    search.tolerance) and the most accurate trial, and its best trials: the pick (one objective) or
    the Pareto front (several)."""
    objs = objectives(study)
    trials = study.get_trials(deepcopy=False)
    rows = [trial_row(t, study) for t in trials]
    points = pick_tolerance(study, tolerance)
    pick, most_accurate = tolerance_pick(trials, points), tolerance_pick(trials, 0)
    examples = [r["val_examples"] for r in rows if r["state"] == "COMPLETE" and r["val_examples"]]
    return {
        "study": study.study_name,
        "strategy": study_strategy(study),
        "tolerance_note": tolerance_note(points, min(examples)) if examples and pick is not None else None,
        "objectives": objs,
        "space_hash": StudyRecord.of(study).space_hash,
        "space_path": StudyRecord.of(study).space_path,
        "malformed": malformed_study(study),
        "counts": dict(Counter(r["state"] for r in rows)),
        "trials": rows,
        "best": {"kind": "best" if len(objs) == 1 else "pareto_front",
                 "trials": [trial_row(t, study) for t in best_trials(study, points)]},
        "pick": None if pick is None or most_accurate is None else {
            "tolerance": points, "best_val": val_accuracy(most_accurate), "trial": trial_row(pick, study),
            "most_accurate": None if most_accurate.number == pick.number else trial_row(most_accurate, study)},
    }


def tolerance_note(points: float, val_examples: int) -> str | None:
    """Why a tolerance under one validation example (100 / n points) picks only among ties; None otherwise.

    Accuracies move in steps of one example, so within such a tolerance lies nothing but the best
    accuracy itself: the pick is the cheapest of the trials tied with the best (0 asks for exactly that)."""
    step = 100 / val_examples
    if points == 0 or points >= step:
        return None
    return (f"the tolerance, {points:g} points, is under one validation example ({step:.2f} points of "
            f"{val_examples:,}): only trials tied with the best val accuracy are within it. A tolerance of "
            f"{math.ceil(step * 100) / 100:g} or more (--tolerance, search.tolerance) or a larger validation set "
            f"(data.val_fraction) lets the pick trade accuracy for cost")


def show_data(studies: Sequence[optuna.Study], tolerance: float | None = None) -> list[dict]:
    """`kronsearch show` as data: one study_report per study (tolerance: overrides each study's)."""
    return [study_report(s, tolerance) for s in studies]

def count_blocks(blocks: Mapping[str, str]) -> str:
    """Per-layer blocks in words: 'fc1:4x4 fc2:2x2' for up to 3 layers, else '2x2 on 4 layers, 4x4 on 3'."""
    if len(blocks) <= 3:
        return describe_blocks(blocks)
    counts = Counter(blocks.values()).most_common()
    return ", ".join(f"{b} on {n}{' layers' if i == 0 else ''}" for i, (b, n) in enumerate(counts))


def row_notes(row: Mapping) -> list[str]:
    """What the narrow table leaves out of a trial, as whole sentences: its pick, reuse and failure."""
    notes = []
    if row["selected"]:
        notes.append(f"selected {count_blocks(row['selected'])}")
    if row["duplicate_of"] is None:  # a duplicate's race is its source's, printed there
        notes.extend(race_lines(row.get("race") or {}))
    if row.get("race_of") is not None:
        notes.append(f"trained a plan of trial #{row['race_of']}'s race (search.races), without a race of its own")
    if row.get("challenges") is not None:
        notes.append(f"a candidate the race found plausible, costlier than #{row['challenges']}'s plan: pruned if it "
                     f"trailed #{row['challenges']}'s training at an epoch")
    if row["duplicate_of"] is not None:
        notes.append(f"same configuration as #{row['duplicate_of']}: its result reused, nothing trained")
    if row["fail_reason"]:
        notes.append(row["fail_reason"])
    if row["interrupted"]:
        notes.append(f"interrupted: {row['interrupted']}")
    if row["last_epoch"] is not None:
        epoch = row["last_epoch"]
        notes.append(f"running: epoch {epoch['epoch']} reported, val {fmt_pct(epoch['val_accuracy'])}")
    if row.get("malformed"):
        notes.append(f"malformed record, read as missing: {row['malformed']}")
    return notes


# what a race that fell back kept, by its rule (train.race_fallback); None: a record from before the rule was kept
FALLBACK_WORDS = {"cheapest": "the cheapest within tolerance", "most_accurate": "the most accurate",
                  None: "the most accurate"}


def race_lines(decisions: Mapping[str, Mapping]) -> list[str]:
    """How a one-round trial's race decided, one line per group of layers that decided alike on the same estimates:
    'race layers.0, layers.1: 4x4 by budget; 2x2 72.4 ± 1.9% (512 ex, 40 steps), 4x4 ...'. A fallback says that
    the evidence did not separate the candidates (kronsearch/evidence.py)."""
    groups: dict[str, list[str]] = {}
    for layer, d in decisions.items():
        estimates = d.get("estimates") or {k: {"accuracy": a} for k, a in (d.get("accuracy") or {}).items()}
        parts = []
        for k, e in estimates.items():
            seen = f" ({e['examples']:,} ex, {e['steps']:,} steps)" if "examples" in e else ""
            spread = f" ± {e['se']:.1f}" if "se" in e else ""
            parts.append(f"{k} {e['accuracy']:.1f}{spread}%{seen}")
        why = f" (not separated by the evidence: {FALLBACK_WORDS.get(d.get('rule'), FALLBACK_WORDS[None])})" \
            if d.get("by") == "fallback" else ""
        groups.setdefault(f"{d.get('block')} by {d.get('by')}{why}; {', '.join(parts)}", []).append(layer)
    return [f"race {', '.join(layers)}: {text}" for text, layers in groups.items()]


SHORT_PARAMS = {"rank": "r", "lambda1": "l1", "lambda2": "l2"}
PARAMS_LEGEND = {"rank": "r rank", "lambda2": "l2 lambda2 (the l1 penalty on S)",
                 "lambda1": "l1 lambda1 (the group penalty of studies before the race)"}


def params_legend(rows: Sequence[Mapping]) -> str:
    """'r rank, l2 lambda2 (the l1 penalty on S); ': the short params the rows use, spelled out."""
    used = [text for key, text in PARAMS_LEGEND.items() if any(key in r["params"] for r in rows)]
    return f"{', '.join(used)}; " if used else ""


def short_params(params: Mapping[str, Any]) -> str:
    """{'block': '4x4', 'rank': 1, 'lambda2': 1e-4} -> '4x4 r1 l2=0.0001' (the narrow table's params)."""
    parts = []
    for key, value in sorted(params.items(), key=lambda kv: kv[0] != "block"):
        if key == "block":
            parts.append(norm_block(value))
        elif key == "rank":
            parts.append(f"r{value}")
        elif not key.startswith("block:"):
            parts.append(f"{SHORT_PARAMS.get(key, key)}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    layer_blocks = {p.split(":", 1)[1]: norm_block(v) for p, v in params.items() if p.startswith("block:")}
    if layer_blocks:
        parts.append(describe_blocks(layer_blocks))
    return " ".join(parts)


def render_show(data: Sequence[Mapping], console: Console, wide: bool = False) -> None:
    """Draw show_data: a trials table per study, then its best trial or Pareto front.

    The default view fits 80 columns: state, accuracies, sparsity, MACs, time and short params,
    with each trial's selection, reuse and failure on its own line below. `wide` adds every column.
    """
    for report in data:
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(report["counts"].items()))
        title = f"{report['study']}: {len(report['trials'])} trials ({counts or 'none'})"
        rows = report["trials"]
        if wide:
            columns = [("#", True), ("state", False), ("kind", False), ("params", False), ("val acc", True),
                       ("test acc", True), ("sparsity", True), ("train params", True), ("train MACs", True),
                       ("selected", False), ("duration", True), ("note", False)]
            cells = [[str(r["number"]), r["state"].lower(), r["kind"] or "-", fmt_params(r["params"]),
                      fmt_pct(r["val_accuracy"]), fmt_pct(r["test_accuracy"]), fmt_pct(r["block_sparsity"]),
                      fmt_count(r["train_params"]), fmt_count(r["train_macs"]), describe_blocks(r["selected"]),
                      fmt_seconds(r["duration"]), "; ".join(row_notes({**r, "selected": {}})) or "-"] for r in rows]
        else:
            columns = [("#", True), ("state", False), ("val acc", True), ("test acc", True), ("sparsity", True),
                       ("MACs", True), ("time", True), ("params", False)]
            cells = [[str(r["number"]), r["state"].lower(), fmt_pct(r["val_accuracy"]), fmt_pct(r["test_accuracy"]),
                      fmt_pct(r["block_sparsity"]), fmt_count(r["train_macs"]), fmt_seconds(r["duration"]),
                      short_params(r["params"])] for r in rows]
            if len({r["kind"] for r in rows}) > 1:  # a hybrid study: say which stage each trial belongs to
                columns.insert(2, ("kind", False))
                for cell, r in zip(cells, rows):
                    cell.insert(2, r["kind"] or "-")
        print_uncut(console, narrow_table(title, columns, cells))
        if not wide:
            notes = [f"#{r['number']} {escape(note)}" for r in rows for note in row_notes(r)]
            if notes:  # one print: a print per line cost a millisecond each (1,000 trials, issue 33)
                console.print("\n".join(notes), highlight=False)
            console.print(f"MACs per training sample; {params_legend(rows)}--wide shows every column", highlight=False)
        if report.get("malformed"):
            console.print(escape(f"{report['study']}: malformed study record, read as missing: {report['malformed']}"),
                          highlight=False)
        _render_best(report, console)
        if report["tolerance_note"]:
            console.print(f"note: {escape(report['tolerance_note'])}", highlight=False)
        console.print()


def pick_rule(pick: Mapping) -> str:
    """'cheapest within 0.5 points of the best val 85.10%': the rule that chose a study_report's pick."""
    return f"cheapest within {pick['tolerance']:g} points of the best val {fmt_pct(pick['best_val'])}"


def _trial_line(row: Mapping) -> str:
    return (f"#{row['number']}  {fmt_accuracies(row)}  "
            f"final MACs {fmt_count(row['final_macs'])}  {fmt_params(row['params'])}")


def _render_best(report: Mapping, console: Console) -> None:
    """The pick and, when it differs, the most accurate trial; the Pareto front first with several objectives."""
    best, pick = report["best"], report["pick"]
    if pick is None:
        console.print("no complete trial yet")
        return
    if best["kind"] == "pareto_front":
        _render_front(report, console)
    among = "" if best["kind"] == "best" else " among all complete trials"
    console.print(escape(f"pick{among} ({pick_rule(pick)}): {_trial_line(pick['trial'])}"), highlight=False)
    if pick["most_accurate"] is not None:
        console.print(escape(f"most accurate: {_trial_line(pick['most_accurate'])}"), highlight=False)


def _render_front(report: Mapping, console: Console) -> None:
    best = report["best"]
    columns = [("#", True), *((f"{o['metric']} ({o['direction'][:3]})", True) for o in report["objectives"]),
               ("params", False)]
    rows = []
    for row in best["trials"]:
        values = [row["values"].get(o["metric"]) for o in report["objectives"]]
        rows.append([str(row["number"]),
                     *(fmt_pct(v) if o["metric"].endswith(("accuracy", "sparsity")) else fmt_count(v)
                       for o, v in zip(report["objectives"], values)), fmt_params(row["params"])])
    print_uncut(console, narrow_table(f"Pareto front of {report['study']} ({len(best['trials'])} trials)", columns,
                                      rows))
