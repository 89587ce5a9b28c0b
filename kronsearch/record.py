"""The trial record: what kronsearch stores in an Optuna study, written and read in this one module.

The study is the one truthful record of a search, readable with the optuna CLI and
optuna-dashboard. kronsearch's own bookkeeping lives in user attrs, one key per field of
TrialRecord (per trial) and StudyRecord (per study); nothing else writes or reads those keys.
A trial's scalar metrics (SCALAR_METRICS: val_accuracy, test_accuracy, ...) are one user attr each, so
optuna-dashboard and ``trials_dataframe()`` sort and plot by them; the per-layer ones (selected, plan)
stay in the ``metrics`` user attr. Studies from before keep every metric in ``metrics``; ``metrics()``
reads both.
Per-epoch histories and per-layer detail stay in the trial's artifact folder (history.json,
metrics.json), not in the study.

Trial states keep Optuna's meaning: COMPLETE, PRUNED (fail_reason says after which epoch),
FAIL with fail_reason (a trial failure: diverged, out of memory; counts against the budget),
FAIL with skipped (not trained, budget already met) or interrupted (cut off by a crash, Ctrl-C
or a storage error; its configuration is re-queued with retry_of and it does not count).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from kronsearch.record_check import checked_attrs, checked_metrics, checked_record


class Strategy(StrEnum):
    """How a search spends its trials. A trial's kind is one_round or per_pattern; hybrid runs both."""

    ONE_ROUND = "one_round"
    PER_PATTERN = "per_pattern"
    HYBRID = "hybrid"


STRATEGIES: tuple[str, ...] = tuple(Strategy)
KINDS: tuple[str, ...] = (Strategy.ONE_ROUND, Strategy.PER_PATTERN)
RACES = ("per_rank", "once", "per_trial")  # search.races: which one_round trials race (strategies.shared_race)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
DEFAULT_TOLERANCE = 0.5  # accuracy points: search.tolerance's default (TrainConfig.tolerance)
SHARED_CONFIG = ("space", "seed", "data", "model")  # stored once per study (StudyRecord.trial_config)
STUDY_METRICS = ("selected", "plan", "decisions")  # the per-layer metrics kept in the study's "metrics" user attr
# the scalar metrics, each its own user attr under this name (docs/workflow.md, "The study in Optuna's tools")
SCALAR_METRICS = ("val_accuracy", "test_accuracy", "val_examples", "test_examples", "block_sparsity", "train_params",
                  "train_macs", "train_macs_total", "final_params", "final_macs", "inference_nonzeros", "wall_time")


@dataclass(frozen=True)
class TrialRecord:
    """A trial's kronsearch user attrs, typed; None where a trial has none."""

    kind: str | None = None  # one_round or per_pattern
    metrics: dict | None = None  # "selected" and "plan" (before the flat scalars below: every metric)
    val_accuracy: float | None = None  # the scalar metrics (SCALAR_METRICS), one user attr each
    test_accuracy: float | None = None
    val_examples: int | None = None  # how many examples each accuracy came from
    test_examples: int | None = None
    block_sparsity: float | None = None
    train_params: int | None = None
    train_macs: int | None = None  # forward MACs per training sample
    final_params: int | None = None
    final_macs: int | None = None
    inference_nonzeros: int | None = None
    wall_time: float | None = None
    config: dict | None = None  # the trial's own config; the shared part is StudyRecord.trial_config
    artifact_dir: str | None = None  # relative to the storage's folder (storage.artifact_dir_record)
    fail_reason: str | None = None  # a trial failure, or "pruned after epoch N"
    train_macs_total: int | None = None  # forward MACs trained (a pruned trial's: up to its last epoch)
    skipped: str | None = None
    interrupted: str | None = None
    duplicate_of: int | None = None  # reuses that complete trial's results
    retry_of: int | None = None  # re-queued configuration of that interrupted trial
    seeded_from: int | None = None  # hybrid: the one_round trial whose pick this per_pattern trial trains
    race_of: int | None = None  # one_round: trains a plan of that trial's race instead of racing (search.races)
    challenges: int | None = None  # one_round: trains a costlier plausible candidate of that trial's race
    worker: str | None = None  # host:pid of the process that ran it (storage.OwnedTrialStorage)
    worker_started: str | None = None  # that process's start time, so a reused pid is not mistaken for it
    ray_worker: str | None = None  # host:pid of the Ray worker that trained it
    history: list | None = None  # per-epoch history, kronsearch 0.1 only (now history.json)

    @classmethod
    def of(cls, trial: FrozenTrial | optuna.Trial) -> TrialRecord:
        """The trial's record, a malformed attr (record_check) read as None (`malformed` says which)."""
        return checked_record(trial.user_attrs, cls)[0]

    @property
    def reason(self) -> str:
        """Why the trial did not complete ("" if it did, or nothing was recorded)."""
        return self.fail_reason or self.skipped or self.interrupted or ""


def malformed(trial: FrozenTrial) -> str | None:
    """The trial's malformed user attrs (written by another tool), which every reader takes as missing, in one
    line: "val_accuracy 'high' (not a finite number in [0, 1])"; None if there are none."""
    return checked_record(trial.user_attrs, TrialRecord)[1]


def malformed_study(study: optuna.Study) -> str | None:
    """The study's malformed user attrs (e.g. tolerance 'high'), read as missing, in one line; None if none."""
    return "; ".join(checked_attrs(study.user_attrs, STUDY_FIELDS)[1]) or None


@dataclass(frozen=True)
class StudyRecord:
    """A study's kronsearch user attrs, typed; None where a study has none."""

    strategy: str | None = None
    objectives: list | None = None  # [{metric, direction}] in objective order
    space: dict | None = None  # the space file as parsed
    space_identity: dict | None = None  # the normalized space that decides whether a resume is allowed
    space_hash: str | None = None
    space_path: str | None = None
    kronsearch_version: str | None = None
    artifacts_dir: str | None = None  # the trial folders' folder, relative to the artifact root
    artifacts_root: str | None = None  # that root, absolute, when not the storage file's folder (artifacts.py)
    artifacts_id: str | None = None  # the id in the artifact folder's marker (artifacts.claim)
    trial_config: dict | None = None  # what every trial shares (split_config)
    hybrid_seeded_from: int | None = None
    tolerance: float | None = None  # search.tolerance (accuracy points); None: a study from before it, read as 0.5

    @classmethod
    def of(cls, study: optuna.Study) -> StudyRecord:
        """The study's record, a malformed attr (record_check) read as None (`malformed_study` says which)."""
        return cls(**checked_attrs(study.user_attrs, STUDY_FIELDS)[0])


STUDY_FIELDS = tuple(f.name for f in dataclasses.fields(StudyRecord))


def write_study(study: optuna.Study, **fields: Any) -> None:
    """Set StudyRecord fields (names checked)."""
    names = {f.name for f in dataclasses.fields(StudyRecord)}
    for key, value in fields.items():
        if key not in names:
            raise TypeError(f"StudyRecord has no field {key!r}")
        study.set_user_attr(key, value)


# --------------------------------------------------------------------------------------- writing


def owner(worker: str, started: str | None) -> dict[str, str]:
    """The fields naming the process that runs a trial, written as the trial is created (storage.OwnedTrialStorage)."""
    return {"worker": worker, **({"worker_started": started} if started is not None else {})}


def start(trial: optuna.Trial, kind: str) -> None:
    """Tag a new trial with its kind (its process is tagged by the storage as it starts)."""
    trial.set_user_attr("kind", kind)


def study_metrics(metrics: dict) -> dict[str, Any]:
    """A trial's metrics as user attrs: each scalar (SCALAR_METRICS) under its own name, checked and made a plain
    number (record_check.scalar_metric; BadInput naming a bad one), and "metrics" with the selected blocks and
    the final plan."""
    return {"metrics": {k: metrics[k] for k in STUDY_METRICS if k in metrics},
            **checked_metrics(metrics, SCALAR_METRICS)}


def split_config(config: dict) -> tuple[dict, dict]:
    """(what every trial of a study shares: space, seed, data, model, train but its lambdas; the trial's own part)."""
    train = config.get("train") or {}
    own_train = {k: train[k] for k in ("lambda2",) if k in train}
    shared = {k: config[k] for k in SHARED_CONFIG if k in config}
    shared["train"] = {k: v for k, v in train.items() if k not in own_train}
    own = {k: v for k, v in config.items() if k not in SHARED_CONFIG and k != "train"}
    return shared, {**own, "train": own_train}


def save_results(trial: optuna.Trial, metrics: dict, config: dict, artifact_dir: str | None,
                 ray_worker: str | None = None) -> None:
    """Store a trained trial's results (the shared part of its config once per study)."""
    shared, own = split_config(config)
    if StudyRecord.of(trial.study).trial_config is None:
        write_study(trial.study, trial_config=shared)
    for key, value in study_metrics(metrics).items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("config", own)
    trial.set_user_attr("artifact_dir", artifact_dir)
    if ray_worker is not None:
        trial.set_user_attr("ray_worker", ray_worker)


def fail(trial: optuna.Trial, reason: str) -> None:
    """Record a trial failure (or a pruning) before the trial is told FAIL (or PRUNED)."""
    trial.set_user_attr("fail_reason", reason)


def prune(trial: optuna.Trial, epoch: int, val_accuracy: float, train_macs_total: int, why: str = "") -> None:
    """Record a pruning before the trial is told PRUNED: after which epoch, at what val accuracy (then `why`), and
    the training MACs it had spent, so cost sums count pruned trials too."""
    fail(trial, f"pruned after epoch {epoch} (val accuracy {val_accuracy:.4f}){why}")
    trial.set_user_attr("train_macs_total", train_macs_total)


def skip(trial: optuna.Trial, why: str) -> None:
    trial.set_user_attr("skipped", why)


def interrupt(trial: optuna.Trial, why: str) -> None:
    """Mark a trial cut off by Ctrl-C or a storage error; it is re-queued on resume (requeue)."""
    try:
        trial.set_user_attr("interrupted", why)
    except Exception:  # noqa: BLE001 - the storage itself may be what failed; the run stops anyway
        pass


def interrupt_dead(study: optuna.Study, trial: FrozenTrial, why: str) -> bool:
    """Mark a RUNNING trial whose process died as FAIL + interrupted; False if another process did first."""
    storage = study._storage  # noqa: SLF001 - a FrozenTrial cannot be written through optuna.Trial
    try:
        storage.set_trial_user_attr(trial._trial_id, "interrupted", why)  # noqa: SLF001
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


def interrupt_stale(storage: optuna.storages.BaseStorage, trial_id: int, why: str) -> None:
    """Mark a trial whose heartbeat stopped (its process or host died) as interrupted, just before
    Optuna's heartbeat check fails it (storage.OwnedTrialStorage); Optuna re-queues its configuration."""
    storage.set_trial_user_attr(trial_id, "interrupted", why)


def retry_template(trial: FrozenTrial) -> FrozenTrial:
    """The stale trial as Optuna's heartbeat retry copies it: without its interrupted mark."""
    template = copy.deepcopy(trial)
    template.user_attrs = {k: v for k, v in trial.user_attrs.items() if k != "interrupted"}
    return template


def copy_duplicate(trial: optuna.Trial, duplicate: FrozenTrial) -> list[float]:
    """Make `trial` stand for an earlier trial with the same params; returns the values to tell."""
    trial.set_user_attr("duplicate_of", duplicate.number)
    for key in ("metrics", "config", "artifact_dir", "race_of"):  # race_of: a twin reads as its original
        trial.set_user_attr(key, duplicate.user_attrs.get(key))
    for key in SCALAR_METRICS:
        if key in duplicate.user_attrs:
            trial.set_user_attr(key, duplicate.user_attrs[key])
    return list(duplicate.values)


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue an interrupted trial's configuration again (its queued params too, if it had not sampled)."""
    queued = trial.system_attrs.get("fixed_params", {})
    study.enqueue_trial({**queued, **trial.params}, user_attrs={"retry_of": trial.number})


def reuse_race(trial: optuna.Trial, source: int, challenger: bool = False) -> None:
    """Record that one_round `trial` trains a plan of trial `source`'s race instead of racing (search.races), and
    with `challenger` that the plan is a plausible candidate costlier than `source`'s (pruners.trails_its_pick)."""
    trial.set_user_attr("race_of", source)
    if challenger:
        trial.set_user_attr("challenges", source)


def enqueue_seed(study: optuna.Study, params: dict, source: int) -> None:
    """Enqueue the hybrid's first per_pattern trial, seeded from one_round trial `source` (once per study)."""
    study.enqueue_trial(params, user_attrs={"seeded_from": source})
    write_study(study, hybrid_seeded_from=source)


# --------------------------------------------------------------------------------------- reading


def metrics(trial: FrozenTrial) -> dict:
    """The trial's metrics: "metrics" (selected, plan; every metric in a study from before the flat scalars)
    with the flat scalar user attrs on top ({} when it has none, e.g. a failed trial)."""
    record = TrialRecord.of(trial)
    flat = {key: getattr(record, key) for key in SCALAR_METRICS if getattr(record, key) is not None}
    return {**(record.metrics or {}), **flat}


def final_blocks(trial: FrozenTrial) -> dict[str, str]:
    """layer -> the block the trial's model ended with: the one round's selection, else its plan's."""
    m = metrics(trial)
    return dict(m.get("selected") or {layer: p["block"] for layer, p in (m.get("plan") or {}).items()})


def train_macs_total(trial: FrozenTrial) -> int | None:
    """The forward MACs a trial trained, what a pruned trial had spent when it stopped included; None when
    unknown (a failed trial, or a trial pruned before kronsearch recorded it)."""
    return metrics(trial).get("train_macs_total")


def retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of the trials whose configuration was already re-queued: by kronsearch (retry_of) or by
    Optuna's heartbeat retry (its "failed_trial" system attr)."""
    found = set()
    for t in trials:
        # t.system_attrs["failed_trial"] is RetryHeartbeatStaleTrialCallback.retried_trial_number(t), which warns
        found |= {TrialRecord.of(t).retry_of, t.system_attrs.get("failed_trial")}
    return {number for number in found if number is not None}


def study_name(search: str, strategy: str) -> str:
    """The Optuna study name of one strategy of a search."""
    return f"{search}:{strategy}"


def split_study_name(name: str) -> tuple[str, str | None]:
    """'vit:one_round' -> ('vit', 'one_round'); 'vit' -> ('vit', None)."""
    search, _, strategy = name.partition(":")
    return search, strategy or None


def study_strategy(study: optuna.Study) -> str | None:
    """one_round, per_pattern or hybrid: the study's strategy, else the part after ':' in its name."""
    return StudyRecord.of(study).strategy or split_study_name(study.study_name)[1]


def trial_kind(trial: FrozenTrial, strategy: str | None = None) -> str | None:
    """one_round or per_pattern: the recorded kind, else the study's strategy, else told by the params."""
    kind = TrialRecord.of(trial).kind
    if kind in KINDS:
        return kind
    if strategy in KINDS:
        return strategy
    if "lambda1" in trial.params:  # a one-round trial of a study from before the race
        return Strategy.ONE_ROUND
    if any(p == "block" or p.startswith("block:") for p in trial.params):
        return Strategy.PER_PATTERN
    return None


def full_config(study: optuna.Study, trial: FrozenTrial) -> dict:
    """The trial's resolved config: the study's shared part with the trial's own on top (split_config's inverse)."""
    shared, own = StudyRecord.of(study).trial_config or {}, TrialRecord.of(trial).config or {}
    return {**shared, **own, "train": {**(shared.get("train") or {}), **(own.get("train") or {})}}


def counts_toward_budget(t: FrozenTrial, kind: str | None = None) -> bool:
    """Complete, pruned, or failed with a recorded reason, and of `kind` (any with None). Trials cut
    off by a crash do not count: their configuration is retried."""
    return (kind is None or TrialRecord.of(t).kind == kind) and (
        t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and TrialRecord.of(t).fail_reason is not None))


def finished(study: optuna.Study, kind: str | None = None) -> list[FrozenTrial]:
    """Trials that count against the budget (counts_toward_budget)."""
    return [t for t in study.get_trials(deepcopy=False) if counts_toward_budget(t, kind)]


def val_accuracy(trial: FrozenTrial) -> float | None:
    """metrics.val_accuracy, else the first objective value (always val_accuracy by contract)."""
    value = metrics(trial).get("val_accuracy")
    if value is None and trial.values:
        value = trial.values[0]
    return value


def best_one_round(studies: Iterable[optuna.Study]) -> tuple[optuna.Study, FrozenTrial] | None:
    """The complete one_round-kind trial with the highest val_accuracy over `studies` (the lower number
    on a tie), with its study."""
    found = [(s, t) for s in studies for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if trial_kind(t, study_strategy(s)) == Strategy.ONE_ROUND]
    return max(found, key=lambda st: best_first(st[1]), default=None)


def best_first(trial: FrozenTrial) -> tuple[float, int]:
    """Sort key: the higher val_accuracy (none counts lowest), then the lower trial number."""
    value = val_accuracy(trial)
    return (-math.inf if value is None else value, -trial.number)


def study_tolerance(study: optuna.Study) -> float:
    """The study's search.tolerance in accuracy points (DEFAULT_TOLERANCE, 0.5, for studies from before it)."""
    tolerance = StudyRecord.of(study).tolerance
    return DEFAULT_TOLERANCE if tolerance is None else float(tolerance)


def tolerance_pick(trials: Iterable[FrozenTrial], tolerance: float) -> FrozenTrial | None:
    """The cost-aware pick: among complete trials whose val_accuracy is within `tolerance` accuracy points
    (0.5 -> 0.005) of the best, the one with the fewest final_macs, then final_params, then the higher
    val_accuracy, then the lower number. Tolerance 0 is the most accurate (ties go to the cheaper).
    None when no complete trial has a val_accuracy."""
    complete = [(t, v) for t in trials if t.state == TrialState.COMPLETE and (v := val_accuracy(t)) is not None]
    if not complete:
        return None
    floor = max(v for _, v in complete) - tolerance / 100 - 1e-12  # 1e-12: 0.86 - 0.005 in floats
    return min((t for t, v in complete if v >= floor), key=cheapest_first)


def cheapest_first(trial: FrozenTrial) -> tuple[float, float, float, int]:
    """Sort key: fewer final_macs, then final_params (unknown counts highest), the higher val_accuracy, the lower
    number."""
    m = metrics(trial)
    macs, params = (math.inf if m.get(key) is None else m[key] for key in ("final_macs", "final_params"))
    value = val_accuracy(trial)
    return macs, params, -value if value is not None else math.inf, trial.number
