"""Ray Tune's side of the Ray backend: a Searcher over the study's ask/tell, a scheduler that prunes
with the study's pruner, and the function each trial runs on a worker.

Why not Ray's own OptunaSearch: it records a trial that a scheduler stopped as COMPLETE. Tune gives
a Searcher no way to tell a stopped trial from a finished one (both arrive as on_trial_complete with
the last result), so here the scheduler reports every epoch to Optuna, asks the pruner, and marks
the trials it stops; the searcher then tells PRUNED. The driver stays the only writer of the study.

Failures: a trial failure (diverged, out of memory; backends.base.trial_failure) is reported by the
trial itself and recorded as FAIL without a retry; a storage error is reported and stops the search;
anything else (a crashed worker, a bug) is retried by Tune (FailureConfig, backend.max_retries),
then recorded as FAIL with the last error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from rich.console import Console

from kronsearch import record
from kronsearch.backends.base import (
    Budget,
    PlanSteps,
    finish_trial,
    should_prune,
    start_trial,
    trial_artifact_dir,
    trial_failure,
)
from kronsearch.processes import worker_id
from kronsearch.progress import epoch_line, planned_epochs, racing_summary
from kronsearch.pruners import trailing_note
from kronsearch.space import Space
from kronsearch.storage import StorageError
from kronsearch.study import ask, fail_stale
from kronsearch.trial_run import TrialSpec, run_trial

CRASH_HOOK_ENV = "KRONSEARCH_TEST_CRASH_TRIAL"
FAIL_KEY, STORAGE_KEY, FINAL_KEY = "fail_reason", "storage_error", "metrics_json"  # a trial's last report


def _crash_hook(search: str, number: int) -> None:
    """Test-only: kill this worker when CRASH_HOOK_ENV="<search>:<trial number>:<file>" names this trial
    (each attempt appends its pid to <file> first), as a segfault would."""
    value = os.environ.get(CRASH_HOOK_ENV)
    if not value:
        return
    name, number_text, log = value.split(":", 2)
    if name == search and number_text == str(number):
        with open(log, "a", encoding="utf-8") as file:
            file.write(f"{os.getpid()}\n")
        os._exit(1)


def run_tune_trial(config: dict, space: Space) -> None:
    """One trial on a Ray worker: report every epoch, then the metrics (or the failure) as the last report."""
    _crash_hook(space.name, config["number"])
    cpus, gpus = config["resources"]
    torch.set_num_threads(max(1, int(cpus)))
    if gpus == 0 and space.train["device"] == "auto" and torch.cuda.is_available():
        space = dataclasses.replace(space, train={**space.train, "device": "cpu"})

    steps = PlanSteps(space)

    def on_epoch(epoch) -> None:
        tune.report({"epoch": epoch.epoch, "step": steps(epoch), "val_accuracy": epoch.val_accuracy,
                     "train_macs_total": epoch.train_macs_total, "phase": epoch.phase,
                     "racing": racing_summary(epoch), "final": epoch.final})

    try:
        metrics, _ = run_trial(space, TrialSpec(**config["spec"]), config["artifact_dir"], on_epoch, progress=False)
    except StorageError as err:
        tune.report({STORAGE_KEY: str(err)})
        return
    except Exception as err:
        reason = trial_failure(err)
        if reason is None:
            raise  # a bug or a lost worker: Tune retries it
        tune.report({FAIL_KEY: reason})
        return
    tune.report({FINAL_KEY: json.dumps(metrics, default=str), "worker": worker_id()})


@dataclass
class InFlight:
    """A trial Tune runs, and the twins (same params, asked meanwhile) that take its outcome."""

    trial: optuna.Trial
    spec: TrialSpec
    artifact_dir: Path | None
    twins: list[optuna.Trial] = field(default_factory=list)
    reported: set[int] = field(default_factory=set)  # epochs told to Optuna (a retried attempt reports them again)
    started: float = field(default_factory=time.monotonic)  # when Tune got it (progress lines' elapsed time)


class StudySearcher(Searcher):
    """Tune Searcher over the study's ask/tell, with the trial life cycle of backends.base."""

    def __init__(self, study: optuna.Study, space: Space, kind: str, budget: Budget, folder: Path,
                 console: Console, deadline: float | None, progress: bool = False) -> None:
        super().__init__(metric=None, mode=None)  # no Tune metric: a failure report carries none
        self.study, self.space, self.kind, self.budget = study, space, kind, budget
        self.folder, self.console, self.deadline = folder, console, deadline
        self.single = len(space.search["objectives"]) == 1
        self.progress = progress
        self.running: dict[str, InFlight] = {}
        self.pruned: dict[str, dict] = {}  # Tune trial id -> the epoch report at which the pruner stopped it
        self.errors: dict[str, str] = {}  # the last error of each failed attempt (StudyScheduler)
        self.storage_error: str | None = None

    def __getstate__(self) -> dict:
        """Tune pickles its searcher into the experiment folder (tuner.pkl) and never restores it here (the
        study is the state); the console and the budget's console hold locks, which cannot be pickled."""
        return {k: v for k, v in self.__dict__.items() if k not in ("console", "budget")}

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Nothing to save: the study is the searcher's state, and a rerun resumes from it, not from Tune."""

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]  # Searcher.FINISHED is a str
        """Ask the study for the next trial to train; duplicates and twins are told without training."""
        while True:
            if self.storage_error is not None or (self.deadline is not None and time.monotonic() > self.deadline):
                return Searcher.FINISHED
            if self.budget.claimed(self.study) >= self.budget.target:
                return Searcher.FINISHED
            fail_stale(self.study)  # trials of dead hosts: FAIL, configuration re-queued once (heartbeat storages)
            trial = ask(self.study)
            started = start_trial(trial, self.space, self.kind, self.budget)
            if started.skipped:  # another process took the last slot meanwhile
                self.tell(trial)
                return Searcher.FINISHED
            if started.duplicate_values is not None:
                self.tell(trial, started.duplicate_values)
                continue
            leader = next((job for job in self.running.values() if job.trial.params == trial.params), None)
            if leader is not None:
                leader.twins.append(trial)
                continue
            artifact_dir = trial_artifact_dir(self.space, self.folder, trial.number)
            self.running[trial_id] = InFlight(trial, started.spec, artifact_dir)
            resources = self.space.backend["resources_per_trial"]
            return {"spec": asdict(started.spec), "number": trial.number,
                    "artifact_dir": str(artifact_dir) if artifact_dir else None,
                    "resources": [resources["cpu"], resources["gpu"]]}

    def report(self, trial_id: str, result: dict) -> bool:
        """Report one epoch to Optuna; True when the study's pruner stops the trial (StudyScheduler)."""
        job = self.running.get(trial_id)
        if job is None or "epoch" not in result:
            return False
        step, value = result.get("step"), float(result["val_accuracy"])
        if self.progress:  # a plain line per epoch, as the local backend prints off a terminal
            epochs = planned_epochs(self.space.train_config(), job.spec.races)
            self.console.print(epoch_line(job.trial.number, int(result["epoch"]), epochs, result.get("phase", "train"),
                                          value, result.get("racing", ""), time.monotonic() - job.started),
                               highlight=False)
        if not self.single or step is None:  # a race's epochs are not on the pruning curve (base.PlanSteps)
            return False
        if step not in job.reported:
            job.trial.report(value, step)
            job.reported.add(step)
        if should_prune(job.trial, bool(result.get("final"))):
            self.pruned[trial_id] = result
            return True
        return False

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tell the study how the trial ended (and its twins the same)."""
        job = self.running.pop(trial_id, None)
        if job is None:
            return
        result = result or {}
        if trial_id in self.pruned:
            last = self.pruned.pop(trial_id)
            record.prune(job.trial, int(last["epoch"]), float(last["val_accuracy"]), int(last["train_macs_total"]),
                         trailing_note(job.trial.study, job.trial, int(last["step"]), float(last["val_accuracy"])))
            frozen = self.tell(job.trial, state=TrialState.PRUNED)
        elif error:
            frozen = self.fail(job.trial, self.errors.pop(trial_id, "error: no error recorded"))
        elif STORAGE_KEY in result:
            self.storage_error = result[STORAGE_KEY]
            record.interrupt(job.trial, result[STORAGE_KEY])
            frozen = self.tell(job.trial)
            record.requeue(self.study, frozen)
        elif FAIL_KEY in result:
            frozen = self.fail(job.trial, result[FAIL_KEY])
        elif FINAL_KEY in result:
            metrics = json.loads(result[FINAL_KEY])
            values = finish_trial(job.trial, self.space, job.spec, metrics, job.artifact_dir,
                                  ray_worker=result.get("worker"))
            frozen = self.tell(job.trial, values if all(map(math.isfinite, values)) else None)
        else:
            frozen = self.fail(job.trial, "error: the trial ended without reporting its metrics")
        for twin in job.twins:
            if frozen.state == TrialState.COMPLETE:
                self.tell(twin, record.copy_duplicate(twin, frozen))
            else:
                record.fail(twin, f"same params as trial {frozen.number}: {record.TrialRecord.of(frozen).reason}")
                self.tell(twin, state=frozen.state)

    def tell(self, trial: optuna.Trial, values: list[float] | None = None,
             state: TrialState | None = None) -> FrozenTrial:
        frozen = self.study.tell(trial, values, state=state or (TrialState.COMPLETE if values is not None
                                                                 else TrialState.FAIL))
        self.console.print(self.budget.line(self.study, frozen), markup=False)
        return frozen

    def fail(self, trial: optuna.Trial, reason: str) -> FrozenTrial:
        record.fail(trial, reason)
        return self.tell(trial)

    def abandon(self, why: str) -> list[int]:
        """Trials Tune left unfinished (Ctrl-C, the timeout, a driver error): FAIL "interrupted", re-queued."""
        numbers = []
        for job in self.running.values():
            for trial in (job.trial, *job.twins):
                try:
                    if self.study._storage.get_trial(trial._trial_id).state.is_finished():  # noqa: SLF001
                        continue
                    record.interrupt(trial, why)
                    record.requeue(self.study, self.study.tell(trial, state=TrialState.FAIL))
                except Exception:  # noqa: BLE001 - e.g. the storage failed; recover_dead_trials re-queues on resume
                    continue
                numbers.append(trial.number)
        self.running.clear()
        return numbers


class StudyScheduler(FIFOScheduler):
    """First in, first out; every reported epoch goes to the study's pruner, which may stop the trial."""

    def __init__(self, searcher: StudySearcher, attempts: int) -> None:
        super().__init__()
        self.searcher, self.attempts = searcher, attempts

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return TrialScheduler.STOP if self.searcher.report(trial.trial_id, result) else TrialScheduler.CONTINUE

    def on_trial_error(self, tune_controller, trial) -> None:
        """Keep the error of the attempt for the searcher (Tune reads it from the trial's error file)."""
        # trial.get_error() reads Tune's storage, which gets the error file only later: read the local copy
        text = Path(trial.error_file).read_text(errors="replace").strip() if trial.error_file else ""
        lines = [line for line in text.splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "unknown error")
        died = any(word in text for word in ("ActorDiedError", "WorkerCrashedError", "RayActorError",
                                             "NodeDiedError", "The actor is dead"))
        self.searcher.errors[trial.trial_id] = (f"worker died ({self.attempts} attempts): " if died
                                                else f"error ({self.attempts} attempts): ") + last.strip()[:500]
        super().on_trial_error(tune_controller, trial)
