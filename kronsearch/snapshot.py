"""A study read once: what show, compare, export and plot work from.

An optuna.Study reads its storage on every access: `study.user_attrs` is one query (and a deep copy) per
call, and `study.get_trials` one read of every trial per call. The reports ask for the study's attrs for
every trial row and for its trials several times, so on 3,003 trials `show` made 6,017 queries and took
10x Optuna's own load of the study (issue 33). A StudySnapshot reads the study's directions, user attrs
and trials once, at the first read, and answers every later read from that copy until something writes
through it: the number of storage reads no longer grows with the trials (tests/test_read_scale.py counts
them; benchmarks/read_scale.py times them against Optuna's load). The read commands never write.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Container
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from kronsearch.artifacts import given_root, recorded_root


class StudySnapshot(optuna.Study):
    """optuna.Study `study_name` of `storage`, its user attrs and trials read once, when first asked for.

    get_trials, trials, best_trials and user_attrs answer from that read; anything else is Optuna's own.
    Any write through the study's storage (study.add_trial, set_user_attr, a Trial of study.ask) makes the
    next of those reads again. user_attrs is the snapshot's dict itself, not a copy: callers must not change it.
    artifacts: the folder where this machine sees the study's artifact root (--artifacts), if not the recorded one.
    """

    def __init__(self, study_name: str, storage: str | optuna.storages.BaseStorage,
                 artifacts: str | os.PathLike | None = None) -> None:
        super().__init__(study_name, storage)
        self._storage = _WritesNoticed(self._storage, self._forget)  # type: ignore[assignment]  # BaseStorage's API
        self._read: tuple[dict[str, Any], list[FrozenTrial]] | None = None
        # where this machine finds the trial folders (storage.study_artifacts_root): --artifacts, else the root
        # the study recorded (kronsearch.artifacts); None: relative to the storage file
        self.kronsearch_artifacts_root = given_root(artifacts) or recorded_root(self)

    def _forget(self) -> None:
        self._read = None

    def _snapshot(self) -> tuple[dict[str, Any], list[FrozenTrial]]:
        if self._read is None:
            self._read = (self._storage.get_study_user_attrs(self._study_id),
                          self._storage.get_all_trials(self._study_id, deepcopy=False))
        return self._read

    @property
    def user_attrs(self) -> dict[str, Any]:
        return self._snapshot()[0]

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = self._snapshot()[1]
        trials = trials if states is None else [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class _WritesNoticed:
    """A storage whose writes (its set_*, create_* and delete_* methods) call `wrote` once done."""

    def __init__(self, storage: optuna.storages.BaseStorage, wrote: Callable[[], None]) -> None:
        self._storage, self._wrote = storage, wrote

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._storage, name)
        if not (callable(found) and name.startswith(("set_", "create_", "delete_"))):
            return found

        def write(*args: Any, **kwargs: Any) -> Any:
            try:
                return found(*args, **kwargs)
            finally:
                self._wrote()

        return write
