"""One trial: a pattern spec -> model -> trainer -> metrics and artifacts. No Optuna in here.

The same function runs in the local backend and inside Ray workers, so a TrialSpec is plain data.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save as safetensors_bytes
from torch.utils.data import TensorDataset

from kronsearch.atomic_write import write_atomic
from kronsearch.data import DataSplits, load_dataset
from kronsearch.data.batches import Batches
from kronsearch.errors import user_code_exits
from kronsearch.layers.blocks import parse_block
from kronsearch.layers.kronify import kronify
from kronsearch.layers.plan import LayerPattern
from kronsearch.progress import BarStatus
from kronsearch.references import build_configured_model, factory_data, load_checkpoint
from kronsearch.space import Space, SpaceError
from kronsearch.storage import StorageError
from kronsearch.trainer import EpochReport, TrainingDiverged, TrainResult, seed_everything, train


@dataclass
class TrialSpec:
    """What one trial trains.

    With `candidates` (kind "one_round"), every decomposed layer gets PatternSelectLinear over them
    (glob -> blocks, first matching glob wins), and the trial races them. Otherwise each layer in `plan`
    gets its one block (layer -> "HxW"); layers not in it stay dense: a per_pattern trial, or a one_round
    trial that trains a plan of trial `race_of`'s race (search.races).
    """

    kind: str
    rank: int
    lambda2: float
    candidates: dict[str, list[str]] = field(default_factory=dict)
    plan: dict[str, str] = field(default_factory=dict)
    race_of: int | None = None

    @property
    def races(self) -> bool:
        """Whether the trial races candidates (then trains the winner), rather than training `plan`."""
        return bool(self.candidates)


@functools.lru_cache(maxsize=4)
def _cached_data(name: str, root: str | None, val_fraction: float, seed: int, limit: int | None,
                 test_limit: int | None, options: str) -> DataSplits:
    return load_dataset(name, root, val_fraction=val_fraction, seed=seed, limit=limit, test_limit=test_limit,
                        **json.loads(options))


def load_space_data(space: Space) -> DataSplits:
    """The space's dataset, loaded once per process (every trial of a search uses the same splits)."""
    d = space.data
    if d["factory"] is not None:
        return factory_data(d["factory"], d["options"] or {})
    return _cached_data(d["name"], d["root"], d["val_fraction"], space.seed, d["limit"],
                        d["test_limit"], json.dumps(d["options"] or {}, sort_keys=True))


def build_trial_model(space: Space, spec: TrialSpec) -> torch.nn.Module:
    """The space's model with the spec's pattern applied (seeded, so a trial's init is reproducible)."""
    seed_everything(space.seed)
    model = build_configured_model(space.model, space.input_shape, space.num_classes)
    if space.model["checkpoint"] is not None:
        load_checkpoint(model, space.model["checkpoint"])
    init = space.model["init"]
    if spec.races:
        for glob, blocks in spec.candidates.items():  # first matching glob wins: kronify skips replaced layers
            layers = [name for name in space.layers if fnmatchcase(name, glob)]
            kronify(model, candidates=[parse_block(b) for b in blocks], rank=spec.rank, include=layers, init=init)
    else:
        kronify(model, {layer: LayerPattern(parse_block(b), spec.rank) for layer, b in spec.plan.items()}, init=init)
    return model


def check_fit(space: Space, batch: int = 16) -> None:
    """One forward pass of the space's model on a real batch of each split, before anything trains: the model
    must return one (batch, num_classes) tensor of logits and every label must be an integer class index in
    [0, num_classes) (all of them for in-memory data, the first batch otherwise; float labels are refused).
    SpaceError naming the key otherwise: every trial would fail the same way."""
    with user_code_exits(f"{space.path}: the data or model code (checked before training)"):
        _check_fit(space, batch)


def _check_fit(space: Space, batch: int) -> None:
    data, classes = load_space_data(space), space.num_classes
    model = build_configured_model(space.model, space.input_shape, classes).eval()
    for split in ("train", "val", "test"):
        dataset = getattr(data, split)
        first = next(Batches(dataset, batch, "cpu").ordered(), None)
        if first is None:
            continue
        images, labels = first
        raw = dataset.tensors[1] if isinstance(dataset, TensorDataset) else torch.as_tensor(dataset[0][1])
        if raw.is_floating_point() or raw.is_complex() or raw.dtype == torch.bool:  # the loss takes class indices
            raise SpaceError(f"{space.path}: key data: {split} labels are {raw.dtype}; they must be integer class "
                             f"indices in 0..{classes - 1} (torch.int64, e.g. labels.long())")
        if isinstance(dataset, TensorDataset):
            labels = dataset.tensors[1]
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < classes:
            raise SpaceError(f"{space.path}: key data: {split} labels run from {int(labels.min())} to "
                             f"{int(labels.max())}; with num_classes {classes} they must lie in 0..{classes - 1}")
        try:
            with torch.no_grad():
                out = model(images)
        except Exception as err:  # noqa: BLE001 - the user's model on the user's data
            raise SpaceError(f"{space.path}: key model: a forward pass on a {split} batch of shape "
                             f"{tuple(images.shape)} failed: {type(err).__name__}: {err}") from None
        want = (len(images), classes)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
            raise SpaceError(f"{space.path}: key model: it returns {got} for a {split} batch of shape "
                             f"{tuple(images.shape)}; it must return one tensor of logits of shape {want} "
                             f"(batch, num_classes of the data)")


def trial_config(space: Space, spec: TrialSpec) -> dict:
    """The full resolved config of a trial, stored with it (enough to rebuild and retrain it)."""
    return {
        "space": space.name, "seed": space.seed,
        "data": {**space.data, "input_shape": list(space.input_shape), "num_classes": space.num_classes},
        "model": space.model,
        "train": {**space.train, "tolerance": space.search["tolerance"], "lambda2": spec.lambda2},
        "pattern": asdict(spec),
    }


def run_trial(
    space: Space,
    spec: TrialSpec,
    artifact_dir: str | os.PathLike | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    progress: bool = False,
    bar_status: BarStatus | None = None,
) -> tuple[dict, list[dict]]:
    """Train one pattern; return (metrics, per-epoch history), saving weights when artifact_dir is given.

    Raises TrainingDiverged on a NaN/inf loss or NaN/inf weights at the end; on_epoch may raise to
    stop (pruning). Raises StorageError when the artifacts cannot be written (full disk, unwritable
    folder): that is no fault of the trial, and the search stops instead of failing every trial after
    it; earlier trials' artifacts are untouched (every file is written to a temporary name first).
    """
    with user_code_exits("the trial's data or model code"):
        data = load_space_data(space)
        model = build_trial_model(space, spec)
        config = space.train_config(lambda2=spec.lambda2, progress=progress)
        result: TrainResult = train(model, data, config, on_epoch, bar_label=bar_status.label if bar_status else "",
                                    bar_status=bar_status)
    assert result.model is not None  # train() returns the model it trained
    bad = [name for name, p in result.model.named_parameters() if not torch.isfinite(p).all()]
    if bad:  # the last step can leave NaN/inf weights without a non-finite loss
        raise TrainingDiverged(f"non-finite weights after training in {', '.join(bad[:3])}")
    metrics = {**result.metrics(), "val_examples": len(data.val), "test_examples": len(data.test)}
    history = metrics.pop("history")
    if artifact_dir is not None:
        try:
            save_artifacts(Path(artifact_dir), result, metrics, history, trial_config(space, spec))
        except (OSError, SafetensorError) as err:  # safetensors reports a full disk as SafetensorError
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise StorageError(f"cannot save the trial's weights and metrics to {artifact_dir}: "
                               f"{reason}; free disk space or fix the folder's permissions, "
                               f"then re-run to resume (finished trials are kept)") from err
    return metrics, history


def save_artifacts(folder: Path, result: TrainResult, metrics: dict, history: list[dict], config: dict) -> None:
    """trial-<n>/model.safetensors, metrics.json, history.json (per epoch) and config.json, each written atomically
    (os.replace swaps a link planted as a file, never its target); a link planted as the folder is refused.

    The per-epoch history lives here, not in the study: it is read back by kronsearch.report.trial_history.
    """
    if folder.is_symlink():  # planted: every file below would be written wherever it points
        raise StorageError(f"the trial folder {folder} is a symbolic link to {os.path.realpath(folder)}; a run never "
                           f"writes through a link out of its studies folder: remove the link and re-run")
    folder.mkdir(parents=True, exist_ok=True)
    assert result.model is not None  # train() returns the model it trained
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    write_atomic(folder / "model.safetensors", lambda f: f.write(safetensors_bytes(state)))
    for name, payload in (("metrics.json", metrics), ("history.json", history), ("config.json", config)):
        text = json.dumps(payload, indent=1, default=str).encode("utf-8")
        write_atomic(folder / name, lambda f, text=text: f.write(text))  # type: ignore[misc]
