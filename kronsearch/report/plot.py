"""PNG plots of studies: optimization history, accuracy vs training MACs (Pareto front), best accuracy vs
cumulative cost, selection trajectories.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend
state), so the functions are safe to call from scripts, notebooks and tests alike.

    from kronsearch.report.plot import plot_studies
    result = plot_studies(load_studies("vit"), "plots/")   # result.paths, result.notes
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial, TrialState

from kronsearch.atomic_write import write_atomic
from kronsearch.layers.errors import BadInput
from kronsearch.record import (
    TrialRecord,
    best_one_round,
    metrics,
    split_study_name,
    study_strategy,
    trial_kind,
    val_accuracy,
)
from kronsearch.report.cost import cost_curve
from kronsearch.report.trials import malformed_notes, norm_block, trial_history
from kronsearch.study_files import inside_study_folder, study_folders

MARKERS = {"one_round": "o", "per_pattern": "s", None: "^"}
PRUNED_MARKERS = {"one_round": "x", "per_pattern": "+", None: "1"}  # the study's colour, one legend entry per kind


@dataclass
class PlotResult:
    """The PNGs written, and why any plot was skipped."""

    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """The PNG written atomically (atomic_write: a FIFO or device at `path` is refused, never replaced)."""
    FigureCanvasAgg(fig)
    return write_atomic(path, lambda f: fig.savefig(f, dpi=120, format="png"))


def _complete(study: optuna.Study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _known_val(trial: FrozenTrial) -> float:
    """The val accuracy of a trial its caller kept for having one (val_accuracy is None for the others)."""
    value = val_accuracy(trial)
    assert value is not None
    return value


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points no other point beats: lower-or-equal cost and higher-or-equal accuracy."""
    front = []
    for i, (cost, acc) in enumerate(points):
        dominated = any(c <= cost and a >= acc and (c, a) != (cost, acc) for c, a in points)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def plot_history(studies: Sequence[optuna.Study], path: str | os.PathLike) -> Path | None:
    """Val accuracy of every complete trial by trial number, with each study's best-so-far line.

    Pruned trials show their last reported val accuracy as crosses in their study's colour, one marker per
    kind of trial (a hybrid study has both). None if nothing completed.
    """
    if not any(_complete(s) for s in studies):
        return None
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for index, study in enumerate(studies):
        color = f"C{index}"
        strategy = study_strategy(study)
        done = sorted((t for t in _complete(study) if val_accuracy(t) is not None), key=lambda t: t.number)
        for kind in sorted({trial_kind(t, strategy) for t in done}, key=str):
            xs = [t.number for t in done if trial_kind(t, strategy) == kind]
            ys = [_known_val(t) for t in done if trial_kind(t, strategy) == kind]
            label = study.study_name if kind in (None, strategy) else f"{study.study_name} ({kind})"
            ax.scatter(xs, ys, marker=MARKERS.get(kind, "o"), color=color, alpha=0.7, s=28, label=label)
        best, xs, ys = -math.inf, [], []
        for t in done:
            best = max(best, _known_val(t))
            xs.append(t.number)
            ys.append(best)
        if xs:
            ax.step(xs, ys, where="post", color=color, linewidth=1.6, label=f"{study.study_name} best so far")
        pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if t.intermediate_values]
        for kind in sorted({trial_kind(t, strategy) for t in pruned}, key=str):
            of_kind = [t for t in pruned if trial_kind(t, strategy) == kind]
            label = study.study_name if kind in (None, strategy) else f"{study.study_name} ({kind})"
            ax.scatter([t.number for t in of_kind],
                       [t.intermediate_values[max(t.intermediate_values)] for t in of_kind],
                       marker=PRUNED_MARKERS.get(kind, "x"), color=color, alpha=0.5, s=26,
                       label=f"{label} pruned (last epoch)")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("val accuracy")
    ax.set_title("Optimization history")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def plot_pareto(studies: Sequence[optuna.Study], path: str | os.PathLike) -> Path | None:
    """Val accuracy against training MACs per sample for every complete trial; the front is highlighted.

    The front is the set of trials no other trial beats on both (fewer or equal MACs, higher or equal
    accuracy), over all the given studies. None if no complete trial recorded both numbers.
    """
    points, labels = [], []
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    for index, study in enumerate(studies):
        strategy = study_strategy(study)
        for kind in ("one_round", "per_pattern", None):
            trials = [t for t in _complete(study) if trial_kind(t, strategy) == kind
                      and metrics(t).get("train_macs") is not None and val_accuracy(t) is not None]
            if not trials:
                continue
            xs = [metrics(t)["train_macs"] for t in trials]
            ys = [_known_val(t) for t in trials]
            label = study.study_name if kind in (None, strategy) else f"{study.study_name} ({kind})"
            ax.scatter(xs, ys, marker=MARKERS[kind], color=f"C{index}", alpha=0.6, s=30, label=label)
            points += list(zip(xs, ys))
            tag = f"{split_study_name(study.study_name)[1] or study.study_name} " if len(studies) > 1 else ""
            labels += [f"{tag}#{t.number}" for t in trials]
    if not points:
        return None
    front = pareto_front(points)
    fx, fy = [points[i][0] for i in front], [points[i][1] for i in front]
    ax.step(fx, fy, where="post", color="crimson", linewidth=1.2, alpha=0.8)
    ax.scatter(fx, fy, s=90, facecolors="none", edgecolors="crimson", linewidths=1.6, label="Pareto front")
    tags: dict[tuple[float, float], list[str]] = {}
    for i in front:  # identical points (a reused duplicate) share one label
        tags.setdefault(points[i], []).append(labels[i])
    for point, names in tags.items():
        ax.annotate(", ".join(names), point, textcoords="offset points", xytext=(6, 4), fontsize=7, color="crimson")
    xs = [p[0] for p in points]
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("training MACs per sample (forward)")
    ax.set_ylabel("val accuracy")
    ax.set_title("Accuracy vs training compute")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def plot_cost(studies: Sequence[optuna.Study], path: str | os.PathLike) -> Path | None:
    """Best val accuracy so far against cumulative training MACs (left) and wall time (right), one step
    line per study in trial order (report.cost_curve): which strategy reaches an accuracy cheaper.
    None if no study has a complete trial."""
    curves = [c for c in (cost_curve(s) for s in studies) if any(p["best"] is not None for p in c["points"])]
    if not curves:
        return None
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for index, curve in enumerate(curves):
        points = [p for p in curve["points"] if p["best"] is not None]
        for ax, key in zip(axes, ("train_macs", "wall_time")):
            ax.step([p[key] for p in points], [p["best"] for p in points], where="post", color=f"C{index}",
                    marker="o", markersize=3, linewidth=1.6, label=curve["study"] if key == "wall_time" else None)
    axes[0].set_xlabel("cumulative training MACs")
    axes[1].set_xlabel("cumulative wall time (s)")
    axes[0].set_ylabel("best val accuracy so far")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("Best accuracy against the search's cost")
    _legend_outside(axes[1])
    return _save(fig, path)


def _legend_outside(ax) -> None:
    """The legend right of the axes, where it cannot cover a point."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def one_round_trial(studies: Sequence[optuna.Study], number: int) -> tuple[optuna.Study, FrozenTrial]:
    """Trial `number` of the one study given, which must be a one_round trial (BadInput otherwise)."""
    if len(studies) != 1:
        names = ", ".join(s.study_name for s in studies)
        raise BadInput(f"--trial needs one study; {len(studies)} given ({names}): pick one as N:S")
    study = studies[0]
    trials = study.get_trials(deepcopy=False)
    trial = next((t for t in trials if t.number == number), None)
    if trial is None:
        raise BadInput(f"study {study.study_name!r} has no trial {number} "
                       f"(it has {len(trials)} trials, numbered from 0)")
    kind = trial_kind(trial, study_strategy(study))
    if kind != "one_round":
        raise BadInput(f"trial {number} of {study.study_name!r} is a {kind} trial; only one_round trials race "
                       f"candidates, so only they have a selection plot")
    return study, trial


def plot_selection(studies: Sequence[optuna.Study], path: str | os.PathLike, trial: int | None = None) -> Path | None:
    """For one-round trial `trial` of the one study given (by default the best one-round trial), per layer: the
    accuracies that decided its race (each candidate's estimate ± its standard error at its last check, the
    kept one drawn thick, titled with how it was decided) and each candidate block's ||W_k||_F per epoch.

    Like the paper's Figure 3 for the norms: the selected block is drawn thick. None if there is no complete
    one_round trial or it recorded neither estimates nor candidate norms. For a trial that reused another's race
    (search.races), the plot is that race's.
    """
    found = best_one_round(studies) if trial is None else one_round_trial(studies, trial)
    if found is None:
        return None
    study, picked = found
    source = TrialRecord.of(picked).race_of  # a trial that trained another's race's plan: that race decided it
    picked = next((t for t in study.get_trials(deepcopy=False) if t.number == source), picked)
    epochs = [e for e in trial_history(study, picked) if e.get("candidate_norms")]
    decisions = {layer: d for layer, d in (metrics(picked).get("decisions") or {}).items() if d.get("estimates")}
    layers = list(dict.fromkeys([*decisions, *(layer for e in epochs for layer in e["candidate_norms"])]))
    if not layers:
        return None
    selected = {layer: norm_block(b) for layer, b in (metrics(picked).get("selected") or {}).items()}
    panels = [(kind, layer) for layer in layers for kind in ("estimates", "norms")
              if (kind == "estimates" and layer in decisions)
              or (kind == "norms" and any(layer in e["candidate_norms"] for e in epochs))]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    width = max(6.0, 3.4 * cols)
    fig = Figure(figsize=(width, 2.6 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (kind, layer) in zip(axes.flat, panels):
        if kind == "estimates":
            _draw_estimates(ax, layer, decisions[layer], selected.get(layer))
        else:
            _draw_norms(ax, layer, epochs, selected.get(layer))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in picked.params.items())
    title = textwrap.fill(f"{study.study_name} trial {picked.number}: {params}", width=int(width * 11))
    fig.suptitle(f"The race's estimates and the candidate norms during selection\n{title}", fontsize=10)
    return _save(fig, path)


def _draw_estimates(ax, layer: str, decision: dict, chosen: str | None) -> None:
    """Each candidate's accuracy ± se at its last check (points), the kept one thick; how the layer decided."""
    estimates = decision["estimates"]
    for index, (block, e) in enumerate(estimates.items()):
        kept = norm_block(block) == chosen
        ax.errorbar([index], [e["accuracy"]], yerr=[e.get("se", 0.0)], fmt="o", color=f"C{index}", capsize=3,
                    markersize=6 if kept else 4, elinewidth=2.4 if kept else 1.0,
                    label=f"{block} (selected)" if kept else block)
    ax.set_xticks(range(len(estimates)), list(estimates), fontsize=7)
    ax.set_xlim(-0.6, len(estimates) - 0.4)
    ax.set_title(f"{layer}: {decision.get('block')} by {decision.get('by')}", fontsize=9)
    ax.set_ylabel("accuracy alone (%)", fontsize=8)


def _draw_norms(ax, layer: str, epochs: list[dict], chosen: str | None) -> None:
    """Each candidate's ||W_k||_F per epoch, the selected one thick."""
    blocks = list(dict.fromkeys(b for e in epochs for b in e["candidate_norms"].get(layer, {})))
    for index, block in enumerate(blocks):
        points = [(e["epoch"], e["candidate_norms"][layer][block]) for e in epochs
                  if block in e["candidate_norms"].get(layer, {})]
        kept = norm_block(block) == chosen
        ax.plot([p[0] for p in points], [p[1] for p in points], color=f"C{index}", marker="o",
                markersize=3, linewidth=2.4 if kept else 1.0, label=f"{block} (selected)" if kept else block)
    ax.set_title(layer, fontsize=9)
    ax.set_xlabel("epoch", fontsize=8)
    _epoch_ticks(ax, sorted({e["epoch"] for e in epochs}))
    ax.set_ylabel("||W_k||_F", fontsize=8)
    ax.legend(fontsize=7)


def _epoch_ticks(ax, epochs: list[int]) -> None:
    """Whole epochs on the x axis; a lone epoch gets room on both sides."""
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    if len(epochs) <= 12:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_prefix(studies: Sequence[optuna.Study]) -> str:
    """File name prefix: the search's name, whether one or all of its studies are plotted (so `plot vit` and
    `plot vit:one_round` replace the same files); 'studies' for several searches. Always a plain name in out_dir."""
    searches = {split_study_name(s.study_name)[0] for s in studies}
    prefix = searches.pop() if len(searches) == 1 else "studies"
    # a study's name is data (any tool may have named it): no path separator or leading dot reaches a file name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", prefix).lstrip(".") or "study"


def plot_studies(studies: Sequence[optuna.Study], out_dir: str | os.PathLike, prefix: str | None = None,
                 trial: int | None = None) -> PlotResult:
    """Write <prefix>-history.png, -pareto.png, -cost.png and -selection.png (of one-round trial `trial`,
    by default the best) into out_dir."""
    if trial is not None:
        one_round_trial(studies, trial)  # a bad --trial is refused before any file is written
    out_dir = Path(out_dir)
    inside = next((found for s in studies if (found := inside_study_folder(out_dir / "x.png", study_folders(s)))), None)
    if inside is not None:
        raise BadInput(f"--out {out_dir} lies inside {inside}, a study's artifact folder: plots never write there; "
                       f"give another folder")
    prefix = prefix or plot_prefix(studies)
    result = PlotResult()
    names = ", ".join(s.study_name for s in studies)
    for kind, draw, why in (
        ("history", plot_history, f"no complete trial in {names}"),
        ("pareto", plot_pareto, f"no complete trial with val accuracy and training MACs in {names}"),
        ("cost", plot_cost, f"no complete trial in {names}"),
        ("selection", partial(plot_selection, trial=trial),
         f"no one_round trial with race estimates or candidate norms in {names}"),
    ):
        path = draw(studies, out_dir / f"{prefix}-{kind}.png")
        if path is None:
            result.notes.append(f"skipped {kind} plot: {why}")
        else:
            result.paths.append(path)
    result.notes += malformed_notes(studies)
    return result
