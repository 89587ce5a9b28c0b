"""`kronsearch show`: a study's trials and its best trial or Pareto front, as data and as rich tables."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kronsearch.report.trials import (SCALAR_METRICS, best_trials, describe_blocks, duration, fmt_count,
                                      fmt_params, fmt_pct, fmt_seconds, metrics, norm_block, objectives,
                                      study_strategy, trial_kind)


def trial_row(trial: FrozenTrial, study: optuna.Study) -> dict:
    """One trial as a plain dict: state, kind, params, objective values, the metrics `show` lists."""
    m = metrics(trial)
    names = [o["metric"] for o in objectives(study)]
    return {
        "number": trial.number,
        "state": trial.state.name,
        "kind": trial_kind(trial, study_strategy(study)),
        "params": dict(trial.params),
        "values": dict(zip(names, trial.values)) if trial.values else None,
        **{key: m.get(key) for key in SCALAR_METRICS if key != "wall_time"},
        "selected": {layer: norm_block(b) for layer, b in (m.get("selected") or {}).items()},
        "duration": duration(trial),
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "duplicate_of": trial.user_attrs.get("duplicate_of"),
        "fail_reason": trial.user_attrs.get("fail_reason"),
    }


def study_report(study: optuna.Study) -> dict:
    """A study's trials and its best trial (one objective) or Pareto front (several)."""
    objs = objectives(study)
    rows = [trial_row(t, study) for t in study.get_trials(deepcopy=False)]
    best = best_trials(study)
    return {
        "study": study.study_name,
        "strategy": study_strategy(study),
        "objectives": objs,
        "space_hash": study.user_attrs.get("space_hash"),
        "space_path": study.user_attrs.get("space_path"),
        "counts": dict(Counter(r["state"] for r in rows)),
        "trials": rows,
        "best": {"kind": "best" if len(objs) == 1 else "pareto_front",
                 "trials": [trial_row(t, study) for t in best]},
    }


def show_data(studies: Sequence[optuna.Study]) -> list[dict]:
    """`kronsearch show` as data: one study_report per study."""
    return [study_report(s) for s in studies]

def _note(row: Mapping) -> str:
    if row["duplicate_of"] is not None:
        return f"= #{row['duplicate_of']}"
    reason = row["fail_reason"] or ""
    return reason if len(reason) <= 40 else reason[:39] + "…"



def render_show(data: Sequence[Mapping], console: Console) -> None:
    """Draw show_data: a trials table per study, then its best trial or Pareto front."""
    for report in data:
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(report["counts"].items()))
        table = Table(title=escape(f"{report['study']}: {len(report['trials'])} trials ({counts or 'none'})"),
                      title_justify="left")
        for column, justify in (("#", "right"), ("state", "left"), ("kind", "left"), ("params", "left"),
                                ("val acc", "right"), ("test acc", "right"), ("sparsity", "right"),
                                ("train params", "right"), ("train MACs", "right"), ("selected", "left"),
                                ("duration", "right"), ("note", "left")):
            table.add_column(column, justify=justify)
        for row in report["trials"]:
            table.add_row(
                str(row["number"]), row["state"], row["kind"] or "-", escape(fmt_params(row["params"])),
                fmt_pct(row["val_accuracy"]), fmt_pct(row["test_accuracy"]), fmt_pct(row["block_sparsity"]),
                fmt_count(row["train_params"]), fmt_count(row["train_macs"]),
                escape(describe_blocks(row["selected"])), fmt_seconds(row["duration"]), escape(_note(row)),
            )
        console.print(table)
        _render_best(report, console)
        console.print()


def _render_best(report: Mapping, console: Console) -> None:
    best = report["best"]
    if not best["trials"]:
        console.print("no complete trial yet")
        return
    if best["kind"] == "best":
        row = best["trials"][0]
        console.print(f"best trial: #{row['number']}  val {fmt_pct(row['val_accuracy'])}  "
                      f"test {fmt_pct(row['test_accuracy'])}  {escape(fmt_params(row['params']))}", highlight=False)
        return
    table = Table(title=escape(f"Pareto front of {report['study']} ({len(best['trials'])} trials)"),
                  title_justify="left")
    table.add_column("#", justify="right")
    for objective in report["objectives"]:
        table.add_column(f"{objective['metric']} ({objective['direction'][:3]})", justify="right")
    table.add_column("params")
    for row in best["trials"]:
        values = [row["values"].get(o["metric"]) for o in report["objectives"]]
        cells = [fmt_pct(v) if o["metric"].endswith(("accuracy", "sparsity")) else fmt_count(v)
                 for o, v in zip(report["objectives"], values)]
        table.add_row(str(row["number"]), *cells, escape(fmt_params(row["params"])))
    console.print(table)

