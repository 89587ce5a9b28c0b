"""Your own Optuna objective: sample a pattern from a space file, record the trial as `kronsearch run` does.

    def objective(trial):
        spec = kronsearch.suggest(trial, "search_spaces/mlp.yaml")       # rank, lambda2, candidates
        model = my_model()
        kronsearch.kronify(model, candidates=spec.blocks(), rank=spec.rank)
        ...                                                               # your loop, with kronsearch.OneRound
        return kronsearch.record_trial(trial, one_round, val_accuracy=acc, model=model, input_shape=(1, 28, 28))

    optuna.create_study(storage="sqlite:///my.db", study_name="mine", direction="maximize").optimize(objective, 5)
    # then: kronsearch show mine --storage sqlite:///my.db (compare, export likewise)

`suggest` is the search's own sampling (kronsearch.strategies.suggest) and `record_trial` writes through the
search's own writers (kronsearch.record), so the study reads as one that `kronsearch run` wrote.
(`record_trial`, not `record`: kronsearch.record is the module of the trial records.)
"""

from __future__ import annotations

import os
from fnmatch import fnmatchcase
from typing import Any

import optuna
from torch import nn

import kronsearch
from kronsearch.layers.blocks import format_block, parse_block
from kronsearch.layers.costs import model_cost
from kronsearch.layers.errors import BadInput
from kronsearch.layers.kron_linear import DEFAULT_THRESHOLD
from kronsearch.layers.kronify import model_plan
from kronsearch.one_round import OneRound
from kronsearch.record import KINDS, SCALAR_METRICS, StudyRecord, TrialRecord, save_results, start, write_study
from kronsearch.record_check import checked_metrics
from kronsearch.space import Space, load_space
from kronsearch.strategies import suggest as suggest_spec
from kronsearch.trainer import block_sparsity
from kronsearch.trial_run import TrialSpec


class Suggested(TrialSpec):
    """A sampled pattern (kronsearch.trial_run.TrialSpec) with its blocks as kronify takes them."""

    def blocks(self, layer: str | None = None) -> list[tuple[int, int]]:
        """one_round: the candidate blocks of `layer` (the first glob matching it; None: the global list "*")."""
        for glob, blocks in self.candidates.items():
            if (layer is None and glob == "*") or (layer is not None and fnmatchcase(layer, glob)):
                return [parse_block(b) for b in blocks]
        return []


def suggest(trial: optuna.Trial, space: Space | str | os.PathLike, kind: str = "one_round") -> Suggested:
    """Sample one trial's pattern from the space file's `space` section, as `kronsearch run` does.

    one_round: the rank and lambda2 (the candidates are the space's blocks); per_pattern: the rank, lambda2
    and a block (per layer with search.per_layer_blocks), in `plan`. Tags the trial with its kind and the
    study with the space's strategy, objectives and tolerance, so `kronsearch show` reads it.
    """
    if kind not in KINDS:
        raise BadInput(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    space = space if isinstance(space, Space) else load_space(space)
    start(trial, kind)
    if StudyRecord.of(trial.study).strategy is None:
        objectives = space.search["objectives"]
        write_study(trial.study, strategy=kind, tolerance=space.search["tolerance"], space=space.raw,
                    space_path=str(space.path), kronsearch_version=kronsearch.__version__,
                    **({"objectives": objectives} if len(objectives) == len(trial.study.directions) else {}))
    spec = suggest_spec(trial, space, kind)
    return Suggested(spec.kind, spec.rank, spec.lambda2, spec.candidates, spec.plan)


def record_trial(trial: optuna.Trial, one_round: OneRound | None = None, *, val_accuracy: float,
                 model: nn.Module | None = None, input_shape: tuple[int, ...] | None = None,
                 config: dict | None = None, **metrics: Any) -> float:
    """Write the trial's standard record (kronsearch.record.save_results) and return val_accuracy in [0, 1],
    the value for the objective to return.

    one_round: its decisions give `selected` and `decisions` (how each layer's race decided, every candidate's
    estimate: Race.records) and its plan `plan`; without it, the model's Kronecker layers
    give the plan. model gives block_sparsity; with input_shape (one sample's, e.g. (1, 28, 28)) also
    final_params, final_macs and inference_nonzeros; further metrics (test_accuracy, train_macs, ... of
    record.SCALAR_METRICS) are kept as given. config: the trial's configuration (data, model, train).
    Every metric must be a finite plain number (numpy and torch scalars are converted), a fraction in [0, 1]
    for the accuracies and block_sparsity, whole and >= 0 for counts: else BadInput naming it, nothing written.
    """
    unknown = sorted(set(metrics) - set(SCALAR_METRICS))
    if unknown:
        raise BadInput(f"record_trial has no metric {', '.join(unknown)}; it records {', '.join(SCALAR_METRICS)}")
    metrics = checked_metrics(metrics, SCALAR_METRICS)
    checked = checked_metrics({"val_accuracy": val_accuracy}, ("val_accuracy",)).get("val_accuracy")
    if checked is None:
        raise BadInput("val_accuracy must be a finite number in [0, 1], got None")
    val_accuracy = checked
    if one_round is not None and not one_round.done:
        one_round.finish()
    if one_round is not None:
        plan = one_round.plan()
        selected = {n: d.block for n, d in one_round.decisions.items()}
        metrics = {**metrics, "decisions": one_round.race.records()}
    elif model is not None:
        plan, selected = model_plan(model), {}
    else:
        raise BadInput("record_trial needs the one_round or the trained model, to record the pattern")
    out = {**metrics, "val_accuracy": val_accuracy, "selected": selected,
           "plan": {n: {"block": format_block(p.block), "rank": p.rank} for n, p in plan.items()}}
    if model is not None:
        out.setdefault("block_sparsity", block_sparsity(model, DEFAULT_THRESHOLD)[0])
    if model is not None and input_shape is not None:
        cost = model_cost(model, input_shape).total
        out.update(final_params=cost.params, final_macs=cost.macs, inference_nonzeros=cost.nonzeros)
    if TrialRecord.of(trial).kind is None:
        start(trial, "one_round" if selected else "per_pattern")
    save_results(trial, out, config or {}, None)
    return val_accuracy
