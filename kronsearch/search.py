"""run_search: space file -> validated Space -> Optuna study -> trials -> storage.

The study is the record: params, objective values, per-epoch val accuracy as intermediate values,
and user attrs (kind, metrics, config, artifact_dir, fail_reason). The full per-epoch history is in
the trial's artifact folder (history.json), not in the study. Backends only decide where trials run.
"""

from __future__ import annotations

import io
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from rich import get_console
from rich.console import Console
from rich.table import Table

from kronsearch.layers.blocks import format_block, kron_macs, kron_params
from kronsearch.layers.costs import model_cost
from kronsearch.layers.errors import KronsearchError, RunFailure
from kronsearch.space import Space, load_space
from kronsearch.storage import (STUDIES_DIR, StorageError, artifact_dir_record, default_storage_url, storage_errors,
                                storage_reason, study_artifacts_dir, study_name)
from kronsearch.strategies import counts_toward_budget, find_duplicate, finished, seed_hybrid, seed_params, suggest
from kronsearch.study import open_study, recover_dead_trials, worker_alive
from kronsearch.trainer import EpochReport, TrainingDiverged
from kronsearch.trial import TrialSpec, build_trial_model, run_trial, trial_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _NotHandledHere(logging.Filter):
    """Optuna logs every failed trial with a traceback (and then "Trial N failed with value None.").
    kronsearch reports every failure itself, in one line, so none is logged again: a trial failure or
    a skipped trial in the trial summary; anything that stops the run (Ctrl-C, a full disk, a bug) as
    the exception run_search raises, which the CLI prints as its one-line error."""

    dropped = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            self.dropped = str(record.msg).partition(" failed with parameters")[0]  # "Trial N"
            return False
        return not (self.dropped and str(record.msg).startswith(f"{self.dropped} failed with value"))


logging.getLogger("optuna.study._optimize").addFilter(_NotHandledHere())


class TrialFailed(RunFailure):
    """A trial that cannot finish (diverged, out of memory, CUDA error); recorded as FAIL, the study goes on."""


class TrialSkipped(KronsearchError):
    """A trial started after other processes had already met the budget: FAIL with user attr "skipped",
    not trained and not counted."""


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


# Per-layer records the readers need from the study; every other non-scalar metric (layer_sparsity, ...)
# stays in the trial folder's metrics.json, like the per-epoch history (history.json).
STUDY_RECORDS = ("selected", "plan")


def study_metrics(metrics: dict) -> dict:
    """What of a trial's metrics goes into the study: the scalars, the selected blocks and the final plan."""
    return {k: v for k, v in metrics.items() if k in STUDY_RECORDS or v is None or isinstance(v, (int, float, str))}


SHARED_CONFIG = ("space", "seed", "data", "model")


def split_config(config: dict) -> tuple[dict, dict]:
    """(what every trial of a study shares: space, seed, data, model, train but its lambdas; the trial's own part).

    The shared part is stored once, as the study's "trial_config" user attr; report.full_config merges them.
    """
    train = config.get("train") or {}
    own_train = {k: train[k] for k in ("lambda1", "lambda2") if k in train}
    shared = {k: config[k] for k in SHARED_CONFIG if k in config}
    shared["train"] = {k: v for k, v in train.items() if k not in own_train}
    own = {k: v for k, v in config.items() if k not in SHARED_CONFIG and k != "train"}
    return shared, {**own, "train": own_train}


def record(trial: optuna.Trial, metrics: dict, config: dict, artifact_dir: str | None) -> None:
    """Store a finished trial's results as user attrs; per-epoch and per-layer detail is in artifact_dir,
    and the config every trial shares is the study's "trial_config" (see split_config)."""
    shared, own = split_config(config)
    if "trial_config" not in trial.study.user_attrs:
        trial.study.set_user_attr("trial_config", shared)
    trial.set_user_attr("metrics", study_metrics(metrics))
    trial.set_user_attr("config", own)
    trial.set_user_attr("artifact_dir", artifact_dir)


def objective_values(space: Space, metrics: dict) -> list[float]:
    return [float(metrics[o["metric"]]) for o in space.search["objectives"]]


def pruning_reporter(trial: optuna.Trial, single_objective: bool) -> Callable[[EpochReport], None]:
    """Per-epoch callback: report val accuracy to Optuna and prune when the pruner says so."""

    def report(epoch: EpochReport) -> None:
        if not single_objective:
            return
        trial.report(epoch.val_accuracy, epoch.epoch)
        if trial.should_prune():
            trial.set_user_attr("fail_reason", f"pruned after epoch {epoch.epoch} "
                                               f"(val accuracy {epoch.val_accuracy:.4f})")
            raise optuna.TrialPruned()

    return report


def trial_failure(err: BaseException) -> str | None:
    """The reason to record when a trial's exception is a trial failure, None when it is a bug."""
    if isinstance(err, TrainingDiverged):
        return f"diverged: {err}"
    if isinstance(err, StorageError):
        return None  # not the trial's fault: the run stops (see make_objective)
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
            isinstance(err, RuntimeError) and "can't allocate memory" in str(err)):  # torch's CPU allocator
        return f"out of memory: {err}"
    if isinstance(err, RuntimeError) and ("CUDA" in str(err) or "out of memory" in str(err)):
        return f"device error: {err}"
    return None


def begin_trial(trial: optuna.Trial, space: Space, kind: str) -> TrialSpec:
    """Tag a new trial with its kind and sample its pattern (its process is tagged by the storage as
    the trial starts: storage.OwnedTrialStorage)."""
    trial.set_user_attr("kind", kind)
    return suggest(trial, space, kind)


def copy_duplicate(trial: optuna.Trial, duplicate: FrozenTrial) -> list[float]:
    """Make `trial` stand for an earlier trial with the same params; returns the values to tell."""
    trial.set_user_attr("duplicate_of", duplicate.number)
    for key in ("metrics", "config", "artifact_dir"):
        trial.set_user_attr(key, duplicate.user_attrs.get(key))
    return list(duplicate.values)


def trial_artifact_dir(space: Space, folder: Path, number: int) -> Path | None:
    """studies/<search>/<strategy>/trial-<number>, or None when the space does not save weights."""
    return folder / f"trial-{number}" if space.search["save_weights"] else None


def finish_trial(trial: optuna.Trial, space: Space, spec: TrialSpec, metrics: dict,
                 artifact_dir: Path | None) -> list[float]:
    """Record a trained trial's results; returns its objective values."""
    record(trial, metrics, trial_config(space, spec),
           artifact_dir_record(trial.study.study_name, trial.number) if artifact_dir else None)
    return objective_values(space, metrics)


def make_objective(space: Space, kind: str, folder: Path, progress: bool,
                   budget: Budget | None = None) -> Callable[[optuna.Trial], list[float]]:
    """The Optuna objective of the local backend: suggest, dedupe, train, record.

    With a budget, a trial that starts when other processes have already claimed the budget is
    skipped (TrialSkipped). A Ctrl-C or a storage failure (a full disk while saving weights or
    recording results) marks the trial "interrupted" (re-queued on resume) and stops the run.
    """
    objective = _make_objective(space, kind, folder, progress, budget)

    def interruptible(trial: optuna.Trial) -> list[float]:
        try:
            return objective(trial)
        except KeyboardInterrupt:
            _mark_interrupted(trial, "stopped by Ctrl-C (SIGINT)")
            raise
        except StorageError as err:
            _mark_interrupted(trial, str(err))
            raise
        except optuna.exceptions.StorageInternalError as err:  # a full disk or a lost database while recording
            _mark_interrupted(trial, f"storage error: {storage_reason(err)}")
            raise

    return interruptible


def _mark_interrupted(trial: optuna.Trial, why: str) -> None:
    try:
        trial.set_user_attr("interrupted", why)
    except Exception:  # noqa: BLE001 - the storage itself may be what failed; the run stops anyway
        pass


def _make_objective(space: Space, kind: str, folder: Path, progress: bool,
                    budget: Budget | None) -> Callable[[optuna.Trial], list[float]]:
    single = len(space.search["objectives"]) == 1
    # The trainer's live progress bar draws on stdout; piped, it would only leave a blank line per trial.
    bar = progress and get_console().is_terminal

    def objective(trial: optuna.Trial) -> list[float]:
        spec = begin_trial(trial, space, kind)
        if budget is not None and budget.surplus(trial.study, trial.number):
            trial.set_user_attr("skipped", "not trained: other processes had already met the budget")
            raise TrialSkipped(f"trial {trial.number} skipped")
        duplicate = find_duplicate(trial.study, trial, kind)
        if duplicate is not None:
            return copy_duplicate(trial, duplicate)
        artifact_dir = trial_artifact_dir(space, folder, trial.number)
        try:
            metrics, _ = run_trial(space, spec, artifact_dir, pruning_reporter(trial, single), bar)
        except Exception as err:
            reason = trial_failure(err)
            if reason is None:
                raise
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason) from err
        return finish_trial(trial, space, spec, metrics, artifact_dir)

    return objective


def describe(trial: FrozenTrial) -> str:
    """One line for the live summary."""
    if trial.state != TrialState.COMPLETE:
        attrs = trial.user_attrs
        reason = attrs.get("fail_reason") or attrs.get("skipped") or attrs.get("interrupted") or ""
        return f"trial {trial.number} {trial.state.name.lower()}{': ' + reason if reason else ''}"
    m = trial.user_attrs["metrics"]
    picked = m["selected"] or {layer: p["block"] for layer, p in m["plan"].items()}
    blocks = ", ".join(f"{b} on {n}" for b, n in sorted(Counter(picked.values()).items()))
    return (f"trial {trial.number} {trial.user_attrs['kind']}: val {m['val_accuracy']:.4f}, "
            f"sparsity {m['block_sparsity']:.2f}, train MACs {m['train_macs']:,}, blocks [{blocks}], "
            f"{m['wall_time']:.1f}s" + (f" (same as trial {trial.user_attrs['duplicate_of']})"
                                         if "duplicate_of" in trial.user_attrs else ""))


class Budget:
    """Stops a study once `target` trials of `kind` are finished, counting every process's trials.

    Processes sharing a study on one host neither overshoot nor leave work undone: after each trial
    a process stops when finished trials plus trials running in other live processes reach the
    target (a running trial is claimed by its process), and a trial that still starts beyond the
    target (two processes deciding at the same moment: the higher trial number loses) is skipped
    untrained (TrialSkipped). If a claimed trial then fails without a reason (its process crashed),
    the study ends short and the next run finishes it. Trials running on other hosts are not
    counted, so processes on several hosts may overshoot by one trial each.
    """

    def __init__(self, target: int, kind: str | None, console: Console) -> None:
        self.target, self.kind, self.console = target, kind, console

    def remaining(self, study: optuna.Study) -> int:
        return max(self.target - len(finished(study, self.kind)), 0)

    def claimed(self, study: optuna.Study, below: int | None = None) -> int:
        """Finished trials plus trials running in live processes on this host (numbered below `below`)."""
        host, count = socket.gethostname(), 0
        for t in study.get_trials(deepcopy=False):  # one snapshot
            if counts_toward_budget(t, self.kind):
                count += 1
            elif (t.state == TrialState.RUNNING and (below is None or t.number < below)
                  and (self.kind is None or t.user_attrs.get("kind", self.kind) == self.kind)):
                count += worker_alive(t, host) is True  # every trial is tagged with its process as it starts
        return count

    def surplus(self, study: optuna.Study, number: int) -> bool:
        """Whether trial `number`, just started, is beyond the target (see the class docstring)."""
        return self.claimed(study, below=number) >= self.target

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.console.print(describe(trial))
        if self.claimed(study) >= self.target:
            study.stop()


def run_local(study: optuna.Study, space: Space, kind: str, target: int, budget_kind: str | None,
              progress: bool, console: Console) -> None:
    """Run trials in this process until the budget is met (other processes may share the study)."""
    budget = Budget(target, budget_kind, console)
    remaining = budget.remaining(study)
    if remaining == 0:
        return
    folder = study_artifacts_dir(study)
    study.optimize(make_objective(space, kind, folder, progress, budget), n_trials=remaining,
                   timeout=space.search["timeout"], catch=(TrialFailed, TrialSkipped), callbacks=[budget],
                   gc_after_trial=True)


def stages(space: Space) -> list[tuple[str, int, str | None]]:
    """(trial kind, target count, kind the target counts) per stage of the strategy."""
    strategy, trials = space.search["strategy"], space.search["trials"]
    if strategy != "hybrid":
        return [(strategy, trials, None)]
    first = space.search["one_round_trials"] or max(1, trials // 3)
    return [("one_round", first, "one_round"), ("per_pattern", trials, None)]


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
) -> RunSummary:
    """Validate the space file, then run (or resume) its study. Raises SpaceError on bad input."""
    console = console or Console(stderr=True, quiet=not progress, soft_wrap=True)
    space = load_space(space_path, trials=trials, strategy=strategy, device=device, backend=backend,
                       address=address)
    strategy = space.search["strategy"]
    studies_dir = Path(studies_dir)
    url = storage or default_storage_url(space.name, studies_dir)
    names = [study_name(space.name, strategy)]
    if dry_run:
        plan = render_plan(space)
        return RunSummary(names, url, plan_text=plan, message=f"dry run: {space.path} is valid; nothing trained")
    if storage is None:
        try:
            studies_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot create the studies folder {studies_dir}: {err.strerror or err}; "
                               f"run from a writable folder or pass --storage") from err
    with storage_errors(url):
        study = open_study(space, strategy, url, fresh, studies_dir)
        recovered = recover_dead_trials(study)
    if recovered:
        console.print(f"trials {recovered} were interrupted (crash, Ctrl-C or storage error): marked FAIL, "
                      f"their configurations re-queued")
    if space.backend["name"] == "ray":
        from kronsearch.backends.ray import run_ray

        runner = run_ray
    else:
        runner = run_local
    for kind, target, budget_kind in stages(space):
        with storage_errors(url, "write to"):
            if kind == "per_pattern" and strategy == "hybrid":
                source = seed_hybrid(study, space)
                if source is not None:
                    console.print(describe_seed(space, study.get_trials(deepcopy=False)[source]))
            runner(study, space, kind, target, budget_kind, progress, console)
    done = finished(study)
    summary = RunSummary(names, url, completed=len(done))
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    if done and not complete:
        reason, count = Counter(t.user_attrs.get("fail_reason", "")[:300] for t in done).most_common(1)[0]
        summary.failed = True
        summary.message = (f"study {names[0]}: no trial completed ({trials_finished(len(done))}); the most common "
                           f"reason ({count} of {len(done)}): {reason or 'none recorded'}. Inspect: kronsearch show "
                           f"{names[0]}")
    elif complete and len(study.directions) == 1:
        best = study.best_trial
        summary.best = {"trial": best.number, "val_accuracy": best.values[0]}
        summary.message = (f"study {names[0]}: {trials_finished(len(done))}; best trial {best.number} "
                           f"val accuracy {best.values[0]:.4f}. Inspect: kronsearch show {names[0]}")
    else:
        front = [t.number for t in study.best_trials] if complete else []
        summary.message = (f"study {names[0]}: {trials_finished(len(done))}; Pareto front: trials {front}. "
                           f"Inspect: kronsearch show {names[0]}")
    if storage:
        summary.message += f" --storage {storage}"
    return summary


def describe_seed(space: Space, source: FrozenTrial) -> str:
    """What the hybrid's first per_pattern trial trains, and how it follows from one_round trial `source`."""
    params, selected = seed_params(space, source), source.user_attrs["metrics"]["selected"]
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


def render_plan(space: Space) -> str:
    """The dry-run plan: decomposed layers, their candidate blocks and counts, as text."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=False)
    console.print(f"search {space.name!r}: {space.search['strategy']}, {space.search['trials']} trials, "
                  f"objectives {', '.join(o['metric'] for o in space.search['objectives'])}, "
                  f"backend {space.backend['name']}")
    console.print(f"data {space.data['name']} {tuple(space.input_shape)} -> {space.num_classes} classes; "
                  f"model {space.model['name']} {space.model['options'] or ''}")
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
    dense = build_trial_model(space, TrialSpec("per_pattern", rank, 0.0, 0.0))
    one_round = build_trial_model(space, TrialSpec("one_round", rank, 0.0, 0.0, candidates={
        glob: [format_block(b) for b in blocks] for glob, blocks in space.blocks.items()}))
    for label, model in (("dense model", dense), ("one-round model (all candidates)", one_round)):
        cost = model_cost(model, space.input_shape).total
        console.print(f"{label}: {cost.params:,} training params, {cost.macs:,} MACs per sample")
    return buffer.getvalue()
