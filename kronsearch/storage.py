"""Where studies live: Optuna storages, study names and trial artifact folders.

A search named N with strategy S is the Optuna study "N:S". By default every study of N is in the
SQLite file studies/N.db under the working directory, which `optuna` and optuna-dashboard open as
sqlite:///studies/N.db; trial artifacts (weights, metrics) go to studies/N/S/trial-<number>/.
"""

from __future__ import annotations

import os
from pathlib import Path

import optuna

STUDIES_DIR = Path("studies")
STRATEGIES = ("one_round", "per_pattern", "hybrid")


class StudyNotFound(LookupError):
    """No such study in the storage; the message says where it looked and what exists."""


def study_name(search: str, strategy: str) -> str:
    """The Optuna study name of one strategy of a search."""
    return f"{search}:{strategy}"


def split_study_name(name: str) -> tuple[str, str | None]:
    """'vit:one_round' -> ('vit', 'one_round'); 'vit' -> ('vit', None)."""
    search, _, strategy = name.partition(":")
    return search, strategy or None


def default_storage_url(search: str, studies_dir: str | os.PathLike = STUDIES_DIR) -> str:
    """sqlite:///studies/<search>.db (relative to the working directory)."""
    return f"sqlite:///{Path(studies_dir) / f'{search}.db'}"


def artifacts_dir(search: str, strategy: str, studies_dir: str | os.PathLike = STUDIES_DIR) -> Path:
    """studies/<search>/<strategy>: trial-<n>/ folders with weights and metrics."""
    return Path(studies_dir) / search / strategy


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for a URL; SQLite files get a generous lock timeout for concurrent writers."""
    if url.startswith("sqlite:///"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url) if "://" in url else optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(url))


def storage_for(study: str, storage_url: str | None) -> str:
    """The storage URL to read `study` from: the one given, or the default file, which must exist."""
    if storage_url:
        return storage_url
    search, _ = split_study_name(study)
    path = STUDIES_DIR / f"{search}.db"
    if not path.is_file():
        raise StudyNotFound(f"no study {study!r}: {path} does not exist (run `kronsearch run` first, "
                            f"or pass --storage URL for a study stored elsewhere)")
    return default_storage_url(search)


def load_studies(study: str, storage_url: str | None = None) -> list[optuna.Study]:
    """'N:S' -> that study; 'N' -> every study of search N in the storage, in strategy order."""
    url = storage_for(study, storage_url)
    storage = open_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    search, strategy = split_study_name(study)
    wanted = [study] if strategy else [n for n in names if split_study_name(n)[0] == search]
    found = [n for n in wanted if n in names]
    if not found:
        raise StudyNotFound(f"no study {study!r} in {url}; studies there: {', '.join(sorted(names)) or 'none'}")
    order = {s: i for i, s in enumerate(STRATEGIES)}
    found.sort(key=lambda n: order.get(split_study_name(n)[1], len(order)))
    return [optuna.load_study(study_name=n, storage=storage) for n in found]
