"""The trial life cycle every backend shares, and the small interface a backend implements.

A trial goes: start (tag its kind, sample its pattern) -> skip (the budget was met meanwhile) |
duplicate (an earlier complete trial had these params: reuse its results) | train -> finish (record
the results, tell the objective values) or failure (a trial failure is recorded as FAIL and the
search goes on; anything else stops it). Backends only decide where the training runs; every
study write goes through kronsearch.record. Like Ray Tune's searchers, backends import this base
and the base imports none of them.
"""

from __future__ import annotations

import socket
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from kronsearch import record
from kronsearch.layers.errors import KronsearchError, RunFailure
from kronsearch.processes import worker_alive
from kronsearch.record import RACES, Strategy, TrialRecord
from kronsearch.space import Space
from kronsearch.storage import StorageError, artifact_dir_record
from kronsearch.strategies import find_duplicate, reuse, seed_source, shared_race, suggest
from kronsearch.trainer import EpochReport, TrainingDiverged
from kronsearch.trial_run import TrialSpec, trial_config

SKIPPED = "not trained: other processes had already met the budget"


class TrialFailed(RunFailure):
    """A trial that cannot finish (diverged, out of memory, CUDA error); recorded as FAIL, the study goes on."""


class TrialSkipped(KronsearchError):
    """A trial started after other processes had already met the budget: FAIL with "skipped",
    not trained and not counted."""


class Backend(ABC):
    """Where trials run. One instance serves every stage of a `kronsearch run` (a hybrid has two)."""

    name: str

    @contextmanager
    def session(self, space: Space, console: Console) -> Iterator[None]:
        """Held around all stages of one run (e.g. one Ray session); nothing by default."""
        yield

    @abstractmethod
    def run(self, study: optuna.Study, space: Space, kind: str, budget: Budget, progress: bool,
            console: Console) -> None:
        """Run trials of `kind` until `budget` is met (other processes may share the study)."""


@dataclass
class Started:
    """A started trial: its pattern, and what to do with it (train it unless skipped or a duplicate)."""

    spec: TrialSpec
    skipped: bool = False
    duplicate_values: list[float] | None = None  # the reused results of an earlier complete trial


def start_trial(trial: optuna.Trial, space: Space, kind: str, budget: Budget | None) -> Started:
    """start -> skip | duplicate | train (see the module doc); the skip is recorded, not told. A one_round trial
    trains a plan of a finished race of its rank where search.races shares one (strategies.shared_race)."""
    record.start(trial, kind)
    spec = suggest(trial, space, kind)
    if budget is not None and budget.surplus(trial.study, trial.number):
        record.skip(trial, SKIPPED)
        return Started(spec, skipped=True)
    duplicate = find_duplicate(trial.study, trial, kind) or seed_source(trial.study, trial, spec)
    if duplicate is not None:
        return Started(spec, duplicate_values=record.copy_duplicate(trial, duplicate))
    source = shared_race(trial.study, space, spec.rank) if spec.races else None
    return Started(spec if source is None else reuse(trial, spec, source, space.search["tolerance"]))


def trial_artifact_dir(space: Space, folder: Path, number: int) -> Path | None:
    """studies/<search>/<strategy>/trial-<number>, or None when the space does not save weights."""
    return folder / f"trial-{number}" if space.search["save_weights"] else None


def finish_trial(trial: optuna.Trial, space: Space, spec: TrialSpec, metrics: dict,
                 artifact_dir: Path | None, ray_worker: str | None = None) -> list[float]:
    """Record a trained trial's results; returns its objective values. A trial that reused a race records the
    plan it trained as `selected`, as the race's trial records its pick."""
    if spec.race_of is not None:
        metrics = {**metrics, "selected": spec.plan}
    record.save_results(trial, metrics, trial_config(space, spec),
                        artifact_dir_record(trial.study, trial.number) if artifact_dir else None,
                        ray_worker)
    return [float(metrics[o["metric"]]) for o in space.search["objectives"]]


class PlanSteps:
    """The step at which a trial reports an epoch to its study's pruner: the epoch of the plan it trains, from 1, so
    step k is k epochs of one plan's training in every trial. A one-round trial's race epochs are not reported
    (None): a race is never pruned, and its trial is judged after it, by its winner's training.

    Every trial of a study is so judged on one curve: per_pattern trials, one-round trials that train a plan of a
    race, and racing trials after their race. Measured against curves kept apart by kind (racing, reusing,
    per_pattern; docs/benchmarks/search-cost.md, ten seeds): a hybrid study's MACs fell from 1.56x to 1.25x
    per_pattern's on the MLP and from 1.35x to 1.11x on the digits ViT, a one_round study's from 1.49x to 1.43x and
    1.32x to 1.16x, their picks as accurate at 1x and 2x; apart, the first three trials of a kind were never pruned.

    Where every trial races (a one_round study with search.races: per_trial) the curves are alike, and every epoch
    is reported as it comes, the race's included, so races are pruned against each other: with its races off the
    curve, the MLP's study cost 2.79x per_pattern's MACs instead of 1.85x (five seeds).
    """

    def __init__(self, space: Space) -> None:
        self.raced = 0  # epochs of the trial's race so far
        self.every_trial_races = (space.search["strategy"], space.search["races"]) == (Strategy.ONE_ROUND, RACES[2])

    def __call__(self, epoch: EpochReport) -> int | None:
        if self.every_trial_races:
            return epoch.epoch
        if epoch.phase == "select":
            self.raced = epoch.epoch
            return None
        return epoch.epoch - self.raced


def should_prune(trial: optuna.Trial, final: bool) -> bool:
    """The study's pruner's verdict after an epoch already reported, asked before the run's last epoch only: a
    trial whose training is over has spent its MACs, and pruning it would only throw its result away (measured:
    a one_round study of search_cost.py's MLP pruned one trial of eight after its last epoch, a third of its MACs)."""
    return not final and trial.should_prune()


def trial_failure(err: BaseException) -> str | None:
    """The reason to record when a trial's exception is a trial failure, None when it is a bug."""
    if isinstance(err, TrainingDiverged):
        return f"diverged: {err}"
    if isinstance(err, StorageError):
        return None  # not the trial's fault: the run stops
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
            isinstance(err, RuntimeError) and "can't allocate memory" in str(err)):  # torch's CPU allocator
        return f"out of memory: {err}"
    if isinstance(err, RuntimeError) and ("CUDA" in str(err) or "out of memory" in str(err)):
        return f"device error: {err}"
    return None


def describe(trial: FrozenTrial) -> str:
    """One line for the live summary."""
    rec = TrialRecord.of(trial)
    if trial.state != TrialState.COMPLETE:
        return f"trial {trial.number} {trial.state.name.lower()}{': ' + rec.reason if rec.reason else ''}"
    m = record.metrics(trial)
    blocks = ", ".join(f"{b} on {n}" for b, n in sorted(Counter(record.final_blocks(trial).values()).items()))
    return (f"trial {trial.number} {rec.kind}: val {m['val_accuracy']:.4f}, "
            f"sparsity {m['block_sparsity']:.2f}, train MACs {m['train_macs']:,}, blocks [{blocks}], "
            f"{m['wall_time']:.1f}s" + (f" (same as trial {rec.duplicate_of})" if rec.duplicate_of is not None else "")
            + (f" (from trial {rec.race_of}'s race)" if rec.race_of is not None else ""))


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

    def __init__(self, target: int, kind: str | None, console: Console, deadline: float | None = None) -> None:
        self.target, self.kind, self.console, self.deadline = target, kind, console, deadline

    def time_left(self) -> float | None:
        """Seconds until the run's `search.timeout`, counted from the run's start (None: no timeout).

        Counted from the start of the run, not of each stage, so a timeout shorter than the run's set-up
        starts no trial and hybrid's two stages share one timeout."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def timed_out(self) -> bool:
        """Whether the timeout has passed (no trial may start); says so on the console."""
        left = self.time_left()
        if left is not None and left <= 0:
            self.console.print("search.timeout reached: no more trials start")
            return True
        return False

    def remaining(self, study: optuna.Study) -> int:
        return max(self.target - len(record.finished(study, self.kind)), 0)

    def claimed(self, study: optuna.Study, below: int | None = None) -> int:
        """Finished trials plus trials running in live processes on this host (numbered below `below`)."""
        host, count = socket.gethostname(), 0
        for t in study.get_trials(deepcopy=False):  # one snapshot
            if record.counts_toward_budget(t, self.kind):
                count += 1
            elif (t.state == TrialState.RUNNING and (below is None or t.number < below)
                  and (self.kind is None or (TrialRecord.of(t).kind or self.kind) == self.kind)):
                count += worker_alive(t, host) is True  # every trial is tagged with its process as it starts
        return count

    def surplus(self, study: optuna.Study, number: int) -> bool:
        """Whether trial `number`, just started, is beyond the target (see the class docstring)."""
        return self.claimed(study, below=number) >= self.target

    def line(self, study: optuna.Study, trial: FrozenTrial) -> str:
        """describe(trial), then where the study stands: '[3/8 done, best val 0.9132]'."""
        done = record.finished(study, self.kind)
        values = [v for t in done if t.state == TrialState.COMPLETE and (v := record.val_accuracy(t)) is not None]
        return f"{describe(trial)} [{len(done)}/{self.target} done{f', best val {max(values):.4f}' if values else ''}]"

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.console.print(self.line(study, trial), markup=False)
        if self.claimed(study) >= self.target:
            study.stop()
