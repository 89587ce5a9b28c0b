"""Best validation accuracy against cumulative training cost, trial by trial, for each strategy's study.

A strategy's search is one study; its k-th point says what the best val accuracy was after its
first k trials (trial order) and what those trials cost together: training MACs
(record.train_macs_total: a complete trial's metrics, a pruned trial's epochs up to its pruning)
and wall time. A reused duplicate costs nothing. `reach` answers the question
these curves are for: which strategy reached a given accuracy cheaper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.markup import escape

from kronsearch.record import FINISHED, TrialRecord, study_strategy, train_macs_total, val_accuracy
from kronsearch.report.trials import duration, fmt_count, fmt_pct, fmt_seconds, print_uncut, report_table


def cost_curve(study: optuna.Study) -> dict:
    """{"study", "strategy", "points": [{trial, state, val_accuracy, best, train_macs, wall_time}], "macs_unknown"}.

    train_macs and wall_time are cumulative over the finished trials so far; best is the highest val
    accuracy of a complete trial so far (None before the first). A pruned trial adds the MACs of its
    epochs (record.train_macs_total); trials whose MACs are unknown (failed, or pruned in a study
    from before pruned trials kept it) add their wall time but no MACs; "macs_unknown" counts them.
    """
    points, best, macs, wall, unknown = [], None, 0, 0.0, 0
    for trial in sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number):
        if TrialRecord.of(trial).duplicate_of is None:
            spent = train_macs_total(trial)
            unknown += spent is None
            macs += spent or 0
            wall += duration(trial) or 0.0
        value = val_accuracy(trial) if trial.state == TrialState.COMPLETE else None
        if value is not None and (best is None or value > best):
            best = value
        points.append({"trial": trial.number, "state": trial.state.name, "val_accuracy": value, "best": best,
                       "train_macs": macs, "wall_time": wall})
    return {"study": study.study_name, "strategy": study_strategy(study), "points": points, "macs_unknown": unknown}


def reach(curves: Sequence[Mapping]) -> dict | None:
    """The cost at which each curve first reached the lowest of the curves' final best accuracies.

    {"target": accuracy, "by_study": {study: {trial, train_macs, wall_time}}}; None when fewer than
    two curves have a complete trial.
    """
    finals = [c["points"][-1]["best"] for c in curves if c["points"] and c["points"][-1]["best"] is not None]
    if len(finals) < 2:
        return None
    target = min(finals)
    by_study = {}
    for curve in curves:
        first = next((p for p in curve["points"] if p["best"] is not None and p["best"] >= target), None)
        if first is not None:
            by_study[curve["study"]] = {k: first[k] for k in ("trial", "train_macs", "wall_time")}
    return {"target": target, "by_study": by_study}


def render_cost(curves: Sequence[Mapping], reached: Mapping | None, console: Console, wide: bool = False) -> None:
    """The curves as one table (a row per finished trial) and a line per study: what the target cost it
    (narrow: short headers, fitting 80 columns)."""
    headers = (("study", False), ("#", True), ("state", False), ("val acc", True), ("best so far", True),
               ("MACs so far" if wide else "MACs", True), ("time so far" if wide else "time", True))
    rows = [[curve["study"] if index == 0 else "", str(point["trial"]), point["state"].lower(),
             fmt_pct(point["val_accuracy"]), fmt_pct(point["best"]), fmt_count(point["train_macs"]),
             fmt_seconds(point["wall_time"])] for curve in curves for index, point in enumerate(curve["points"])]
    print_uncut(console, report_table("best val accuracy vs cumulative training cost (trial order)", headers, rows,
                                      wide))
    if reached is not None:
        console.print(f"to reach {fmt_pct(reached['target'])} val accuracy (the lowest final best):", highlight=False)
        for study, cost in reached["by_study"].items():
            console.print(f"  {escape(study)}: after trial {cost['trial']}, {fmt_count(cost['train_macs'])} training "
                          f"MACs, {fmt_seconds(cost['wall_time'])}", highlight=False)
