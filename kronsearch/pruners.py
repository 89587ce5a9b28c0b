"""A study's pruner (search.pruner), with the challenger rule: a race's costlier candidate stops once it trails.

Every trial reports the epochs of the plan it trains, so all are judged on one curve (backends.base.PlanSteps).
The pruners subclass Optuna's rather than wrap them: Optuna's samplers read a study's HyperbandPruner by its class
(optuna.pruners._filter_study), and a wrapper would hide it.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from kronsearch.record import TrialRecord
from kronsearch.space import Space


def trails_its_pick(study: optuna.Study, trial: FrozenTrial, warmup_steps: int) -> bool:
    """Whether `trial`, a challenger (TrialRecord.challenges: it trains a candidate its race found plausible, costlier
    than the plan the race's trial trained), reported a lower val accuracy at its last step than that trial's
    training did at the same step; never before `warmup_steps`.

    Why: a costlier plan becomes the study's pick (the tolerance rule) only by ending more than the tolerance above
    the cheaper one, and one that trails it at the same epoch of the same schedule would have to gain all of that
    and more in the epochs left. The race's later trials exist to decide what its evidence could not; trailing
    decides it. Measured (docs/benchmarks/search-cost.md, table 11, ten seeds): one_round studies 5-6% cheaper on a
    Fashion-MNIST MLP and a digits ViT (1.21x -> 1.11x and 1.01x -> 0.95x per_pattern's MACs), their picks within
    0.01 point at 1x per_pattern's MACs; at 24 epochs the challengers mostly led, and nothing was saved.
    """
    step = trial.last_step
    if step is None or step < warmup_steps:
        return False
    held = _held_value(study, TrialRecord.of(trial).challenges, step)
    return held is not None and trial.intermediate_values[step] < held


def trailing_note(study: optuna.Study, trial: optuna.Trial | FrozenTrial, step: int, value: float) -> str:
    """For a pruned trial's record: where `trial` challenges trial N's plan and reported `value` under N's at `step`
    (trails_its_pick), "; it trailed #N's training at that epoch (0.8750)"; else ""."""
    held_by = TrialRecord.of(trial).challenges
    held = _held_value(study, held_by, step)
    return "" if held is None or value >= held else f"; it trailed #{held_by}'s training at that epoch ({held:.4f})"


def _held_value(study: optuna.Study, number: int | None, step: int) -> float | None:
    """The val accuracy complete trial `number` reported at `step`, if any."""
    if number is None:
        return None
    held = next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number == number),
                None)
    return None if held is None else held.intermediate_values.get(step)


class ChallengerMedianPruner(optuna.pruners.MedianPruner):
    """Optuna's MedianPruner, and a challenger that trails its race's pick (trails_its_pick) after the same warmup.

    Examples:
        >>> pruner = ChallengerMedianPruner(n_startup_trials=3, n_warmup_steps=1)
    """

    def __init__(self, n_startup_trials: int, n_warmup_steps: int) -> None:
        super().__init__(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)
        self.warmup_steps = n_warmup_steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return super().prune(study, trial) or trails_its_pick(study, trial, self.warmup_steps)


class ChallengerHyperbandPruner(optuna.pruners.HyperbandPruner):
    """Optuna's HyperbandPruner, and a challenger that trails its race's pick (trails_its_pick) from its first step."""

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return super().prune(study, trial) or trails_its_pick(study, trial, 1)


def make_pruner(space: Space) -> optuna.pruners.BasePruner:
    """search.pruner, median or hyperband with the challenger rule; none (or several objectives) prunes nothing."""
    kind = space.search["pruner"]
    if kind == "none" or len(space.search["objectives"]) > 1:
        return optuna.pruners.NopPruner()  # Optuna cannot prune multi-objective studies
    if kind == "hyperband":
        return ChallengerHyperbandPruner(min_resource=1, max_resource=space.train["epochs"])
    # no verdict before a third of the epochs: early val accuracy says little about the end
    return ChallengerMedianPruner(n_startup_trials=3, n_warmup_steps=max(1, space.train["epochs"] // 3))
