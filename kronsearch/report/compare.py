"""`kronsearch compare`: the one-round pick against the per-pattern ranking, their agreement and cost."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.columns import Columns
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kronsearch.record import (
    DEFAULT_TOLERANCE,
    FINISHED,
    KINDS,
    StudyRecord,
    TrialRecord,
    metrics,
    study_strategy,
    study_tolerance,
    tolerance_pick,
    train_macs_total,
    trial_kind,
    val_accuracy,
)
from kronsearch.report.blocks import block_position, block_ranking, block_table, trials_behind
from kronsearch.report.cost import cost_curve, reach, render_cost
from kronsearch.report.trials import (
    check_tolerance,
    describe_blocks,
    duration,
    fmt_count,
    fmt_pct,
    fmt_seconds,
    malformed_notes,
    narrowed,
    norm_block,
    print_uncut,
    report_table,
    trial_rank,
)


def trial_pattern(trial: FrozenTrial) -> dict:
    """A per_pattern trial's pattern: global "block" param or per-layer "block:<layer>" params, plus rank."""
    layer_blocks = {p.split(":", 1)[1]: norm_block(v) for p, v in trial.params.items() if p.startswith("block:")}
    block = trial.params.get("block")
    return {"block": None if block is None else norm_block(block), "layer_blocks": dict(sorted(layer_blocks.items())),
            "rank": trial_rank(trial)}


def block_for(pattern: Mapping, layer: str) -> str | None:
    """The block a pattern gives `layer`: its per-layer block, else the global one."""
    return pattern["layer_blocks"].get(layer, pattern["block"])



def pattern_label(pattern: Mapping) -> str:
    """'4x4 r1', or the compact per-layer blocks plus the rank."""
    blocks = pattern["layer_blocks"]
    text = describe_blocks(blocks) if blocks else pattern["block"] or "-"
    if blocks and pattern["block"]:
        text = f"{pattern['block']} + {text}"
    return f"{text} r{pattern['rank'] if pattern['rank'] is not None else '?'}"


def same_blocks(selected: Mapping[str, str], pattern: Mapping) -> bool:
    """True when every layer's one-round pick equals the pattern's block for that layer (ranks ignored)."""
    return bool(selected) and all(block_for(pattern, layer) == block for layer, block in selected.items())


def pattern_ranking(entries: Iterable[tuple[str, FrozenTrial]]) -> list[dict]:
    """Complete per_pattern trials grouped by pattern (blocks + rank), best val_accuracy each, best first."""
    groups: dict[tuple, list[tuple[str, FrozenTrial]]] = {}
    for study_name, trial in entries:
        if trial.state != TrialState.COMPLETE or val_accuracy(trial) is None:
            continue
        groups.setdefault(_key(trial_pattern(trial)), []).append((study_name, trial))
    ranking = []
    for members in groups.values():
        study_name, best = max(members, key=lambda st: (val_accuracy(st[1]), -st[1].number))
        pattern = trial_pattern(best)
        ranking.append({
            **pattern, "label": pattern_label(pattern), "val_accuracy": val_accuracy(best),
            "test_accuracy": metrics(best).get("test_accuracy"), "train_macs": metrics(best).get("train_macs"),
            "study": study_name, "trial": best.number, "trials": len(members),
        })
    # Ties on val accuracy go to the pattern that trains cheaper (fewer MACs per sample).
    ranking.sort(key=lambda e: (-e["val_accuracy"], math.inf if e["train_macs"] is None else e["train_macs"],
                                e["label"]))
    for position, entry in enumerate(ranking, 1):
        entry["position"] = position
    return ranking


def strategy_compute(entries: Iterable[tuple[str, FrozenTrial]]) -> dict:
    """Training cost of one strategy: wall time and train_macs_total summed over its finished trials.

    Trials that reused another trial's result ("duplicate_of") trained nothing and are not counted.
    """
    finished = [t for _, t in entries if t.state in FINISHED]
    counted = [t for t in finished if TrialRecord.of(t).duplicate_of is None]
    macs = [train_macs_total(t) for t in counted]
    return {
        "trials": len(counted), "duplicates": len(finished) - len(counted),
        "wall_time": sum(duration(t) or 0.0 for t in counted),
        "train_macs_total": sum(m for m in macs if m is not None),
        "without_macs": dict(Counter(t.state.name.lower() for t, m in zip(counted, macs) if m is None)),
    }


STATE_WORDS = {"pruned": "pruned", "fail": "failed", "complete": "complete"}


def _ratios(by_kind: Mapping[str, dict]) -> dict[str, float | None]:
    """per_pattern / one_round of wall time and training MACs; None unless both kinds trained something."""
    one, per = by_kind["one_round"], by_kind["per_pattern"]
    return {key: per[key] / one[key] if per["trials"] and one[key] else None
            for key in ("wall_time", "train_macs_total")}


def compare_data(studies: Sequence[optuna.Study], tolerance: float | None = None) -> dict:
    """`kronsearch compare` as data: the one-round pick, the per-pattern ranking and pick, agreement and compute.

    Trials are grouped by kind over `studies` (a hybrid study contributes to both sides). Each side's
    pick follows one rule (record.tolerance_pick at `tolerance` points, by default the studies'
    search.tolerance), so both strategies are judged on one objective. Compute is summed per study
    (its own per_pattern / one_round ratio) and, with several studies, pooled over them.
    """
    pools: dict[str, list[tuple[str, FrozenTrial]]] = {kind: [] for kind in KINDS}
    for study in studies:
        for trial in study.get_trials(deepcopy=False):
            kind = trial_kind(trial, study_strategy(study))
            if kind in pools:
                pools[kind].append((study.study_name, trial))
    points, notes = _tolerance(studies, tolerance)
    one_round = None
    if (found := _pick(pools["one_round"], points)) is not None:
        study_name, trial = found
        params = trial.params
        one_round = {
            "study": study_name, "trial": trial.number, "val_accuracy": val_accuracy(trial),
            "test_accuracy": metrics(trial).get("test_accuracy"), "final_macs": metrics(trial).get("final_macs"),
            "rank": trial_rank(trial), "lambda2": params.get("lambda2"),
            "selected": {layer: norm_block(b) for layer, b in (metrics(trial).get("selected") or {}).items()},
        }
        if not one_round["selected"]:
            notes.append(f"one-round trial {trial.number} of {study_name} recorded no selected blocks")
    else:
        notes.append("no complete one_round trial: no pick to compare")
    ranking = pattern_ranking(pools["per_pattern"])
    if not ranking:
        notes.append("no complete per_pattern trial: no ranking to compare against")
    tied = [e["label"] for e in ranking[1:] if e["val_accuracy"] == ranking[0]["val_accuracy"]]
    if tied:
        notes.append(f"the per-pattern best ({ranking[0]['label']}) ties on val accuracy with {', '.join(tied)}; "
                     "ties are ranked by fewer training MACs")
    found = _pick(pools["per_pattern"], points)
    pick = None if found is None else next(e for e in ranking if _key(e) == _key(trial_pattern(found[1])))
    blocks = block_ranking(pools)
    compute = _compute(studies, pools, notes)
    curves = [cost_curve(s) for s in studies]
    hashes = {StudyRecord.of(s).space_hash for s in studies} - {None}
    if len(hashes) > 1:
        notes.append("the studies were run on different search spaces (their space_hash differ)")
    notes += malformed_notes(studies)
    return {
        "studies": [s.study_name for s in studies],
        "tolerance": points,
        "one_round": one_round,
        "per_pattern": {"ranking": ranking, "pick": None if found is None or pick is None else {
            "study": found[0], "trial": found[1].number, "val_accuracy": val_accuracy(found[1]),
            "final_macs": metrics(found[1]).get("final_macs"), "label": pick["label"], "position": pick["position"]}},
        "agreement": _agreement(one_round, ranking, pick),
        "blocks": blocks,
        "compute": compute,
        "cost_curves": curves,
        "reach": reach(curves),
        "notes": notes,
    }


def _tolerance(studies: Sequence[optuna.Study], tolerance: float | None) -> tuple[float, list[str]]:
    """The one tolerance both sides are picked at: `tolerance` if given, else the studies' (the first
    study's when they differ, with a note saying so)."""
    if (checked := check_tolerance(tolerance)) is not None:
        return checked, []
    recorded = {s.study_name: study_tolerance(s) for s in studies}
    points = next(iter(recorded.values()), DEFAULT_TOLERANCE)
    if len(set(recorded.values())) <= 1:
        return points, []
    listed = ", ".join(f"{name} {value:g}" for name, value in recorded.items())
    return points, [f"the studies' search.tolerance differ ({listed}); both sides are picked at {points:g} points, "
                    "the first study's; pass --tolerance to choose"]


def _pick(entries: Sequence[tuple[str, FrozenTrial]], tolerance: float) -> tuple[str, FrozenTrial] | None:
    """(study name, trial) of the tolerance pick among `entries`' trials."""
    trial = tolerance_pick((t for _, t in entries), tolerance)
    return None if trial is None else next((name, t) for name, t in entries if t is trial)


def _key(pattern: Mapping) -> tuple:
    """What makes two per_pattern trials the same pattern in the ranking: blocks and rank."""
    return pattern["block"], tuple(pattern["layer_blocks"].items()), pattern["rank"]


def _compute(studies: Sequence[optuna.Study], pools: Mapping[str, list[tuple[str, FrozenTrial]]],
             notes: list[str]) -> dict:
    """Training cost by kind: per study ("by_study", each with its own per_pattern / one_round ratio) and
    over all `studies` (the top-level sums and ratio: one study's own, or "pooled" over several)."""
    def sums(names: Container[str]) -> dict:
        by_kind = {kind: strategy_compute(e for e in pools[kind] if e[0] in names) for kind in KINDS}
        return {**by_kind, "ratio": _ratios(by_kind)}

    pooled = sums({s.study_name for s in studies})
    for kind in KINDS:
        c = pooled[kind]
        if c["without_macs"]:
            which = " and ".join(f"{n} {STATE_WORDS.get(state, state)}"
                                 for state, n in sorted(c["without_macs"].items()))
            notes.append(f"{which} {kind} trial(s) stopped before recording train_macs_total: their training MACs "
                         "are missing from the MACs sums (a lower bound), their wall time is counted")
        sources = sorted({name for name, _ in pools[kind]})
        if len(sources) > 1:
            notes.append(f"the pooled ratio sums the {kind} trials of {len(sources)} studies ({', '.join(sources)}); "
                         "each study's own ratio is in its rows")
    by_study = {s.study_name: sums({s.study_name}) for s in studies}
    return {**pooled, "pooled": len(studies) > 1, "by_study": by_study}


def _agreement(one_round: dict | None, ranking: list[dict], best: dict | None) -> dict | None:
    """Where the one-round pick lands in the per-pattern ranking, and how it compares with the per-pattern
    pick `best` (a ranking entry): blocks only, and ranks separately."""
    if one_round is None or not ranking or best is None:
        return None
    selected, rank = one_round["selected"], one_round["rank"]
    by_blocks = [e for e in ranking if same_blocks(selected, e)]
    exact = [e for e in by_blocks if e["rank"] == rank]
    # Global per_pattern trials give every layer one block, which a per-layer pick only matches when
    # all layers agree; the block most layers picked (what hybrid seeds) is compared as well.
    majority = Counter(selected.values()).most_common(1)[0][0] if selected else None
    global_hits = [e for e in ranking if not e["layer_blocks"] and e["block"] == majority]
    return {
        "majority_block": majority,
        "majority_position": global_hits[0]["position"] if global_hits else None,
        "same_as_best": same_blocks(selected, best),
        "position": by_blocks[0]["position"] if by_blocks else None,
        "position_trials": by_blocks[0]["trials"] if by_blocks else None,
        "patterns": len(ranking),
        "best_label": best["label"],
        "one_round_rank": rank,
        "best_rank": best["rank"],
        "same_rank_as_best": rank == best["rank"],
        "position_with_rank": exact[0]["position"] if exact else None,
    }


def _same_as_pick(one: Mapping | None, entry: Mapping) -> str:
    """'blocks' or 'blocks and rank' when a ranked pattern is the one-round pick, else ''."""
    if one is None or not same_blocks(one["selected"], entry):
        return ""
    return "blocks and rank" if entry["rank"] == one["rank"] else "blocks"


def render_compare(data: Mapping, console: Console, wide: bool = False) -> None:
    """Draw compare_data: the pick per layer, the ranking, the agreement and the compute.

    The default view fits 80 columns (tables one under another, short headers); `wide` puts the pick next
    to the ranking and spells every header out."""
    with narrowed(console, wide):
        _draw_compare(data, console, wide)


def _draw_compare(data: Mapping, console: Console, wide: bool) -> None:
    one, ranking, agreement = data["one_round"], data["per_pattern"]["ranking"], data["agreement"]
    tables = []
    per_pick = data["per_pattern"]["pick"]
    best = next((e for e in ranking if per_pick and e["position"] == per_pick["position"]), None)
    if one is not None:
        pick = Table(title="one-round pick", title_justify="left", caption_justify="left",
                     caption=escape(f"{one['study']} #{one['trial']}: val {fmt_pct(one['val_accuracy'])}, "
                                    f"rank {one['rank']}, final MACs {fmt_count(one['final_macs'])}"))
        pick.add_column("layer")
        pick.add_column("one-round")
        if best is not None:
            pick.add_column("per-pattern pick")
        for layer, block in one["selected"].items():
            cells = [escape(layer), escape(block)]
            if best is not None:
                other = block_for(best, layer) or "-"
                cells.append(escape(other) if other == block else f"[bold red]{escape(other)}[/]")
            pick.add_row(*cells)
        tables.append(pick)
    if ranking:
        tables.append(_ranking_table(ranking, [_same_as_pick(one, entry) for entry in ranking], wide))
    if wide and tables:
        console.print(Columns(tables, padding=(0, 4)))
    for table in [] if wide else tables:
        print_uncut(console, table)
    console.print(f"each side's pick: the cheapest trial (final MACs, then final params) within {data['tolerance']:g} "
                  f"accuracy points of that side's best val accuracy", highlight=False)
    if per_pick is not None:
        console.print(escape(f"per-pattern pick: {per_pick['label']} ({per_pick['study']} #{per_pick['trial']}: val "
                             f"{fmt_pct(per_pick['val_accuracy'])}, final MACs {fmt_count(per_pick['final_macs'])}), "
                             f"position {per_pick['position']} by val accuracy"), highlight=False)
    if agreement is not None:
        where = (f"its blocks rank {agreement['position']} of {agreement['patterns']} patterns trained per pattern "
                 f"(by that pattern's best of {agreement['position_trials']} trial"
                 f"{'' if agreement['position_trials'] == 1 else 's'})" if agreement["position"]
                 else f"its blocks are none of the {agreement['patterns']} patterns trained per pattern")
        same = "equals" if agreement["same_as_best"] else "differs from"
        console.print(f"one-round pick {same} the per-pattern pick ({escape(agreement['best_label'])}) by blocks; "
                      f"{where}", highlight=False)
        together = ('position ' + str(agreement['position_with_rank']) if agreement['position_with_rank']
                    else 'not found')
        console.print(f"rank: one-round r{agreement['one_round_rank']}, per-pattern pick r{agreement['best_rank']} "
                      f"({'same' if agreement['same_rank_as_best'] else 'different'}); blocks and rank together: "
                      f"{together}",
                      highlight=False)
        if agreement["majority_block"] is not None and agreement["majority_position"] is not None:
            console.print(f"the block most layers picked, {agreement['majority_block']}, used for every layer: "
                          f"position {agreement['majority_position']} of {agreement['patterns']}", highlight=False)
    _render_blocks(data, console, wide)
    _render_compute(data["compute"], console, wide)
    render_cost(data["cost_curves"], data["reach"], console, wide)
    for note in data["notes"]:
        console.print(f"note: {escape(note)}", highlight=False)


def _render_blocks(data: Mapping, console: Console, wide: bool) -> None:
    """The blocks ranked by their best trial of either strategy, and where the one-round pick's blocks stand."""
    if not data["blocks"]:
        return
    print_uncut(console, block_table(data["blocks"], wide))
    one = data["one_round"]
    entry = block_position(data["blocks"], one["selected"]) if one is not None else None
    if entry is not None:
        console.print(escape(f"by their best trial of either strategy, the one-round pick's blocks rank "
                             f"{entry['position']} of {len(data['blocks'])} ({trials_behind(entry)})"),
                      highlight=False)


def _ranking_table(ranking: Sequence[Mapping], marks: Sequence[str], wide: bool) -> Table:
    """The per-pattern ranking; narrow: short headers, and trials as "#N" when they all come from one study."""
    one_study = len({entry["study"] for entry in ranking}) == 1 and not wide
    rows = [[str(entry["position"]), entry["label"], fmt_pct(entry["val_accuracy"]), fmt_pct(entry["test_accuracy"]),
             fmt_count(entry["train_macs"]),
             f"#{entry['trial']}" if one_study else f"{entry['study']} #{entry['trial']}",
             str(entry["trials"]), *([mark] if any(marks) else [])] for entry, mark in zip(ranking, marks)]
    columns = [("pos", True), ("pattern", False), ("val acc", True), ("test acc", True),
               ("train MACs" if wide else "MACs", True), ("trial", False), ("n", True),
               *([("same as one-round", False)] if any(marks) else [])]
    title = "per-pattern ranking (best val acc per pattern" + (f", {ranking[0]['study']})" if one_study else ")")
    return report_table(title, columns, rows, wide)


def _render_compute(compute: Mapping, console: Console, wide: bool = False) -> None:
    """A row per study and kind, each study's own per_pattern / one_round ratio where it has both kinds, and
    with several studies their pooled sums and ratio, labelled as such (narrow: short headers, the ratio
    rows labelled "ratio")."""
    groups = list(compute["by_study"].items())
    if compute["pooled"]:
        groups.append((f"pooled over {len(groups)} studies", compute))
    rows, ratios = [], False
    for label, sums in groups:
        kinds = [kind for kind in KINDS if sums[kind]["trials"] or sums[kind]["duplicates"]]
        for index, kind in enumerate(kinds):
            c = sums[kind]
            rows.append([label if index == 0 else "", kind, str(c["trials"]), fmt_seconds(c["wall_time"]),
                         fmt_count(c["train_macs_total"])])
        ratio = sums["ratio"]
        if any(value is not None for value in ratio.values()):
            ratios = True
            rows.append(["", "per_pattern / one_round" if wide else "ratio", "",
                         *(f"{ratio[k]:.2f}x" if ratio[k] is not None else "-"
                           for k in ("wall_time", "train_macs_total"))])
    columns = [("study", False), ("strategy", False), ("trials", True), ("wall time" if wide else "time", True),
               ("train MACs total" if wide else "MACs total", True)]
    print_uncut(console, report_table("training compute (finished trials, duplicates not counted)", columns, rows,
                                      wide))
    if ratios and not wide:
        console.print("ratio: per_pattern / one_round", highlight=False)
