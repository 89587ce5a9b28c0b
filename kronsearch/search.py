"""run_search: space file -> validated Space -> Optuna study -> stages of trials on a backend -> summary.

The study is the record (kronsearch.record). Backends (kronsearch.backends) decide where trials
run; this module only chooses one, runs the strategy's stages on it and summarizes.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from kronsearch.backends.base import Backend, Budget
from kronsearch.backends.local import LocalBackend
from kronsearch.console import progress_console
from kronsearch.record import Strategy, TrialRecord, final_blocks, finished, metrics, study_name, tolerance_pick
from kronsearch.report.plan import render_plan
from kronsearch.report.show import count_blocks
from kronsearch.space import Space, load_space
from kronsearch.storage import STUDIES_DIR, StorageError, default_storage_url, storage_errors
from kronsearch.storage_files import mask_passwords
from kronsearch.strategies import seed_hybrid, seed_params
from kronsearch.study import open_study, recover_dead_trials
from kronsearch.study_owner import StudyHold
from kronsearch.trial_run import check_fit

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class RunSummary:
    """What run_search did."""

    study_names: list[str]
    storage_url: str
    plan_text: str = ""
    completed: int = 0
    message: str = ""
    best: dict = field(default_factory=dict)
    failed: bool = False  # trials finished but none completed (`kronsearch run` exits 1)
    race_note: str = ""  # one-round races that decided without separating evidence (fallback_note), printed last


def make_backend(space: Space) -> Backend:
    """The backend the space asks for (backend.name); Ray is imported only when used."""
    if space.backend["name"] == "ray":
        from kronsearch.backends.ray import RayBackend

        return RayBackend()
    return LocalBackend()


def stages(space: Space) -> list[tuple[str, int, str | None]]:
    """(trial kind, target count, kind the target counts) per stage of the strategy."""
    strategy, trials = space.search["strategy"], space.search["trials"]
    if strategy != Strategy.HYBRID:
        return [(strategy, trials, None)]
    first = space.search["one_round_trials"] or max(1, trials // 3)
    return [(Strategy.ONE_ROUND, first, Strategy.ONE_ROUND), (Strategy.PER_PATTERN, trials, None)]


def run_search(
    space_path: str | os.PathLike,
    *,
    trials: int | None = None,
    strategy: str | None = None,
    storage: str | None = None,
    fresh: bool = False,
    dry_run: bool = False,
    device: str | None = None,
    backend: str | None = None,
    address: str | None = None,
    progress: bool = True,
    studies_dir: str | os.PathLike = STUDIES_DIR,
    console: Console | None = None,
    wide: bool = False,
    artifacts: str | os.PathLike | None = None,
) -> RunSummary:
    """Validate the space file, then run (or resume) its study (dry_run: only its plan, 80 columns wide unless
    `wide`). artifacts: the trials' artifact root, shared by every machine (kronsearch.artifacts; default: the
    space's search.artifacts, else the study's). Raises SpaceError on bad input."""
    started = time.monotonic()
    console = console or progress_console(quiet=not progress)
    space = load_space(space_path, trials=trials, strategy=strategy, device=device, backend=backend,
                       address=address)
    strategy = space.search["strategy"]
    studies_dir = Path(studies_dir)
    url = storage or default_storage_url(space.name, studies_dir)
    names = [study_name(space.name, strategy)]
    check_fit(space)
    if dry_run:
        plan = render_plan(space, wide)
        return RunSummary(names, url, plan_text=plan, message=f"dry run: {space.path} is valid; nothing trained")
    if storage is None:
        try:
            studies_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot create the studies folder {studies_dir}: {err.strerror or err}; "
                               f"run from a writable folder or pass --storage") from err
    with storage_errors(url):
        study = open_study(space, strategy, url, fresh, studies_dir, artifacts)
    with storage_errors(url, "write to"), StudyHold(study):  # against --fresh (study_owner), to its summary
        return _run_study(space, study, url, storage, artifacts, started, console, progress)


def _run_study(space: Space, study: optuna.Study, url: str, storage: str | None, artifacts: str | os.PathLike | None,
               started: float, console: Console, progress: bool) -> RunSummary:
    """run_search's search on its opened study: recover cut-off trials, run the stages, summarize."""
    strategy, names = space.search["strategy"], [study.study_name]
    with storage_errors(url):
        recovered = recover_dead_trials(study)
    if recovered:
        console.print(f"trials {recovered} were interrupted (crash, Ctrl-C or storage error): marked FAIL, "
                      f"their configurations re-queued")
    timeout = space.search["timeout"]
    deadline = started + timeout if timeout else None
    runner = make_backend(space)
    with runner.session(space, console):
        for kind, target, budget_kind in stages(space):
            with storage_errors(url, "write to"):
                if kind == Strategy.PER_PATTERN and strategy == Strategy.HYBRID:
                    source = seed_hybrid(study, space)
                    if source is not None:
                        console.print(describe_seed(space, study.get_trials(deepcopy=False)[source]))
                runner.run(study, space, kind, Budget(target, budget_kind, console, deadline), progress, console)
    done = finished(study)
    summary = RunSummary(names, url, completed=len(done))
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    if not done:  # nothing to pick from, whatever the objectives: the run did no work
        ran_out = deadline is not None and time.monotonic() >= deadline
        summary.failed = True
        summary.message = (f"study {names[0]}: no trial finished: "
                           + (f"search.timeout ({timeout:g} s) ran out before the first trial finished; raise it"
                              if ran_out else "no trial ran") + f". Inspect: kronsearch show {names[0]}")
    elif not complete:
        reason, count = Counter((TrialRecord.of(t).fail_reason or "")[:300] for t in done).most_common(1)[0]
        summary.failed = True
        summary.message = (f"study {names[0]}: no trial completed ({trials_finished(len(done))}); the most common "
                           f"reason ({count} of {len(done)}): {reason or 'none recorded'}. Inspect: kronsearch show "
                           f"{names[0]}")
    elif complete and len(study.directions) == 1:
        tolerance = space.search["tolerance"]
        pick = tolerance_pick(complete, tolerance)
        assert pick is not None  # complete holds a trial
        summary.best = {"trial": pick.number, "val_accuracy": pick.values[0]}
        summary.message = (f"study {names[0]}: {trials_finished(len(done))}; pick (the cheapest within {tolerance:g} "
                           f"points of the best val accuracy {study.best_value:.4f}): trial {pick.number}, blocks "
                           f"{count_blocks(final_blocks(pick)) or 'none recorded'}, val accuracy {pick.values[0]:.4f}. "
                           f"Inspect: kronsearch show {names[0]}")
    else:
        front = [t.number for t in study.best_trials] if complete else []
        summary.message = (f"study {names[0]}: {trials_finished(len(done))}; Pareto front: trials {front}. "
                           f"Inspect: kronsearch show {names[0]}")
    if storage:
        shown = mask_passwords(storage)
        summary.message += f" --storage {shown}" + (" (its password masked)" if shown != storage else "")
    if artifacts:
        summary.message += f" --artifacts {artifacts}"
    summary.race_note = fallback_note(complete, summary.best.get("trial"))
    return summary


def fallback_note(trials: list[FrozenTrial], pick: int | None) -> str:
    """The line a run ends with when one-round races fell back (kronsearch/evidence.py): which races and layers (the
    pick's own, or the race it trained the pick of), what to raise, and the per_pattern alternative; '' when every
    race decided by evidence."""
    decided = {t.number: metrics(t).get("decisions") for t in trials
               if TrialRecord.of(t).duplicate_of is None}  # a duplicate's decisions are its source's race
    races = {n: [layer for layer, d in decisions.items() if d.get("by") == "fallback"]
             for n, decisions in decided.items() if decisions}
    fell = {n: layers for n, layers in races.items() if layers}
    if not fell:
        return ""
    record = next((TrialRecord.of(t) for t in trials if t.number == pick), None)
    source = record and (record.race_of if record.duplicate_of is None else record.duplicate_of)
    race = pick if pick in fell else source if source in fell else min(fell)
    how = (f"whose pick the pick (trial {pick}) trained" if record is None or record.duplicate_of is None
           else f"whose result the pick (trial {pick}) reuses")
    which = f"the pick, trial {race}" if race == pick else f"trial {race}, {how}" if race == source else f"trial {race}"
    return (f"race: {len(fell)} of the study's {len(races)} races did not separate candidates that still learned and "
            f"fell back at the cap (train.race_fallback; {which}, in {', '.join(fell[race])}); raise "
            f"train.select_epochs (or train.epochs) so each candidate trains longer, or run --strategy per_pattern "
            f"to train each block alone")


def describe_seed(space: Space, source: FrozenTrial) -> str:
    """What the hybrid's first per_pattern trial trains, and how it follows from one_round trial `source`."""
    params, selected = seed_params(space, source), final_blocks(source)
    picks = ", ".join(f"{b} on {n}" for b, n in Counter(selected.values()).most_common())
    if "block" in params:
        trains = f"block {params['block']} on every layer"
        why = (f"the block one_round trial {source.number} selected on all {len(selected)} layers"
               if len(set(selected.values())) == 1 else
               f"the block most layers of one_round trial {source.number} selected ({picks}); "
               f"search.per_layer_blocks: true would seed its per-layer selection")
    else:
        trains, why = "one block per layer", f"one_round trial {source.number}'s per-layer selection ({picks})"
    return (f"hybrid: the per_pattern search starts with {trains}, rank {params['rank']}, "
            f"lambda2 {params['lambda2']:.3g}: {why}")


def trials_finished(count: int) -> str:
    """'1 trial finished', '3 trials finished'."""
    return f"{count} trial{'' if count == 1 else 's'} finished"
