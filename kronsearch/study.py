"""The Optuna study of a search: opening or resuming it, its sampler and pruner, and recovering
trials whose process died.

Every trial stores the process that runs it (user attrs "worker" = host:pid and "worker_started"),
written in the same transaction that starts the trial (storage.OwnedTrialStorage), so a later run on
the same host can tell a trial cut off by a crash, however early, from one another live process is
still running. Trial artifact paths are stored relative to the storage file's folder
(storage.artifact_root), so a studies folder can be moved or copied and resumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import reprlib
import socket
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

import kronsearch
from kronsearch import record
from kronsearch.artifacts import check_claimed, check_own, claim, given_root, recorded_root, storage_label
from kronsearch.layers.blocks import format_block
from kronsearch.processes import worker_alive, worker_attrs
from kronsearch.pruners import make_pruner
from kronsearch.record import DEFAULT_TOLERANCE, StudyRecord, TrialRecord, study_name, write_study
from kronsearch.space import Space, SpaceError
from kronsearch.storage import (
    artifact_root,
    artifacts_folder,
    open_storage,
    storage_file,
    study_artifacts_dir,
    study_artifacts_root,
)
from kronsearch.storage_files import mask_passwords
from kronsearch.study_files import checked_folder, remove_study_files
from kronsearch.study_owner import check_made_by_kronsearch, check_not_held, mark_made_by_kronsearch


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
                    values: Sequence[float] | None) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._samplers.pop(trial.number, None)


def open_study(space: Space, strategy: str, storage_url: str, fresh: bool, studies_dir: Path,
               artifacts: str | os.PathLike | None = None) -> optuna.Study:
    """Create or resume the study of (space, strategy); refuse to resume from a changed space file.
    artifacts: the artifact root (--artifacts; else search.artifacts, else the study's, see kronsearch.artifacts)."""
    storage = open_storage(storage_url, owner=worker_attrs(), heartbeat=space.backend["heartbeat"])
    name = study_name(space.name, strategy)
    given = given_root(artifacts or space.search["artifacts"])
    shared = given is not None or storage_file(storage_url) is None  # the root is recorded, absolute
    root = given or _recorded_root(storage, name) or artifact_root(storage_url, studies_dir)
    storage.kronsearch_root = root  # type: ignore[attr-defined]
    folder = f"{space.name}/{strategy}" if shared else artifacts_folder(storage_url, space.name, strategy)
    label = storage_label(storage_url)
    check_made_by_kronsearch(storage, name, storage_url)  # a foreign study is left untouched, --fresh or not
    if fresh:
        checked_folder(root, root / folder, create=False)  # a link on the way: refused before anything is deleted
        check_own(root / folder, name, label)  # --fresh deletes no other study's artifacts
        _delete_study(storage, name)
        remove_study_files(root, root / folder)
    directions = [o["direction"] for o in space.search["objectives"]]
    study = optuna.create_study(study_name=name, storage=storage, directions=directions, load_if_exists=True,
                                sampler=make_sampler(space), pruner=make_pruner(space))
    mark_made_by_kronsearch(study)
    identity = space_identity(space)
    _check_same_space(study, space, identity, storage_url)
    if [d.name.lower() for d in study.directions] != directions:
        raise SpaceError(f"{space.path}: search.objectives differ from study {name!r}'s; use --fresh")
    stored = StudyRecord.of(study)
    if stored.space_identity is None:
        write_study(study, space_identity=identity)
    if stored.tolerance is None:
        write_study(study, tolerance=space.search["tolerance"])
    if stored.space_hash is None:  # a new study: its artifact folder is claimed before any trial writes there
        root.mkdir(parents=True, exist_ok=True)
        checked_folder(root, root / folder, create=True)  # made name by name, no link on the way
        write_study(study, artifacts_id=claim(root / folder, name, label), artifacts_dir=folder,
                    artifacts_root=str(root) if shared else None)
        write_study(study, space_hash=identity_hash(identity), space_path=str(Path(space.path).resolve()),
                    space=space.raw, strategy=strategy, objectives=space.search["objectives"],
                    kronsearch_version=kronsearch.__version__)
    else:
        check_claimed(study_artifacts_dir(study), study, given is not None)
    return study


def _recorded_root(storage: optuna.storages.BaseStorage, name: str) -> Path | None:
    """The artifact root study `name` recorded (artifacts.recorded_root); None if it has none or does not exist."""
    try:
        return recorded_root(optuna.load_study(study_name=name, storage=storage))
    except KeyError:
        return None


def _delete_study(storage: optuna.storages.BaseStorage, name: str) -> None:
    """--fresh: delete study `name` and what its runs wrote in its folder (study_files.remove_study_files), unless
    a live run holds it (study_owner.check_not_held: its trials would be renumbered under it), or a link is on the
    way to its folder (checked before anything is deleted). A missing study is nothing to delete."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return
    check_not_held(study)
    root, folder = study_artifacts_root(study), study_artifacts_dir(study)
    checked_folder(root, folder, create=False)
    optuna.delete_study(study_name=name, storage=storage)
    remove_study_files(root, folder)


# Keys that do not change a study's results: its budget, where it runs, where its data is found, and which trials
# race (search.races: a trial records the race it reused, TrialRecord.race_of).
NOT_IDENTITY = {"search": ("trials", "timeout", "one_round_trials", "strategy", "save_weights", "artifacts", "races"),
                "train": ("device", "threads", "compute"), "data": ("root",)}


def space_identity(space: Space) -> dict:
    """What a study's results depend on: the validated, normalized space (seed, data, model, train,
    search settings, candidate space), without the budget, the device and thread count, the data
    folder, the backend and the file's bytes (comments, layout). JSON-normalized, as stored in the study."""
    def section(name: str, values: dict) -> dict:
        return {k: v for k, v in values.items() if k not in NOT_IDENTITY.get(name, ())}

    identity = {
        "seed": space.seed, "data": section("data", space.data), "model": space.model,
        "train": section("train", space.train), "search": section("search", space.search),
        "space": {"blocks": {glob: [format_block(b) for b in blocks] for glob, blocks in space.blocks.items()},
                  "ranks": space.ranks, "lambda2": dataclasses.asdict(space.lambda2)},
    }
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def identity_hash(identity: dict) -> str:
    """sha256 of a space identity (the study's "space_hash" user attr)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def changed_keys(old: object, new: object, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings ('train.epochs', 'space.ranks')."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for k in sorted(set(old) | set(new), key=str)
                for key in changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".") or "(top level)"]


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60


def _value_at(identity: dict, key: str) -> str:
    """The value at dotted `key` of a space identity, short ('0.005', '[1, 2]', 'absent')."""
    value: object = identity
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return "absent"
        value = value[part]
    return _SHORT.repr(value)


ADDED_KEYS = {("search", "tolerance"): DEFAULT_TOLERANCE, ("data", "test_limit"): None,
              ("train", "race_fallback"): "most_accurate"}
"""Keys added since studies were created, at the value that reproduces how those studies ran."""


def _with_added_keys(identity: dict) -> dict:
    """A stored identity with the keys added since its study was created (ADDED_KEYS), so such a study resumes
    and reads as made with them."""
    for (section, key), value in ADDED_KEYS.items():
        part = identity.get(section)
        if isinstance(part, dict) and key not in part:
            identity = {**identity, section: {**part, key: value}}
    return identity


OLD_LIMIT = ("data.limit (its meaning changed: it capped validation and test at limit // 5 too, and now caps "
             "the training examples only; the test set stays whole unless data.test_limit says otherwise)")


def _old_limit(identity: dict) -> bool:
    """Whether a stored identity predates data.test_limit and set data.limit, whose meaning then differed."""
    data = identity.get("data")
    return isinstance(data, dict) and "test_limit" not in data and data.get("limit") is not None


def _check_same_space(study: optuna.Study, space: Space, identity: dict, storage_url: str) -> None:
    """Refuse to resume a study whose results were produced by a different space (SpaceError, exit 2)."""
    stored = StudyRecord.of(study)
    if stored.space_identity is not None:
        before = _with_added_keys(stored.space_identity)
        keys = [key for key in changed_keys(before, identity)
                if not (key == "data.limit" and _old_limit(stored.space_identity))]
        changed = [f"{key} ({_value_at(before, key)} -> {_value_at(identity, key)})" for key in keys]
        # a changed key the file leaves to its default: the file resumes the study once it names the old value
        defaulted = [f"{key}: {_value_at(before, key)}" for key in keys
                     if _value_at(space.raw, key) == "absent" and _value_at(before, key) != "absent"]
        if _old_limit(stored.space_identity):
            changed.append(OLD_LIMIT)
    elif stored.space_hash is not None and stored.space_hash != space.sha256:
        changed, defaulted = ["the file (a study from kronsearch 0.1 kept only the file's hash)"], []
    else:
        return
    if changed:
        old_defaults = (f" The file leaves {'them' if len(defaulted) > 1 else 'it'} to the default: to resume the "
                        f"study as it was made, write {', '.join(defaulted)} in the file." if defaulted else "")
        raise SpaceError(
            f"{space.path}: {', '.join(changed)} changed since study {study.study_name!r} was created in "
            f"{mask_passwords(storage_url)}; its trials were run on the old values, so it is not resumed."
            f"{old_defaults} Re-run with --fresh to delete it and start over, or give the search a new name (the "
            f"file's name:) to keep both. The budget (search.trials, search.timeout), train.device, train.threads, "
            f"train.compute, data.root and comments may change freely")


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Re-queue the configurations of trials that were cut off; returns their trial numbers.

    A SIGKILLed (or OOM-killed) `kronsearch run` leaves its trial RUNNING, tagged with its process
    however early the kill came: when that process on this host is gone (pid and start time), the
    trial is marked FAIL with user attr "interrupted". Trials stopped by Ctrl-C or by a storage error
    are FAIL with "interrupted" already. Each interrupted trial's params (or, for a queued trial cut
    off before it sampled, its queued params) are enqueued once (the new trial has user attr
    "retry_of"); interrupted trials do not count against the budget. Live processes' trials are left
    alone, so processes can share a study; RUNNING trials of other hosts, or with no process (from
    another tool), are left alone too (their liveness cannot be checked here).
    """
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_alive(trial, host) is False:
            record.interrupt_dead(study, trial, f"process {TrialRecord.of(trial).worker} died during the trial")
    trials = study.get_trials(deepcopy=False)
    retried = record.retried_numbers(trials)
    recovered = []
    for trial in trials:
        if (trial.state == TrialState.FAIL and TrialRecord.of(trial).interrupted is not None
                and trial.number not in retried):
            record.requeue(study, trial)
            recovered.append(trial.number)
    return recovered


def ask(study: optuna.Study) -> optuna.Trial:
    """study.ask() for ask/tell backends, with the trial's first heartbeat when the storage has them: a
    RUNNING trial without any heartbeat is never found stale, so it is recorded before anything else."""
    with warnings.catch_warnings():  # "Heartbeat of storage is supposed to be used with Study.optimize."
        warnings.simplefilter("ignore", UserWarning)
        trial = study.ask()
    if is_heartbeat_enabled(study._storage):  # noqa: SLF001
        study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]  # noqa: SLF001
    return trial


def fail_stale(study: optuna.Study) -> None:
    """Fail (and retry once) trials whose heartbeat stopped (storage.StaleTrialRetry); study.optimize does
    this before every trial by itself, ask/tell backends call it before asking."""
    with warnings.catch_warnings():  # experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class Heartbeats:
    """Beats every `heartbeat` seconds for the trials an ask/tell backend has in flight (study.optimize
    beats by itself): `trials()` returns them. Does nothing when the storage has no heartbeat."""

    def __init__(self, study: optuna.Study, trials: Callable[[], Iterable[optuna.Trial]]) -> None:
        self.study, self.trials = study, trials
        self.interval = (study._storage.get_heartbeat_interval()  # type: ignore[attr-defined]  # noqa: SLF001
                         if is_heartbeat_enabled(study._storage) else None)  # noqa: SLF001
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="kronsearch-heartbeat")

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval):
            for trial in list(self.trials()):
                try:
                    self.study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]  # noqa: SLF001
                except Exception:  # noqa: BLE001 - a lost beat only brings the grace period nearer
                    continue

    def __enter__(self) -> Heartbeats:
        if self.interval:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()
