"""`kronsearch compare`'s ranking of blocks: every complete trial of either strategy, grouped by the blocks its
final model has, each group ranked by its best trial.

Why both strategies: a per_pattern study may train a block once, with a lambda2 that prunes nearly all of it,
while a one_round trial that ended with the same blocks was the best model of both studies (issue 34). A
block's rank is its best trial's, and the count of trials behind it is shown, so no rank rests on one
unlucky trial unseen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from kronsearch.record import KINDS, TrialRecord, final_blocks, metrics, val_accuracy
from kronsearch.report.show import count_blocks
from kronsearch.report.trials import fmt_pct, norm_block, report_table


def block_ranking(pools: Mapping[str, Iterable[tuple[str, FrozenTrial]]]) -> list[dict]:
    """kind -> (study, trial) pairs -> one entry per set of final blocks (layer -> block), best val first.

    Each entry: blocks, label, the best trial's val/test accuracy, kind, study and number, `trials` per kind
    (trials that reused another's result not counted), and its 1-based position. Ties on val accuracy go to
    fewer training MACs per sample."""
    groups: dict[tuple, list[tuple[str, str, FrozenTrial]]] = {}
    for kind, entries in pools.items():
        for study_name, trial in entries:
            blocks = {layer: norm_block(b) for layer, b in final_blocks(trial).items()}
            reused = TrialRecord.of(trial).duplicate_of is not None  # another trial's result: no evidence of its own
            if trial.state == TrialState.COMPLETE and val_accuracy(trial) is not None and blocks and not reused:
                groups.setdefault(tuple(sorted(blocks.items())), []).append((kind, study_name, trial))
    ranking: list[dict[str, Any]] = []
    for key, members in groups.items():
        kind, study_name, best = max(members, key=lambda m: (val_accuracy(m[2]), -m[2].number))
        ranking.append({
            "blocks": dict(key), "label": count_blocks(dict(key)), "val_accuracy": val_accuracy(best),
            "test_accuracy": metrics(best).get("test_accuracy"), "train_macs": metrics(best).get("train_macs"),
            "kind": kind, "study": study_name, "trial": best.number,
            "trials": {k: sum(m[0] == k for m in members) for k in KINDS},
        })
    ranking.sort(key=lambda e: (-e["val_accuracy"], math.inf if e["train_macs"] is None else e["train_macs"],
                                e["label"]))
    for position, entry in enumerate(ranking, 1):
        entry["position"] = position
    return ranking


def block_position(ranking: Sequence[Mapping], selected: Mapping[str, str]) -> Mapping | None:
    """The entry of `selected`'s blocks (a one-round pick's) in block_ranking's result, or None."""
    return next((e for e in ranking if e["blocks"] == dict(selected)), None) if selected else None


def trials_behind(entry: Mapping) -> str:
    """'3 trials: 1 per_pattern, 2 one_round' (the kinds that had any)."""
    counts = {kind: n for kind, n in entry["trials"].items() if n}
    total = sum(counts.values())
    return f"{total} trial{'' if total == 1 else 's'}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items())


def best_trial(entry: Mapping) -> str:
    """'demo:one_round #3', with the kind when the study's name does not say it (a hybrid study)."""
    kind = "" if entry["study"].endswith(f":{entry['kind']}") else f" ({entry['kind']})"
    return f"{entry['study']} #{entry['trial']}{kind}"


def block_table(ranking: Sequence[Mapping], wide: bool) -> Table:
    """The ranking of blocks by their best trial, with the trials behind each (reused results not counted)."""
    rows = [[str(e["position"]), e["label"], fmt_pct(e["val_accuracy"]), best_trial(e),
             *(str(e["trials"][kind]) for kind in KINDS)] for e in ranking]
    columns = [("pos", True), ("blocks", False), ("best val", True), ("best trial", False),
               *((f"{kind} trials" if wide else NARROW_KINDS[kind], True) for kind in KINDS)]
    return report_table("blocks ranked by their best trial of either strategy", columns, rows, wide)


NARROW_KINDS = {"one_round": "1-round", "per_pattern": "per-pat"}  # trials of each kind, in 80 columns
