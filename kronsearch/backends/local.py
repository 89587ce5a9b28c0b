"""The local backend: trials run one after another in this process, through Optuna's study.optimize.

Several `kronsearch run` processes may share one study (see backends.base.Budget).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import optuna
from rich import get_console
from rich.console import Console

from kronsearch import record
from kronsearch.backends.base import (
    Backend,
    Budget,
    PlanSteps,
    TrialFailed,
    TrialSkipped,
    finish_trial,
    should_prune,
    start_trial,
    trial_artifact_dir,
    trial_failure,
)
from kronsearch.errors import STOPPED_BY_CTRL_C, STOPPED_BY_SIGTERM, Terminated
from kronsearch.progress import BarStatus, EpochLines, StudyClock, planned_epochs
from kronsearch.pruners import trailing_note
from kronsearch.space import Space
from kronsearch.storage import StorageError, storage_reason
from kronsearch.study_files import study_folder
from kronsearch.trainer import EpochReport
from kronsearch.trial_run import run_trial


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


def pruning_reporter(trial: optuna.Trial, space: Space) -> Callable[[EpochReport], None]:
    """Per-epoch callback: report val accuracy to Optuna at the epoch's step (base.PlanSteps) and prune when the
    pruner says so (base.should_prune). Multi-objective studies report nothing: Optuna cannot prune them."""
    single_objective = len(space.search["objectives"]) == 1

    steps = PlanSteps(space)

    def report(epoch: EpochReport) -> None:
        if not single_objective or (step := steps(epoch)) is None:
            return
        trial.report(epoch.val_accuracy, step)
        if should_prune(trial, epoch.final):
            record.prune(trial, epoch.epoch, epoch.val_accuracy, epoch.train_macs_total,
                         trailing_note(trial.study, trial, step, epoch.val_accuracy))
            raise optuna.TrialPruned()

    return report


def make_objective(space: Space, kind: str, folder: Path, progress: bool, budget: Budget | None = None,
                   console: Console | None = None) -> Callable[[optuna.Trial], list[float]]:
    """The Optuna objective: start -> skip | duplicate | train -> finish (backends.base).

    With a budget, a trial that starts when other processes have already claimed the budget is
    skipped (TrialSkipped). A Ctrl-C or a storage failure (a full disk while saving weights or
    recording results) marks the trial "interrupted" (re-queued on resume) and stops the run. With
    progress, a terminal shows the trainer's live bar; other output gets a plain line per epoch on `console`.
    """
    # The trainer's live progress bar draws on stdout; piped, it would only leave a blank line per trial.
    bar = progress and get_console().is_terminal

    def objective(trial: optuna.Trial) -> list[float]:
        started = start_trial(trial, space, kind, budget)
        if started.skipped:
            raise TrialSkipped(f"trial {trial.number} skipped")
        if started.duplicate_values is not None:
            return started.duplicate_values
        artifact_dir = trial_artifact_dir(space, folder, trial.number)
        try:
            on_epoch = pruning_reporter(trial, space)
            epochs = planned_epochs(space.train_config(), started.spec.races)
            clock = StudyClock.of(trial.study, trial.number, budget.target, budget.kind) if budget else None
            if progress and not bar and console is not None:
                on_epoch = EpochLines(console, trial.number, epochs, then=on_epoch, study=clock)
            status = BarStatus(trial.number, epochs, clock) if bar else None
            metrics, _ = run_trial(space, started.spec, artifact_dir, on_epoch, bar, status)
        except Exception as err:
            reason = trial_failure(err)
            if reason is None:
                raise
            record.fail(trial, reason)
            raise TrialFailed(reason) from err
        return finish_trial(trial, space, started.spec, metrics, artifact_dir)

    def interruptible(trial: optuna.Trial) -> list[float]:
        try:
            return objective(trial)
        except KeyboardInterrupt as err:
            why = STOPPED_BY_SIGTERM if isinstance(err, Terminated) else STOPPED_BY_CTRL_C
            record.interrupt(trial, why)
            raise
        except StorageError as err:
            record.interrupt(trial, str(err))
            raise
        except optuna.exceptions.StorageInternalError as err:  # a full disk or a lost database while recording
            record.interrupt(trial, f"storage error: {storage_reason(err)}")
            raise
        except (TrialFailed, TrialSkipped, optuna.TrialPruned):
            raise  # recorded already
        except Exception as err:  # a bug, or data the trainer cannot use: the run stops as for Ctrl-C, with the reason
            record.interrupt(trial, f"stopped by an error: {type(err).__name__}: {err}")
            raise

    return interruptible


class LocalBackend(Backend):
    """Trials in this process, one at a time."""

    name = "local"

    def run(self, study: optuna.Study, space: Space, kind: str, budget: Budget, progress: bool,
            console: Console) -> None:
        remaining = budget.remaining(study)
        if remaining == 0 or budget.timed_out():
            return
        folder = study_folder(study, create=space.search["save_weights"])
        study.optimize(make_objective(space, kind, folder, progress, budget, console), n_trials=remaining,
                       timeout=budget.time_left(), catch=(TrialFailed, TrialSkipped), callbacks=[budget],
                       gc_after_trial=True)
