"""Where a study's trial folders live, the same for every machine that runs or reads it (issue 33).

A study's trial folders are <root>/<artifacts_dir>/trial-<n>/ (weights, metrics, history.json). The root is:

- `--artifacts PATH` (run and every read command) or `search.artifacts` in the space file: a folder every
  machine reaches, e.g. on a shared filesystem; the folder is then <root>/<search>/<strategy> on every machine;
- else the root the study recorded when it was created ("artifacts_root": the absolute folder the first
  machine used), so a machine that mounts the shared folder at the same path needs no option;
- else, for a study in a SQLite or journal file, that file's folder (recorded relative, so a moved studies
  folder still works), and for a database server the creating machine's studies/ folder.

One study per artifact folder: a new study writes a marker (MARKER, JSON: the study, its storage and an
id the study records as "artifacts_id") into its folder, atomically, and a folder holding another study's
marker or trial folders it cannot vouch for is refused. Every later run checks the marker, so a machine
whose --artifacts points at a folder of its own (not the shared one) is refused before it trains a trial
there. A machine that cannot reach a trial's folder gets one line naming the trial and the place
(unreachable). Optuna's artifact store (optuna.artifacts) is not used: it keeps each file under an opaque
id in one flat folder, where the trial folders here are read by path (export, `kronsearch.load_model`,
history.json for plots) and laid out as users browse them.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import optuna

from kronsearch.layers.errors import BadInput, RunFailure
from kronsearch.record import StudyRecord
from kronsearch.storage_files import mask_passwords

MARKER = ".kronsearch-study"


class ArtifactsUnreachable(RunFailure):
    """A study's artifact folder that this machine cannot reach, or that is not the study's."""


def given_root(path: str | os.PathLike | None) -> Path | None:
    """--artifacts PATH as an absolute folder (None when not given); BadInput for a file."""
    if path is None:
        return None
    root = Path(path).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise BadInput(f"--artifacts {path}: {root} is a file; give a folder (on a filesystem every machine reaches)")
    return root


def recorded_root(study: optuna.Study) -> Path | None:
    """The absolute root the study recorded at its creation (None: relative to its storage file)."""
    recorded = StudyRecord.of(study).artifacts_root
    return Path(recorded) if isinstance(recorded, str) and Path(recorded).is_absolute() else None


def marker_of(folder: Path) -> dict | None:
    """The marker in `folder` ({study, storage, artifacts_id}), None if it has none or an unreadable one."""
    try:
        found = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def storage_label(url: str | None) -> str | None:
    """A storage URL as recorded and shown: relative SQLite paths made absolute, passwords masked."""
    if url is None:
        return None
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = "sqlite:///" + str(Path(url[len("sqlite:///"):]).resolve())
    return mask_passwords(url)


def check_own(folder: Path, study_name: str, storage: str | None) -> None:
    """Refuse (ArtifactsUnreachable) when `folder` holds another study's marker: --fresh deletes only its own."""
    found = marker_of(folder)
    if found is not None and (found.get("study") != study_name or found.get("storage") != storage):
        raise ArtifactsUnreachable(f"{folder} holds the trials of study {found.get('study')!r} of "
                                   f"{found.get('storage')} (its {MARKER}); --fresh of study {study_name!r} deletes "
                                   f"only its own folder: give it another --artifacts folder")


def claim(folder: Path, study_name: str, storage: str | None) -> str:
    """The artifacts_id of existing `folder` for study `study_name` of `storage`: the marker written now (a new
    folder, atomically: two machines creating the study at once get the same one), or the one a machine wrote first
    for the same study. ArtifactsUnreachable if the folder belongs to another study, or holds trial folders
    without a marker. The caller makes `folder` with study_files.checked_folder: no link on the way."""
    artifacts_id = uuid.uuid4().hex
    mine = {"study": study_name, "storage": storage, "artifacts_id": artifacts_id}
    # a link planted as a trial folder is left to the run, which refuses to write through it
    trials = [p for p in folder.iterdir() if p.name.startswith("trial-") and not p.is_symlink()]
    if marker_of(folder) is None and not trials:
        try:
            with open(folder / MARKER, "x", encoding="utf-8") as f:  # O_EXCL: the first machine's marker wins
                json.dump(mine, f)
            return artifacts_id
        except FileExistsError:
            pass
    found = marker_of(folder)
    if found is None:
        raise ArtifactsUnreachable(f"{folder} already holds trial folders of a study it does not name (no {MARKER} "
                                   f"marker): one study per artifact folder; give study {study_name!r} another "
                                   f"--artifacts folder, or move those trials away")
    if found.get("study") != study_name or found.get("storage") != storage:
        raise ArtifactsUnreachable(f"{folder} holds the trials of study {found.get('study')!r} of "
                                   f"{found.get('storage')} (its {MARKER}): one study per artifact folder; give "
                                   f"study {study_name!r} of {storage} another --artifacts folder")
    return str(found.get("artifacts_id"))


def check_claimed(folder: Path, study: optuna.Study, root_given: bool) -> None:
    """Refuse to run a study whose recorded artifacts_id is not the marker in `folder`: the machine does not
    see the study's artifact folder (not mounted, or --artifacts names a folder of its own)."""
    expected = StudyRecord.of(study).artifacts_id
    if expected is None:
        return  # a study from before the markers
    found = marker_of(folder)
    if found is not None and found.get("artifacts_id") == expected:
        return
    if not folder.is_dir() and root_given:
        raise ArtifactsUnreachable(
            f"study {study.study_name!r}'s trial folders are not under the --artifacts folder given ({folder} does not "
            f"exist); pass the folder shared by the machines running this study")
    if not folder.is_dir():
        raise ArtifactsUnreachable(
            f"study {study.study_name!r} keeps its trial folders in {folder} (recorded when it was created), which "
            f"this machine cannot reach; mount the study's artifact folder there, or pass --artifacts PATH where it is "
            f"mounted here")
    raise ArtifactsUnreachable(
        f"{folder} is not study {study.study_name!r}'s artifact folder (its {MARKER} marker is "
        f"{'missing' if found is None else 'of study ' + repr(found.get('study'))}); pass --artifacts with the "
        f"folder shared by the machines running this study")


def unreachable(study: optuna.Study, number: int, folder: Path) -> str | None:
    """One line for trial `number` whose folder is not on this machine because its artifact folder is not
    reachable here (None: the artifact folder is here; the trial's files are simply missing)."""
    study_folder = folder.parent
    if study_folder.is_dir():
        return None
    return (f"trial {number} of {study.study_name!r}: its artifacts are in {folder}, which this machine cannot reach "
            f"({study_folder} does not exist here); mount the study's artifact folder there, or pass --artifacts PATH "
            f"where it is mounted")
