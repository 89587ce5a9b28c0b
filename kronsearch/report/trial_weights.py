"""A trial's weights as `kronsearch export` writes them: read from safetensors (never pickle), copied or
rewritten as a torch state dict (.pt), and merged into the `--bsr` file.

The only part of export that needs torch: export_trial imports this module when weights are asked for, so
exporting a pattern file alone stays a read command (docs/benchmarks/speed.md, table 13).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO

import optuna
import torch
from optuna.trial import FrozenTrial
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from kronsearch.atomic_write import write_atomic
from kronsearch.layers.kron_linear import DEFAULT_THRESHOLD
from kronsearch.layers.kronify import kronify
from kronsearch.loading import dense_layers, model_bsr_tensors
from kronsearch.record import full_config, metrics
from kronsearch.references import build_configured_model
from kronsearch.report.trials import ExportError, bsr_path

BsrFile = tuple[dict[str, torch.Tensor], dict[str, str]]  # the --bsr file's tensors and header


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file (never pickle). ExportError if the file is not valid safetensors."""
    try:
        return load_file(str(path))
    except OSError:
        raise
    except Exception as err:  # safetensors raises its own error type for a corrupt header
        raise ExportError(f"cannot read weights {path}: {err}") from None


def bsr_tensors(study: optuna.Study, trial: FrozenTrial, state_dict: dict[str, torch.Tensor]) -> BsrFile:
    """The `--bsr` file of the trial (kronsearch.loading.model_bsr_tensors: each KronLinear layer's merged
    weight in BSR form, or dense where that is not smaller).

    Rebuilds the trial's model (config model/data + metrics.plan), loads `state_dict` into it and
    merges each layer with the trial's pruning threshold.
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


def read_weights(study: optuna.Study, trial: FrozenTrial, source: Path,
                 bsr: bool) -> tuple[dict[str, torch.Tensor], BsrFile | None]:
    """Everything the weights outputs need, read and checked before any file is written."""
    state_dict = load_weights(source)
    return state_dict, bsr_tensors(study, trial, state_dict) if bsr else None


def copy_into(source: Path, f: IO[bytes]) -> None:
    """Stream `source` into the open file `f`."""
    with source.open("rb") as src:
        shutil.copyfileobj(src, f)


def write_weights(source: Path, weights: Path, state_dict: dict[str, torch.Tensor],
                  sparse: BsrFile | None) -> tuple[Path, Path | None, list[str]]:
    """Write the weights (a copy of `source`, or a torch state dict for a ".pt" name) and the `--bsr` file next
    to them. Returns both paths and a note per layer the BSR file stores dense."""
    if weights.suffix == ".pt":
        written = write_atomic(weights, lambda f: torch.save(state_dict, f))
    else:
        written = write_atomic(weights, lambda f: copy_into(source, f))
    if sparse is None:
        return written, None, []
    tensors, header = sparse
    bsr = write_atomic(bsr_path(weights), lambda f: f.write(safetensors_bytes(tensors, header)))
    notes = [f"{bsr} stores {layer} dense: it keeps {float(f['kept']):.0%} of its blocks, and in BSR it would "
             f"take {int(f['bsr_bytes']):,} bytes against {int(f['dense_bytes']):,} dense"
             for layer, f in dense_layers(header).items()]
    return written, bsr, notes
