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
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import optuna
import torch
import yaml
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from kronsearch.layers.errors import BadInput, RunFailure
from kronsearch.layers.kron_linear import DEFAULT_THRESHOLD
from kronsearch.layers.kronify import kronify
from kronsearch.layers.plan import parse_plan
from kronsearch.loading import dense_layers, model_bsr_tensors
from kronsearch.references import build_configured_model
from kronsearch.record import StudyRecord, TrialRecord, full_config, metrics, study_strategy, trial_kind
from kronsearch.report.trials import SCALAR_METRICS, artifact_dirs, check_tolerance, default_trial, fmt_accuracies
from kronsearch.storage import storage_file, study_storage_url, write_atomic

WEIGHTS_FILE = "model.safetensors"


class ExportError(RunFailure):
    """The trial's recorded data is not enough to export what was asked (e.g. no model config)."""


class MissingWeights(ExportError, FileNotFoundError):
    """The trial's saved weights are not where the study says (or it saved none)."""


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


def display_storage(url: str | None) -> str | None:
    """The storage URL for provenance: relative SQLite paths made absolute, passwords masked."""
    if url is None:
        return None
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = "sqlite:///" + str(Path(url[len("sqlite:///"):]).resolve())
    return re.sub(r"(://[^/:@]+:)[^/@]+@", r"\1***@", url)


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
    """The pattern file's content: layers, lambdas, scalar metrics, model, data and provenance."""
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
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
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
    where = ", ".join(str(p) for p in tried) or "the trial has no artifact_dir"
    raise MissingWeights(f"trial {trial.number} of {study.study_name!r} has no saved weights: "
                            f"{where} does not exist")


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file (never pickle). ExportError if the file is not valid safetensors."""
    try:
        return load_file(str(path))
    except OSError:
        raise
    except Exception as err:  # safetensors raises its own error type for a corrupt header
        raise ExportError(f"cannot read weights {path}: {err}") from None


def bsr_tensors(study: optuna.Study, trial: FrozenTrial,
                state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Every KronLinear layer's merged weight in BSR form, keyed "<layer>.bsr.{crow_indices,col_indices,values}".

    Rebuilds the trial's model (config model/data + metrics.plan), loads `state_dict` into it and
    merges each layer with the trial's pruning threshold. Returns the tensors and string metadata
    (per layer: size and block) for the safetensors header.
    """
    config = full_config(study, trial)
    try:
        model_config = dict(config["model"])
        input_shape, num_classes = tuple(config["data"]["input_shape"]), int(config["data"]["num_classes"])
    except (KeyError, TypeError) as err:
        raise ExportError(f"trial {trial.number}: its config lacks the model/data needed to rebuild the model "
                          f"for --bsr (missing {err})") from None
    model = build_configured_model(model_config, input_shape, num_classes)
    kronify(model, metrics(trial).get("plan") or {})
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise ExportError(f"trial {trial.number}: the saved weights do not fit the rebuilt model: "
                          f"{str(err).splitlines()[0]}") from None
    threshold = float((config.get("train") or {}).get("threshold", DEFAULT_THRESHOLD))
    return model_bsr_tensors(model, threshold)


def _copy_into(source: Path, f: IO[bytes]) -> None:
    with source.open("rb") as src:
        shutil.copyfileobj(src, f)


def bsr_path(weights: str | os.PathLike) -> Path:
    """best.safetensors -> best.bsr.safetensors, next to the weights file."""
    weights = Path(weights)
    return weights.with_name(f"{weights.stem}.bsr.safetensors")


def check_outputs(outputs: dict[str, Path], keep: list[Path]) -> None:
    """Refuse (BadInput) outputs that name one file twice, or a file to keep: the study's storage, the trial's
    weights, or any SQLite database (another storage). Paths are compared after resolving links."""
    seen: dict[str, str] = {}
    for option, path in outputs.items():
        real = os.path.realpath(path)
        if real in seen:
            raise BadInput(f"{seen[real]} and {option} are both {path}: each output needs a file of its own")
        seen[real] = option
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
    outputs = {"--out": out, "--weights": weights, "--bsr": bsr_path(weights) if bsr else None}
    url = storage_url or study_storage_url(study)
    check_outputs({k: Path(v) for k, v in outputs.items() if v is not None},
                  [p for p in (url and storage_file(url), source) if p])
    state_dict, sparse = None, None
    if source is not None:
        state_dict = load_weights(source)
        if bsr:
            sparse = bsr_tensors(study, chosen, state_dict)
    # The pattern file goes last: it only changes once the weights it describes are in place.
    result = ExportResult(study.study_name, chosen.number, Path(out), accuracies=fmt_accuracies(metrics(chosen)))
    if weights is not None:
        weights = Path(weights)
        if weights.suffix == ".pt":
            result.weights = write_atomic(weights, lambda f: torch.save(state_dict, f))
        else:
            result.weights = write_atomic(weights, lambda f: _copy_into(source, f))
    if sparse is not None:
        tensors, header = sparse
        result.bsr = write_atomic(bsr_path(weights), lambda f: f.write(safetensors_bytes(tensors, header)))
        result.notes += [f"{result.bsr} stores {layer} dense: it keeps {float(f['kept']):.0%} of its blocks, and "
                         f"in BSR it would take {int(f['bsr_bytes']):,} bytes against {int(f['dense_bytes']):,} dense"
                         for layer, f in dense_layers(header).items()]
    write_atomic(out, lambda f: f.write(text))
    return result
