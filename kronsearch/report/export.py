"""Export one trial of a study: its pattern file (YAML, readable by `kronsearch.load_plan`) and weights.

    from kronsearch.report.export import export_trial
    result = export_trial(study, "best.yaml", weights="best.safetensors", bsr=True)

Every file is written atomically (temp file in the same folder, fsync, os.replace), and nothing is
written until everything needed (document, weights, BSR tensors) has been read and checked, so a
failed export never leaves a half-written or mismatched set of files. Weights are only ever read
with safetensors (no pickle).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from kronsearch.artifacts import ArtifactsUnreachable, unreachable
from kronsearch.artifacts import storage_label as display_storage
from kronsearch.atomic_write import write_atomic
from kronsearch.layers.errors import BadInput
from kronsearch.layers.plan import parse_plan
from kronsearch.record import SCALAR_METRICS, StudyRecord, TrialRecord, full_config, metrics, study_strategy, trial_kind
from kronsearch.report.trials import (
    ExportError,
    MissingWeights,
    artifact_dirs,
    bsr_path,
    check_tolerance,
    default_trial,
    fmt_accuracies,
    malformed_notes,
)
from kronsearch.storage import storage_file, study_storage_url
from kronsearch.study_files import inside_study_folder, study_folders

WEIGHTS_FILE = "model.safetensors"


@dataclass
class ExportResult:
    """What export_trial wrote."""

    study: str
    trial: int
    pattern: Path
    weights: Path | None = None
    bsr: Path | None = None
    accuracies: str = ""  # report.trials.fmt_accuracies: the accuracies and how many examples each came from
    notes: list[str] = field(default_factory=list)  # what the user should know about the files, one line each

    def paths(self) -> list[Path]:
        return [p for p in (self.pattern, self.weights, self.bsr) if p is not None]


def find_trial(study: optuna.Study, number: int | None = None, tolerance: float | None = None) -> FrozenTrial:
    """Trial `number` of the study (must be COMPLETE), or the default (report.trials.default_trial): the pick
    within `tolerance` accuracy points (by default the study's search.tolerance) / the best-val Pareto trial.

    Raises BadInput for an unknown number or a trial that did not complete.
    """
    check_tolerance(tolerance)
    if number is None:
        return default_trial(study, tolerance)
    trials = study.get_trials(deepcopy=False)
    found = [t for t in trials if t.number == number]
    if not found:
        raise BadInput(f"study {study.study_name!r} has no trial {number} (it has {len(trials)} trials, "
                         f"numbered from 0)")
    trial = found[0]
    if trial.state != TrialState.COMPLETE:
        reason = TrialRecord.of(trial).fail_reason
        raise BadInput(f"trial {number} of {study.study_name!r} is {trial.state.name}, not COMPLETE"
                         + (f" ({reason})" if reason else "") + "; only complete trials can be exported")
    return trial


def lambdas(trial: FrozenTrial, study: optuna.Study) -> dict[str, float]:
    """lambda2 from the params (else the trial config); lambda1 too for one-round trials of studies from
    before the race (when one weighed a group penalty)."""
    train = full_config(study, trial)["train"]
    kind = trial_kind(trial, study_strategy(study))
    keys = ("lambda2",) if kind == "per_pattern" else ("lambda1", "lambda2")
    out = {}
    for key in keys:
        value = trial.params.get(key, train.get(key))
        if value is not None:
            out[key] = float(value)
    return out


def pattern_document(study: optuna.Study, trial: FrozenTrial, storage_url: str | None = None) -> dict:
    """The pattern file's content: layers, lambdas, scalar metrics, model, data and provenance (with `race_of`, the
    trial whose race it trained a plan of, where it reused one: search.races)."""
    m = metrics(trial)
    plan = m.get("plan")
    if not isinstance(plan, dict):
        raise ExportError(f"trial {trial.number} of {study.study_name!r} recorded no final plan (metrics.plan)")
    layers = {name: pattern.to_dict() for name, pattern in parse_plan(plan).items()}
    config = full_config(study, trial)
    return {
        "layers": layers,
        "lambdas": lambdas(trial, study),
        "metrics": {key: m[key] for key in SCALAR_METRICS if isinstance(m.get(key), (int, float))},
        "model": config.get("model"),
        "data": config.get("data"),
        "provenance": {
            "study": study.study_name,
            "trial": trial.number,
            "storage": display_storage(storage_url),
            "space_hash": StudyRecord.of(study).space_hash,
            "space_path": StudyRecord.of(study).space_path,
            "kronsearch_version": StudyRecord.of(study).kronsearch_version,
            "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            **({} if (race_of := TrialRecord.of(trial).race_of) is None else {"race_of": race_of}),
        },
    }


def weights_path(study: optuna.Study, trial: FrozenTrial) -> Path:
    """The trial's model.safetensors; follows "duplicate_of" to the trial that trained. MissingWeights if absent."""
    tried: list[Path] = []
    seen: set[int] = set()
    current: FrozenTrial | None = trial
    while current is not None and current.number not in seen:
        seen.add(current.number)
        for folder in artifact_dirs(study, current):
            path = folder / WEIGHTS_FILE
            if path.is_file():
                return path
            tried.append(path)
        original = TrialRecord.of(current).duplicate_of
        current = next((t for t in study.get_trials(deepcopy=False) if t.number == original), None) \
            if original is not None else None
    away = unreachable(study, trial.number, tried[0].parent) if tried else None
    if away is not None:
        raise ArtifactsUnreachable(away)
    where = ", ".join(str(p) for p in tried) or "the trial has no artifact_dir"
    raise MissingWeights(f"trial {trial.number} of {study.study_name!r} has no saved weights: "
                            f"{where} does not exist")


def check_outputs(outputs: dict[str, Path], keep: list[Path], folders: list[Path]) -> None:
    """Refuse (BadInput) outputs that name one file twice, a file to keep (the study's storage, the trial's weights,
    or any SQLite database: another storage), or a place inside a study's folder of trial folders (`folders`) or
    any trial folder (study_files.inside_study_folder). Paths are compared after resolving links."""
    seen: dict[str, str] = {}
    for option, path in outputs.items():
        real = os.path.realpath(path)
        if real in seen:
            raise BadInput(f"{seen[real]} and {option} are both {path}: each output needs a file of its own")
        seen[real] = option
        inside = inside_study_folder(path, folders)
        if inside is not None:
            raise BadInput(f"{option} {path} lies inside {inside}, a study's artifact folder: exports never write "
                           f"there (they would overwrite or mix with the trials' own files); write it elsewhere")
        kept = next((k for k in keep if os.path.realpath(k) == real), None)
        if kept is None and path.is_file():
            with path.open("rb") as f:
                kept = path if f.read(16) == b"SQLite format 3\x00" else None
        if kept is not None:
            raise BadInput(f"{option} {path} would overwrite {kept}, a study storage or trial weights file; "
                           f"write the export to another file")


def export_trial(
    study: optuna.Study,
    out: str | os.PathLike,
    *,
    trial: int | None = None,
    storage_url: str | None = None,
    weights: str | os.PathLike | None = None,
    bsr: bool = False,
    tolerance: float | None = None,
) -> ExportResult:
    """Export a trial (default: the study's pick, find_trial) to the pattern file `out`, and optionally its weights.

    weights: copy model.safetensors there (a ".pt" suffix writes a torch state dict with torch.save).
    bsr: also write "<weights stem>.bsr.safetensors" with every KronLinear's merged BSR weight.
    Raises BadInput (bad request: unknown/non-complete trial, --bsr without weights),
    MissingWeights (the trial's weights are missing) or ExportError (the trial lacks recorded data).
    """
    if bsr and weights is None:
        raise BadInput("--bsr needs --weights FILE (the BSR file is written next to it)")
    chosen = find_trial(study, trial, tolerance)
    document = pattern_document(study, chosen, storage_url)
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True).encode()
    source = weights_path(study, chosen) if weights is not None else None
    outputs = {"--out": out, "--weights": weights, "--bsr": bsr_path(weights) if bsr and weights is not None else None}
    url = storage_url or study_storage_url(study)
    check_outputs({k: Path(v) for k, v in outputs.items() if v is not None},
                  [p for p in (url and storage_file(url), source) if p], study_folders(study))
    result = ExportResult(study.study_name, chosen.number, Path(out), accuracies=fmt_accuracies(metrics(chosen)))
    if source is not None and weights is not None:  # source is only found for given weights
        # torch is imported only here: a pattern file alone is exported as a read command (table 13)
        from kronsearch.report.trial_weights import read_weights, write_weights

        state_dict, sparse = read_weights(study, chosen, source, bsr)  # everything checked before any write
        result.weights, result.bsr, result.notes = write_weights(source, Path(weights), state_dict, sparse)
    # The pattern file goes last: it only changes once the weights it describes are in place.
    write_atomic(out, lambda f: f.write(text))
    result.notes += malformed_notes([study])
    return result
