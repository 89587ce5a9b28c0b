"""A study's artifact folder: reached with no link on the way, emptied only of what kronsearch wrote, and never
the target of an export.

A study's trial folders are <artifact root>/<its artifacts folder>/trial-<n> (storage.study_artifacts_dir), the
root being the storage file's folder, resolved once. Every folder from the root down to the study's folder is
checked one name at a time (os.lstat, never following a link), and made where missing, before a run writes
into it or `--fresh` deletes from it: a link anywhere on the way (say studies/tiny pointing at the user's
home) is refused (UnsafeFolder), as is a file where a folder should be (a search `a.db`'s folder would be search
`a`'s storage file; space names ending in .db are refused for that too). `--fresh` then deletes only the files a
run writes (trial_run.save_artifacts: model.safetensors, metrics.json, history.json, config.json, and the
temporary files of a write cut off), each in a trial-<n> folder, and the folders this leaves empty: whatever else
is there, the user's own files, links and folders, stays.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import optuna

from kronsearch.storage import StorageError, recorded_artifacts_dir, study_artifacts_dir, study_artifacts_root

TRIAL_FILES = ("model.safetensors", "metrics.json", "history.json", "config.json")  # trial_run.save_artifacts
TRIAL_FOLDER = re.compile(r"trial-\d+")
TEMPORARY = re.compile(r"\.(" + "|".join(re.escape(name) for name in TRIAL_FILES) + r")\.[^/]+\.tmp")  # write_atomic


class UnsafeFolder(StorageError):
    """A study folder whose way from the artifact root holds a link, or a file where a folder should be."""


def checked_folder(root: Path, folder: Path, create: bool) -> bool:
    """Check every name from `root` (excluded) down to `folder` (under it): a real folder, no link; make the missing
    ones when `create`. Returns whether `folder` exists. UnsafeFolder otherwise, before anything is made below it."""
    try:
        parts = folder.relative_to(root).parts
    except ValueError:
        parts = ("..",)
    if ".." in parts:
        raise UnsafeFolder(f"the study folder {folder} is not inside its artifact root {root}; kronsearch writes and "
                           f"deletes only inside it")
    current = root
    for part in parts:
        current = current / part
        try:
            found = os.lstat(current)
        except FileNotFoundError:
            if not create:
                return False
            try:
                os.mkdir(current)
            except FileExistsError:  # another process made it meanwhile: check what it made
                found = os.lstat(current)
            else:
                continue
        if stat.S_ISLNK(found.st_mode):
            raise UnsafeFolder(f"{current} is a symbolic link (to {os.path.realpath(current)}); kronsearch never "
                               f"writes or deletes through a link on the way to a study's folder: remove the link "
                               f"(move the studies folder itself instead) and re-run")
        if not stat.S_ISDIR(found.st_mode):
            raise UnsafeFolder(f"{current} is a file, not a folder, so the trial folders under it cannot be made; it "
                               f"was left untouched: move it aside, or give the search another name")
    return True


def study_folder(study: optuna.Study, create: bool = True) -> Path:
    """The study's folder of trial folders (storage.study_artifacts_dir), checked (checked_folder) and made."""
    folder = study_artifacts_dir(study)
    checked_folder(study_artifacts_root(study), folder, create)
    return folder


def remove_study_files(root: Path, folder: Path) -> None:
    """--fresh: delete the files runs wrote in the trial-<n> folders of `folder` (under `root`, checked first), then
    the folders left empty up to `root` (excluded). Nothing else is deleted, and no link is followed."""
    if not checked_folder(root, folder, create=False):
        return
    for trial in os.scandir(folder):
        if not (TRIAL_FOLDER.fullmatch(trial.name) and trial.is_dir(follow_symlinks=False)):
            continue
        for entry in os.scandir(trial.path):
            if (entry.name in TRIAL_FILES or TEMPORARY.fullmatch(entry.name)) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
        _remove_if_empty(Path(trial.path))
    while folder != root and _remove_if_empty(folder):
        folder = folder.parent


def _remove_if_empty(folder: Path) -> bool:
    try:
        folder.rmdir()
    except OSError:
        return False
    return True


def study_folders(study: optuna.Study) -> list[Path]:
    """The folders of trial folders of every study in `study`'s storage (export never writes into one)."""
    root = study_artifacts_root(study)
    folders = [recorded_artifacts_dir(root, s.study_name, s.user_attrs.get("artifacts_dir"))
               for s in study._storage.get_all_studies()]  # noqa: SLF001
    return [folder for folder in folders if root in folder.parents]  # a study named ':' would name the root itself


def inside_study_folder(path: Path, folders: list[Path]) -> Path | None:
    """The study folder (of `folders`) or trial folder (trial-<n> holding a run's files) that `path` would be
    written into, comparing real paths; None when it lands in none."""
    real = Path(os.path.realpath(path))
    for folder in folders:
        if real.is_relative_to(os.path.realpath(folder)):
            return folder
    for parent in real.parents:
        if TRIAL_FOLDER.fullmatch(parent.name) and any((parent / name).is_file() for name in TRIAL_FILES):
            return parent
    return None
