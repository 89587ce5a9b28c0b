"""Reading finished studies: `show` (trials, best trial or Pareto front) and `compare` (one-round vs per-pattern).

The data functions (`show_data`, `compare_data` and the trial helpers) return plain dicts and lists,
JSON-able as they are (what `--format json` prints); `render_show` and `render_compare` draw them as
rich tables. Everything is read from the storage contract of `kronsearch run`: trial user attrs
"kind", "metrics", "history", "config", "duplicate_of", "fail_reason" and study user attr "objectives".
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.columns import Columns
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kronsearch.patterns import format_block, parse_block
from kronsearch.storage import split_study_name

KINDS = ("one_round", "per_pattern")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
SCALAR_METRICS = ("val_accuracy", "test_accuracy", "block_sparsity", "train_params", "train_macs",
                  "train_macs_total", "final_params", "final_macs", "inference_nonzeros", "wall_time")

# ----------------------------------------------------------------------------- trial helpers


def metrics(trial: FrozenTrial) -> dict:
    """The trial's "metrics" user attr ({} when it has none, e.g. a failed trial)."""
    return trial.user_attrs.get("metrics") or {}


def study_strategy(study: optuna.Study) -> str | None:
    """one_round, per_pattern or hybrid: the "strategy" user attr, else the part after ':' in the name."""
    return study.user_attrs.get("strategy") or split_study_name(study.study_name)[1]


def trial_kind(trial: FrozenTrial, strategy: str | None = None) -> str | None:
    """one_round or per_pattern: the "kind" user attr, else the study's strategy, else the params."""
    kind = trial.user_attrs.get("kind")
    if kind in KINDS:
        return kind
    if strategy in KINDS:
        return strategy
    if "lambda1" in trial.params:
        return "one_round"
    if any(p == "block" or p.startswith("block:") for p in trial.params):
        return "per_pattern"
    return None


def val_accuracy(trial: FrozenTrial) -> float | None:
    """metrics.val_accuracy, else the first objective value (always val_accuracy by contract)."""
    value = metrics(trial).get("val_accuracy")
    if value is None and trial.values:
        value = trial.values[0]
    return value


def duration(trial: FrozenTrial) -> float | None:
    """Seconds the trial cost: metrics.wall_time, else start-to-end; a reused duplicate costs its own time."""
    wall = metrics(trial).get("wall_time")
    if wall is not None and trial.user_attrs.get("duplicate_of") is None:
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
    declared = study.user_attrs.get("objectives")
    if isinstance(declared, list) and len(declared) == len(study.directions):
        return [dict(o) for o in declared]
    return [{"metric": "val_accuracy" if i == 0 else f"objective_{i}", "direction": d.name.lower()}
            for i, d in enumerate(study.directions)]


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (one objective; [] if none completed) or the Pareto front (several), by number."""
    if len(study.directions) == 1:
        try:
            return [study.best_trial]
        except ValueError:  # no complete trial
            return []
    return sorted(study.best_trials, key=lambda t: t.number)


def default_trial(study: optuna.Study) -> FrozenTrial:
    """The best trial, or the Pareto-front trial with the highest val_accuracy. ValueError if none completed."""
    front = best_trials(study)
    if not front:
        raise ValueError(f"study {study.study_name!r} has no complete trial")
    return max(front, key=lambda t: (_or(val_accuracy(t), -math.inf), -t.number))


def best_one_round(studies: Iterable[optuna.Study]) -> tuple[optuna.Study, FrozenTrial] | None:
    """The complete one_round-kind trial with the highest val_accuracy over `studies`, with its study."""
    found = [(s, t) for s in studies for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if trial_kind(t, study_strategy(s)) == "one_round"]
    if not found:
        return None
    return max(found, key=lambda st: (_or(val_accuracy(st[1]), -math.inf), -st[1].number))


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


# ----------------------------------------------------------------------------- show


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


# ----------------------------------------------------------------------------- compare


def trial_pattern(trial: FrozenTrial) -> dict:
    """A per_pattern trial's pattern: global "block" param or per-layer "block:<layer>" params, plus rank."""
    layer_blocks = {p.split(":", 1)[1]: norm_block(v) for p, v in trial.params.items() if p.startswith("block:")}
    block = trial.params.get("block")
    return {"block": None if block is None else norm_block(block), "layer_blocks": dict(sorted(layer_blocks.items())),
            "rank": trial_rank(trial)}


def block_for(pattern: Mapping, layer: str) -> str | None:
    """The block a pattern gives `layer`: its per-layer block, else the global one."""
    return pattern["layer_blocks"].get(layer, pattern["block"])


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
        pattern = trial_pattern(trial)
        key = (pattern["block"], tuple(pattern["layer_blocks"].items()), pattern["rank"])
        groups.setdefault(key, []).append((study_name, trial))
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
    ranking.sort(key=lambda e: (-e["val_accuracy"], _or(e["train_macs"], math.inf), e["label"]))
    for position, entry in enumerate(ranking, 1):
        entry["position"] = position
    return ranking


def strategy_compute(entries: Iterable[tuple[str, FrozenTrial]]) -> dict:
    """Training cost of one strategy: wall time and train_macs_total summed over its finished trials.

    Trials that reused another trial's result ("duplicate_of") trained nothing and are not counted.
    """
    finished = [t for _, t in entries if t.state in FINISHED]
    counted = [t for t in finished if t.user_attrs.get("duplicate_of") is None]
    macs = [metrics(t).get("train_macs_total") for t in counted]
    return {
        "trials": len(counted), "duplicates": len(finished) - len(counted),
        "wall_time": sum(_or(duration(t), 0.0) for t in counted),
        "train_macs_total": sum(m for m in macs if m is not None),
        "trials_without_macs": sum(m is None for m in macs),
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def compare_data(studies: Sequence[optuna.Study]) -> dict:
    """`kronsearch compare` as data: the one-round pick, the per-pattern ranking, agreement and compute.

    Trials are pooled by kind over `studies` (a hybrid study contributes to both sides). The ratios
    are per_pattern / one_round: how many times more the per-pattern search cost.
    """
    pools: dict[str, list[tuple[str, FrozenTrial]]] = {kind: [] for kind in KINDS}
    for study in studies:
        for trial in study.get_trials(deepcopy=False):
            kind = trial_kind(trial, study_strategy(study))
            if kind in pools:
                pools[kind].append((study.study_name, trial))
    notes = []
    one_round = None
    if (found := best_one_round(studies)) is not None:
        study, trial = found
        params = trial.params
        one_round = {
            "study": study.study_name, "trial": trial.number, "val_accuracy": val_accuracy(trial),
            "test_accuracy": metrics(trial).get("test_accuracy"), "rank": trial_rank(trial),
            "lambda1": params.get("lambda1"), "lambda2": params.get("lambda2"),
            "selected": {layer: norm_block(b) for layer, b in (metrics(trial).get("selected") or {}).items()},
        }
        if not one_round["selected"]:
            notes.append(f"one-round trial {trial.number} of {study.study_name} recorded no selected blocks")
    else:
        notes.append("no complete one_round trial: no pick to compare")
    ranking = pattern_ranking(pools["per_pattern"])
    if not ranking:
        notes.append("no complete per_pattern trial: no ranking to compare against")
    tied = [e["label"] for e in ranking[1:] if e["val_accuracy"] == ranking[0]["val_accuracy"]]
    if tied:
        notes.append(f"the per-pattern best ({ranking[0]['label']}) ties on val accuracy with {', '.join(tied)}; "
                     "ties are ranked by fewer training MACs")
    compute = {kind: strategy_compute(pools[kind]) for kind in KINDS}
    for kind, c in compute.items():
        if c["trials_without_macs"]:
            notes.append(f"{c['trials_without_macs']} finished {kind} trial(s) recorded no train_macs_total "
                         "(not in the MACs sum)")
    hashes = {s.user_attrs.get("space_hash") for s in studies} - {None}
    if len(hashes) > 1:
        notes.append("the studies were run on different search spaces (their space_hash differ)")
    return {
        "studies": [s.study_name for s in studies],
        "one_round": one_round,
        "per_pattern": {"ranking": ranking},
        "agreement": _agreement(one_round, ranking),
        "compute": {**compute, "ratio": {
            key: _ratio(compute["per_pattern"][key], compute["one_round"][key])
            for key in ("wall_time", "train_macs_total")}},
        "notes": notes,
    }


def _agreement(one_round: dict | None, ranking: list[dict]) -> dict | None:
    """Where the one-round pick lands in the per-pattern ranking: blocks only, and ranks separately."""
    if one_round is None or not ranking:
        return None
    selected, rank = one_round["selected"], one_round["rank"]
    by_blocks = [e for e in ranking if same_blocks(selected, e)]
    exact = [e for e in by_blocks if e["rank"] == rank]
    best = ranking[0]
    # Global per_pattern trials give every layer one block, which a per-layer pick only matches when
    # all layers agree; the block most layers picked (what hybrid seeds) is compared as well.
    majority = Counter(selected.values()).most_common(1)[0][0] if selected else None
    global_hits = [e for e in ranking if not e["layer_blocks"] and e["block"] == majority]
    return {
        "majority_block": majority,
        "majority_position": global_hits[0]["position"] if global_hits else None,
        "same_as_best": same_blocks(selected, best),
        "position": by_blocks[0]["position"] if by_blocks else None,
        "patterns": len(ranking),
        "best_label": best["label"],
        "one_round_rank": rank,
        "best_rank": best["rank"],
        "same_rank_as_best": rank == best["rank"],
        "position_with_rank": exact[0]["position"] if exact else None,
    }


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
    """{'rank': 1, 'lambda1': 0.001} -> 'rank=1 lambda1=0.001'; per-layer blocks compacted."""
    layer_blocks = {p.split(":", 1)[1]: norm_block(v) for p, v in params.items() if p.startswith("block:")}
    parts = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in params.items() if not k.startswith("block:")]
    if layer_blocks:
        parts.append(f"blocks={describe_blocks(layer_blocks)}")
    return " ".join(parts)


def _note(row: Mapping) -> str:
    if row["duplicate_of"] is not None:
        return f"= #{row['duplicate_of']}"
    reason = row["fail_reason"] or ""
    return reason if len(reason) <= 40 else reason[:39] + "…"


# ----------------------------------------------------------------------------- rendering


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


def render_compare(data: Mapping, console: Console) -> None:
    """Draw compare_data: the pick per layer next to the ranking, the agreement and the compute."""
    one, ranking, agreement = data["one_round"], data["per_pattern"]["ranking"], data["agreement"]
    tables = []
    if one is not None:
        best = ranking[0] if ranking else None
        pick = Table(title="one-round pick", title_justify="left", caption_justify="left",
                     caption=escape(f"{one['study']} #{one['trial']}: val {fmt_pct(one['val_accuracy'])}, "
                                    f"rank {one['rank']}"))
        pick.add_column("layer")
        pick.add_column("one-round")
        if best is not None:
            pick.add_column("per-pattern best")
        for layer, block in one["selected"].items():
            cells = [escape(layer), escape(block)]
            if best is not None:
                other = block_for(best, layer) or "-"
                cells.append(escape(other) if other == block else f"[bold red]{escape(other)}[/]")
            pick.add_row(*cells)
        tables.append(pick)
    if ranking:
        rank_table = Table(title="per-pattern ranking (best val acc per pattern)", title_justify="left")
        for column, justify in (("pos", "right"), ("pattern", "left"), ("val acc", "right"), ("test acc", "right"),
                                ("train MACs", "right"), ("trial", "left"), ("n", "right"), ("", "left")):
            rank_table.add_column(column, justify=justify)
        for entry in ranking:
            mark = ""
            if one is not None and same_blocks(one["selected"], entry):
                mark = "<- one-round blocks" + (" and rank" if entry["rank"] == one["rank"] else "")
            rank_table.add_row(str(entry["position"]), escape(entry["label"]), fmt_pct(entry["val_accuracy"]),
                               fmt_pct(entry["test_accuracy"]), fmt_count(entry["train_macs"]),
                               escape(f"{entry['study']} #{entry['trial']}"), str(entry["trials"]), mark)
        tables.append(rank_table)
    if tables:
        console.print(Columns(tables, padding=(0, 4)))
    if agreement is not None:
        where = (f"position {agreement['position']} of {agreement['patterns']}" if agreement["position"]
                 else f"not among the {agreement['patterns']} per-pattern patterns")
        same = "equals" if agreement["same_as_best"] else "differs from"
        console.print(f"one-round pick {same} the per-pattern best ({escape(agreement['best_label'])}) by blocks; "
                      f"its blocks rank at {where}", highlight=False)
        console.print(f"rank: one-round r{agreement['one_round_rank']}, per-pattern best r{agreement['best_rank']} "
                      f"({'same' if agreement['same_rank_as_best'] else 'different'}); blocks and rank together: "
                      f"{'position ' + str(agreement['position_with_rank']) if agreement['position_with_rank'] else 'not found'}",
                      highlight=False)
        if agreement["majority_block"] is not None and agreement["majority_position"] is not None:
            console.print(f"the block most layers picked, {agreement['majority_block']}, used for every layer: "
                          f"position {agreement['majority_position']} of {agreement['patterns']}", highlight=False)
    _render_compute(data["compute"], console)
    for note in data["notes"]:
        console.print(f"note: {escape(note)}", highlight=False)


def _render_compute(compute: Mapping, console: Console) -> None:
    table = Table(title="training compute (finished trials, duplicates not counted)", title_justify="left")
    for column in ("strategy", "trials", "wall time", "train MACs total"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for kind in KINDS:
        c = compute[kind]
        table.add_row(kind, str(c["trials"]), fmt_seconds(c["wall_time"]), fmt_count(c["train_macs_total"]))
    ratio = compute["ratio"]
    table.add_row("per_pattern / one_round", "",
                  *(f"{ratio[k]:.2f}x" if ratio[k] is not None else "-" for k in ("wall_time", "train_macs_total")))
    console.print(table)
