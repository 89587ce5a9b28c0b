"""run_search: space file -> validated Space -> Optuna study -> trials -> storage.

The study is the record: params, objective values, per-epoch intermediate values, and user attrs
(kind, metrics, history, config, artifact_dir, fail_reason). Backends only decide where trials run.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

import kronsearch
from kronsearch.costs import model_cost
from kronsearch.patterns import format_block, kron_macs, kron_params
from kronsearch.space import Space, SpaceError, load_space
from kronsearch.storage import STUDIES_DIR, artifacts_dir, default_storage_url, open_storage, study_name
from kronsearch.strategies import find_duplicate, finished, seed_hybrid, suggest
from kronsearch.trainer import EpochReport, TrainingDiverged
from kronsearch.trial import TrialSpec, build_trial_model, run_trial, trial_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


class TrialFailed(Exception):
    """A trial that cannot finish (diverged, out of memory, CUDA error); recorded as FAIL, the study goes on."""


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


def make_sampler(space: Space) -> optuna.samplers.BaseSampler:
    kind = space.search["sampler"]
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=space.seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=space.seed)
    return optuna.samplers.TPESampler(seed=space.seed, multivariate=True)


def make_pruner(space: Space) -> optuna.pruners.BasePruner:
    kind = space.search["pruner"]
    if kind == "none" or len(space.search["objectives"]) > 1:
        return optuna.pruners.NopPruner()  # Optuna cannot prune multi-objective studies
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=space.train["epochs"])
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)


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
    """Mark RUNNING trials whose process on this host is gone as FAIL and enqueue their params again.

    A SIGKILLed `kronsearch run` leaves its trial RUNNING; a live process's trials are left alone,
    so two processes can share a study. Returns the recovered trial numbers.
    """
    host = socket.gethostname()
    storage = study._storage  # the storage object of this very study  # noqa: SLF001
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", "")
        worker_host, _, pid = worker.rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        storage.set_trial_user_attr(trial._trial_id, "interrupted", f"process {worker} died")  # noqa: SLF001
        if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):  # noqa: SLF001
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
    if isinstance(err, torch.OutOfMemoryError):
        return f"out of memory: {err}"
    if isinstance(err, RuntimeError) and ("CUDA" in str(err) or "out of memory" in str(err)):
        return f"device error: {err}"
    return None


def make_objective(space: Space, kind: str, folder: Path, progress: bool) -> Callable[[optuna.Trial], list[float]]:
    """The Optuna objective of the local backend: suggest, dedupe, train, record."""
    single = len(space.search["objectives"]) == 1

    def objective(trial: optuna.Trial) -> list[float]:
        trial.set_user_attr("kind", kind)
        trial.set_user_attr("worker", worker_id())
        spec = suggest(trial, space, kind)
        duplicate = find_duplicate(trial.study, trial, kind)
        if duplicate is not None:
            trial.set_user_attr("duplicate_of", duplicate.number)
            for key in ("metrics", "history", "config", "artifact_dir"):
                trial.set_user_attr(key, duplicate.user_attrs.get(key))
            return list(duplicate.values)
        artifact_dir = folder / f"trial-{trial.number}" if space.search["save_weights"] else None
        try:
            metrics, history = run_trial(space, spec, artifact_dir, pruning_reporter(trial, single), progress)
        except Exception as err:
            reason = trial_failure(err)
            if reason is None:
                raise
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason) from err
        record(trial, metrics, history, trial_config(space, spec), str(artifact_dir) if artifact_dir else None)
        return objective_values(space, metrics)

    return objective


def describe(trial: FrozenTrial) -> str:
    """One line for the live summary."""
    if trial.state != TrialState.COMPLETE:
        reason = trial.user_attrs.get("fail_reason", "")
        return f"trial {trial.number} {trial.state.name.lower()}{': ' + reason if reason else ''}"
    m = trial.user_attrs["metrics"]
    picked = m["selected"] or {layer: p["block"] for layer, p in m["plan"].items()}
    blocks = ", ".join(f"{b} on {n}" for b, n in sorted(Counter(picked.values()).items()))
    return (f"trial {trial.number} {trial.user_attrs['kind']}: val {m['val_accuracy']:.4f}, "
            f"sparsity {m['block_sparsity']:.2f}, train MACs {m['train_macs']:,}, blocks [{blocks}], "
            f"{m['wall_time']:.1f}s" + (f" (same as trial {trial.user_attrs['duplicate_of']})"
                                         if "duplicate_of" in trial.user_attrs else ""))


class Budget:
    """Stops a study once `target` trials of `kind` are finished, counting every process's trials."""

    def __init__(self, target: int, kind: str | None, console: Console) -> None:
        self.target, self.kind, self.console = target, kind, console

    def remaining(self, study: optuna.Study) -> int:
        return max(self.target - len(finished(study, self.kind)), 0)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.console.print(describe(trial))
        if self.remaining(study) == 0:
            study.stop()


def run_local(study: optuna.Study, space: Space, kind: str, target: int, budget_kind: str | None,
              progress: bool, console: Console) -> None:
    """Run trials in this process until the budget is met (other processes may share the study)."""
    budget = Budget(target, budget_kind, console)
    remaining = budget.remaining(study)
    if remaining == 0:
        return
    folder = Path(study.user_attrs["artifacts_dir"])
    study.optimize(make_objective(space, kind, folder, progress), n_trials=remaining,
                   timeout=space.search["timeout"], catch=(TrialFailed,), callbacks=[budget],
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
        studies_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(space, strategy, url, fresh, studies_dir)
    recovered = recover_dead_trials(study)
    if recovered:
        console.print(f"trials {recovered} were cut off by a crash: marked FAIL, their configurations re-queued")
    if space.backend["name"] == "ray":
        from kronsearch.backends.ray import run_ray

        runner = run_ray
    else:
        runner = run_local
    for kind, target, budget_kind in stages(space):
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
