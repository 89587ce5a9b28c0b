"""A study read once: what show, compare, export and plot work from.

An optuna.Study reads its storage on every access: `study.user_attrs` is one query (and a deep copy) per
call, and `study.get_trials` one read of every trial per call. The reports ask for the study's attrs for
every trial row and for its trials several times, so on 3,003 trials `show` made 6,017 queries and took
10x Optuna's own load of the study (issue 33). A StudySnapshot reads the study's directions, user attrs
and trials once, when it is made, and answers every later read from that copy: the number of storage
reads no longer grows with the trials (tests/test_read_scale.py counts them; benchmarks/read_scale.py
times them against Optuna's load). It is a read-only view: the read commands never write a study.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Container
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


class StudySnapshot(optuna.Study):
    """optuna.Study `study_name` of `storage`, its user attrs and trials read once at construction.

    get_trials, trials, best_trials and user_attrs answer from that read; anything else is Optuna's own.
    user_attrs is the snapshot's dict itself, not a copy: callers must not change it. A write through the
    study's own methods (add_trial, set_user_attr, tell, ...) reads it again; one through a Trial object does not.
    """

    def __init__(self, study_name: str, storage: str | optuna.storages.BaseStorage) -> None:
        super().__init__(study_name, storage)
        self._read()

    def _read(self) -> None:
        self._read_user_attrs: dict[str, Any] = self._storage.get_study_user_attrs(self._study_id)
        self._read_trials: list[FrozenTrial] = self._storage.get_all_trials(self._study_id, deepcopy=False)

    @property
    def user_attrs(self) -> dict[str, Any]:
        return self._read_user_attrs

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = self._read_trials if states is None else [t for t in self._read_trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()



def _reading_again(name: str) -> Callable[..., Any]:
    """optuna.Study's method `name`, followed by a new read of the study."""
    def method(self: StudySnapshot, *args: Any, **kwargs: Any) -> Any:
        result = getattr(optuna.Study, name)(self, *args, **kwargs)
        self._read()
        return result

    method.__name__ = name
    return method


for _name in ("add_trial", "add_trials", "set_user_attr", "set_system_attr", "enqueue_trial", "tell", "optimize"):
    setattr(StudySnapshot, _name, _reading_again(_name))
