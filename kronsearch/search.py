"""run_search: space file -> validated Space -> Optuna study -> trials -> storage.

The study is the record: params, objective values, per-epoch intermediate values, and user attrs
(kind, metrics, history, config, artifact_dir, fail_reason). Backends only decide where trials run.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

import kronsearch
from kronsearch.costs import model_cost
from kronsearch.patterns import format_block, kron_macs, kron_params
from kronsearch.space import Space, SpaceError, load_space
from kronsearch.storage import (STUDIES_DIR, StorageError, artifacts_dir, default_storage_url, open_storage,
                                storage_errors, study_name)
from kronsearch.strategies import counts_toward_budget, find_duplicate, finished, seed_hybrid, suggest
from kronsearch.trainer import EpochReport, TrainingDiverged
from kronsearch.trial import TrialSpec, build_trial_model, run_trial, trial_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _NotHandledHere(logging.Filter):
    """Optuna logs every failed trial with a traceback (and then "Trial N failed with value None.").
    Failures kronsearch reports itself are not logged again: a trial failure or a skipped trial (the
    one-line trial summary), Ctrl-C and a StorageError (the CLI's one-line error)."""

    dropped = ""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (TrialFailed, TrialSkipped, KeyboardInterrupt, StorageError)):
            self.dropped = str(record.msg).partition(" failed with parameters")[0]  # "Trial N"
            return False
        return not (self.dropped and str(record.msg).startswith(f"{self.dropped} failed with value"))


logging.getLogger("optuna.study._optimize").addFilter(_NotHandledHere())


class TrialFailed(Exception):
    """A trial that cannot finish (diverged, out of memory, CUDA error); recorded as FAIL, the study goes on."""


class TrialSkipped(Exception):
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


def worker_id() -> str:
    """host:pid of this process, stored on every trial it runs (to detect trials of dead processes)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc; None where unknown).

    Stored with a trial's worker as user attr "worker_started", so a recycled pid (a restarted
    container's `kronsearch run` is often pid 1 again) is not mistaken for the trial's process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # fields 3... of proc_pid_stat(5); starttime is field 22
    if len(fields) <= 19 or fields[0] in ("Z", "X"):
        return None  # a zombie is dead too, only not reaped yet
    return fields[19]


def worker_alive(trial: FrozenTrial, host: str | None = None) -> bool | None:
    """Whether the process running `trial` is alive; None when that cannot be told (another host, no worker).

    This process's own pid counts as dead unless the start time says it is this very process: a
    trial is only asked about while this process runs none (recovery) or is excluded by the caller.
    """
    worker_host, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
    if worker_host != (host or socket.gethostname()) or not pid.isdigit():
        return None
    pid = int(pid)
    if Path("/proc/self/stat").is_file():  # Linux: a pid and its start time identify a process
        started, now = trial.user_attrs.get("worker_started"), process_started(pid)
        return now is not None and (started == now if started is not None else pid != os.getpid())
    return pid != os.getpid() and _alive(pid)


def make_sampler(space: Space) -> optuna.samplers.BaseSampler:
    kind = space.search["sampler"]
    if kind == "random":
        return PerTrialSeedSampler(lambda seed: optuna.samplers.RandomSampler(seed=seed), space.seed)
    if kind == "nsga2":
        return PerTrialSeedSampler(lambda seed: optuna.samplers.NSGAIISampler(seed=seed), space.seed)
    return PerTrialSeedSampler(lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True), space.seed)


class PerTrialSeedSampler(optuna.samplers.BaseSampler):
    """A sampler whose random draws for trial k are seeded by (seed, k).

    A sampler seeded once replays its draws in every process: a resumed run would sample the first
    run's configurations again (answered as duplicates, wasting the budget), and two processes
    sharing a study would sample, and train, the same ones. Seeding each trial by its number keeps
    a fresh run reproducible while every trial, whichever process runs it, gets its own draws.
    The samplers are stateless but for their random state (history comes from the study).
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._samplers: dict[int, optuna.samplers.BaseSampler] = {}

    def _for(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number not in self._samplers:
            while len(self._samplers) >= 64:  # trials in flight at once (one, but for ask/tell backends)
                self._samplers.pop(next(iter(self._samplers)))
            seed = int(np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0])
            self._samplers[trial.number] = self._make(seed)
        return self._samplers[trial.number]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: optuna.distributions.BaseDistribution) -> object:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: list[float] | None) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._samplers.pop(trial.number, None)


def make_pruner(space: Space) -> optuna.pruners.BasePruner:
    kind = space.search["pruner"]
    if kind == "none" or len(space.search["objectives"]) > 1:
        return optuna.pruners.NopPruner()  # Optuna cannot prune multi-objective studies
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=space.train["epochs"])
    # no verdict before a third of the selection epochs: early val accuracy says little about the end
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, space.train["epochs"] // 3))


def open_study(space: Space, strategy: str, storage_url: str, fresh: bool, studies_dir: Path) -> optuna.Study:
    """Create or resume the study of (space, strategy); refuse to resume from a changed space file."""
    storage = open_storage(storage_url)
    name = study_name(space.name, strategy)
    folder = artifacts_dir(space.name, strategy, studies_dir)
    if fresh:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass
        shutil.rmtree(folder, ignore_errors=True)
    directions = [o["direction"] for o in space.search["objectives"]]
    study = optuna.create_study(study_name=name, storage=storage, directions=directions, load_if_exists=True,
                                sampler=make_sampler(space), pruner=make_pruner(space))
    stored = study.user_attrs.get("space_hash")
    if stored is not None and stored != space.sha256:
        raise SpaceError(f"{space.path}: the space file changed since study {name!r} was created in "
                         f"{storage_url}; re-run with --fresh to start over, or give the search a new name")
    if [d.name.lower() for d in study.directions] != directions:
        raise SpaceError(f"{space.path}: search.objectives differ from study {name!r}'s; use --fresh")
    if stored is None:
        attrs = {"space_hash": space.sha256, "space_path": str(Path(space.path).resolve()), "space": space.raw,
                 "strategy": strategy, "objectives": space.search["objectives"],
                 "kronsearch_version": kronsearch.__version__, "artifacts_dir": str(folder.resolve())}
        for key, value in attrs.items():
            study.set_user_attr(key, value)
    return study


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Re-queue the configurations of trials that were cut off; returns their trial numbers.

    A SIGKILLed (or OOM-killed) `kronsearch run` leaves its trial RUNNING: when its process on this
    host is gone (pid and start time), the trial is marked FAIL with user attr "interrupted". Trials
    stopped by Ctrl-C or by a storage error are FAIL with "interrupted" already. Each interrupted
    trial's params are enqueued once (the new trial has user attr "retry_of"); interrupted trials do
    not count against the budget. Live processes' trials are left alone, so processes can share a
    study; RUNNING trials of other hosts are left alone too (their liveness cannot be checked here).
    """
    host = socket.gethostname()
    storage = study._storage  # the storage object of this very study  # noqa: SLF001
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_alive(trial, host) is not False:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "interrupted",  # noqa: SLF001
                                        f"process {trial.user_attrs['worker']} died during the trial")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process starting at the same moment recovered it first
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    recovered = []
    for trial in trials:
        if trial.state == TrialState.FAIL and "interrupted" in trial.user_attrs and trial.number not in retried:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            recovered.append(trial.number)
    return recovered


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def record(trial: optuna.Trial | FrozenTrial, metrics: dict, history: list[dict], config: dict,
           artifact_dir: str | None, set_attr: Callable[[str, object], None] | None = None) -> None:
    """Store a finished trial's results as user attrs."""
    set_attr = set_attr or trial.set_user_attr
    set_attr("metrics", metrics)
    set_attr("history", history)
    set_attr("config", config)
    set_attr("artifact_dir", artifact_dir)


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
    """Tag a new trial with its kind and the process that owns it, and sample its pattern."""
    trial.set_user_attr("kind", kind)
    trial.set_user_attr("worker", worker_id())
    started = process_started(os.getpid())
    if started is not None:
        trial.set_user_attr("worker_started", started)
    return suggest(trial, space, kind)


def copy_duplicate(trial: optuna.Trial, duplicate: FrozenTrial) -> list[float]:
    """Make `trial` stand for an earlier trial with the same params; returns the values to tell."""
    trial.set_user_attr("duplicate_of", duplicate.number)
    for key in ("metrics", "history", "config", "artifact_dir"):
        trial.set_user_attr(key, duplicate.user_attrs.get(key))
    return list(duplicate.values)


def trial_artifact_dir(space: Space, folder: Path, number: int) -> Path | None:
    """studies/<search>/<strategy>/trial-<number>, or None when the space does not save weights."""
    return folder / f"trial-{number}" if space.search["save_weights"] else None


def finish_trial(trial: optuna.Trial, space: Space, spec: TrialSpec, metrics: dict, history: list[dict],
                 artifact_dir: Path | None) -> list[float]:
    """Record a trained trial's results; returns its objective values."""
    record(trial, metrics, history, trial_config(space, spec), str(artifact_dir) if artifact_dir else None)
    return objective_values(space, metrics)


def make_objective(space: Space, kind: str, folder: Path, progress: bool,
                   budget: Budget | None = None) -> Callable[[optuna.Trial], list[float]]:
    """The Optuna objective of the local backend: suggest, dedupe, train, record.

    With a budget, a trial that starts when other processes have already claimed the budget is
    skipped (TrialSkipped). A Ctrl-C or a StorageError (e.g. a full disk while saving weights) marks
    the trial "interrupted" (re-queued on resume) and stops the run.
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

    return interruptible


def _mark_interrupted(trial: optuna.Trial, why: str) -> None:
    try:
        trial.set_user_attr("interrupted", why)
    except Exception:  # noqa: BLE001 - the storage itself may be what failed; the run stops anyway
        pass


def _make_objective(space: Space, kind: str, folder: Path, progress: bool,
                    budget: Budget | None) -> Callable[[optuna.Trial], list[float]]:
    single = len(space.search["objectives"]) == 1

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
            metrics, history = run_trial(space, spec, artifact_dir, pruning_reporter(trial, single), progress)
        except Exception as err:
            reason = trial_failure(err)
            if reason is None:
                raise
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason) from err
        return finish_trial(trial, space, spec, metrics, history, artifact_dir)

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
        host, now = socket.gethostname(), datetime.now()
        count = 0
        for t in study.get_trials(deepcopy=False):  # one snapshot
            if counts_toward_budget(t, self.kind):
                count += 1
            elif (t.state == TrialState.RUNNING and (below is None or t.number < below)
                  and (self.kind is None or t.user_attrs.get("kind", self.kind) == self.kind)):
                if "worker" in t.user_attrs:
                    count += worker_alive(t, host) is True
                else:  # just asked for by some process, which is about to tag it
                    count += t.datetime_start is not None and (now - t.datetime_start).total_seconds() < 60
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
    folder = Path(study.user_attrs["artifacts_dir"])
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
                    console.print(f"hybrid: per_pattern search seeded with one_round trial {source}'s selection")
            runner(study, space, kind, target, budget_kind, progress, console)
    done = finished(study)
    summary = RunSummary(names, url, completed=len(done))
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    if complete and len(study.directions) == 1:
        best = study.best_trial
        summary.best = {"trial": best.number, "val_accuracy": best.values[0]}
        summary.message = (f"study {names[0]}: {len(done)} trials finished; best trial {best.number} "
                           f"val accuracy {best.values[0]:.4f}. Inspect: kronsearch show {names[0]}")
    else:
        front = [t.number for t in study.best_trials] if complete else []
        summary.message = (f"study {names[0]}: {len(done)} trials finished; Pareto front: trials {front}. "
                           f"Inspect: kronsearch show {names[0]}")
    if storage:
        summary.message += f" --storage {storage}"
    return summary


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
