"""Strategies: how an Optuna trial turns into a TrialSpec, duplicates, and the hybrid's seed.

- one_round: a trial is one pattern-selection training over every candidate block; it searches
  rank and lambda2, and records the selected block per layer.
- per_pattern: a trial trains one block (global, or per layer with search.per_layer_blocks), a rank
  and lambda2: the expensive baseline the paper replaces.
- hybrid: one_round first, then per_pattern seeded (enqueue_trial) with the best one-round pick.

A one_round study races once per rank (search.races, `shared_race`): a later one_round trial of that rank
trains a plan of that race alone (`race_plan`), as a per_pattern trial of it would, and records the race it
reuses (race_of). Measured (docs/benchmarks/search-cost.md, table 11, five seeds): a study's MACs against
per_pattern's 1.85x -> 1.41x (MLP) and 1.58x -> 1.44x (ViT) against a race per trial, its tolerance pick at 2x
per_pattern's MACs at or above per_pattern's on 4 of 5 seeds of each (3 of 5 before).
"""

from __future__ import annotations

from collections import Counter

import optuna
from optuna.trial import FrozenTrial, TrialState

from kronsearch.layers.blocks import format_block
from kronsearch.record import (
    RACES,
    Strategy,
    StudyRecord,
    TrialRecord,
    enqueue_seed,
    reuse_race,
    study_strategy,
    tolerance_pick,
    trial_kind,
)
from kronsearch.space import FloatRange, Space
from kronsearch.trial_run import TrialSpec


def _suggest_lambda(trial: optuna.Trial, name: str, spec: FloatRange) -> float:
    return trial.suggest_float(name, spec.low, spec.high, log=spec.log and spec.low < spec.high)


def global_block_choices(space: Space) -> list[str]:
    """Blocks a global per_pattern trial may pick: those dividing at least one decomposed layer."""
    return list(dict.fromkeys(format_block(b) for layer in space.layers for b in space.layer_blocks(layer)))


def suggest(trial: optuna.Trial, space: Space, kind: str) -> TrialSpec:
    """Sample one trial's pattern from the space (define-by-run)."""
    rank = trial.suggest_categorical("rank", space.ranks)
    lambda2 = _suggest_lambda(trial, "lambda2", space.lambda2)
    if kind == Strategy.ONE_ROUND:
        candidates = {glob: [format_block(b) for b in blocks] for glob, blocks in space.blocks.items()}
        return TrialSpec(kind, rank, lambda2, candidates=candidates)
    if space.search["per_layer_blocks"]:
        plan = {layer: trial.suggest_categorical(f"block:{layer}", [format_block(b) for b in space.layer_blocks(layer)])
                for layer in space.layers if space.layer_blocks(layer)}
    else:
        block = trial.suggest_categorical("block", global_block_choices(space))
        plan = {layer: block for layer in space.layers
                if block in [format_block(b) for b in space.layer_blocks(layer)]}
    return TrialSpec(kind, rank, lambda2, plan=plan)


def find_duplicate(study: optuna.Study, trial: optuna.Trial, kind: str) -> FrozenTrial | None:
    """An earlier complete trial of the same kind with exactly these params, if any."""
    for earlier in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if earlier.number != trial.number and TrialRecord.of(earlier).kind == kind and earlier.params == trial.params:
            return earlier
    return None


def seed_source(study: optuna.Study, trial: optuna.Trial, spec: TrialSpec) -> FrozenTrial | None:
    """The complete one_round trial a hybrid's seeded per_pattern trial (seed_hybrid) was seeded from, where that
    trial trained this trial's plan with its rank and lambda2; else None. The seeded trial is then answered from it,
    as a repeated configuration is: a racing trial's winner, or a trial that reused a race, trains its plan for
    `epochs` as a per_pattern trial of it would, and training the seed again was one full training of the study's
    best configuration twice (on a 24-epoch MLP, 2.5e10 of a study's 7.0e10 MACs)."""
    number = TrialRecord.of(trial).seeded_from
    if number is None:  # every trial but one: no read of the study
        return None
    source = next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                   if t.number == number), None)
    if source is None or (source.params.get("rank"), source.params.get("lambda2")) != (spec.rank, spec.lambda2):
        return None
    return source if (TrialRecord.of(source).metrics or {}).get("selected") == spec.plan else None


def shared_race(study: optuna.Study, space: Space, rank: int) -> FrozenTrial | None:
    """The finished race a new one_round trial of `rank` trains a plan of, by search.races (RACES): among the
    complete one_round trials that raced (not reusing a race, not a duplicate) of the same rank ("per_rank") or of
    any rank ("once"), the tolerance pick (record.tolerance_pick: the cheapest within search.tolerance of the best
    val accuracy, as show and export choose); None with "per_trial", or before such a trial has finished (trials
    started meanwhile race too)."""
    races = space.search["races"]
    if races not in RACES[:2]:
        return None
    raced = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if (rec := TrialRecord.of(t)).kind == Strategy.ONE_ROUND and rec.race_of is None
             and rec.duplicate_of is None and (rec.metrics or {}).get("selected")
             and (races == "once" or t.params.get("rank") == rank)]
    return tolerance_pick(raced, space.search["tolerance"])


def reuse(trial: optuna.Trial, spec: TrialSpec, source: FrozenTrial, tolerance: float) -> TrialSpec:
    """The one_round trial `spec` turned into training a plan of `source`'s race alone (`race_plan`; its rank and
    lambda2 its own), recorded on the trial (race_of; challenges where the plan is a costlier plausible candidate)."""
    plan, challenger = race_plan(trial.study, source, trial.number, tolerance)
    reuse_race(trial, source.number, challenger)
    return TrialSpec(spec.kind, spec.rank, spec.lambda2, plan=plan, race_of=source.number)


def race_plan(study: optuna.Study, source: FrozenTrial, number: int, tolerance: float) -> tuple[dict[str, str], bool]:
    """(layer -> block that trial `number`, reusing `source`'s race, trains; whether that plan challenges the race's
    pick). Where a layer's race fell back (its evidence did not separate the candidates), the other candidates it
    found plausible (within the tolerance and noise of the most accurate at its cap: Decision.plausible) are each
    trained once, cheapest first, by the race's next trials, so full trainings decide what the race could not; after
    them (and where every layer decided by evidence) the tolerance pick among the race's trial and the complete
    trials that reused it. A plausible candidate costlier than the race's pick in every layer where they differ
    challenges it: it can become the study's pick only by ending more than the tolerance above it, and
    pruners.trails_its_pick stops it once it trails the pick's training at the same epoch."""
    raced = TrialRecord.of(source).metrics or {}
    selected, decisions = raced["selected"], raced.get("decisions") or {}
    plausible = {layer: list((decisions.get(layer) or {}).get("plausible") or []) for layer in selected}
    others = {layer: [b for b in plausible[layer] if b != block] for layer, block in selected.items()}
    earlier = [t for t in study.get_trials(deepcopy=False)
               if t.number < number and TrialRecord.of(t).race_of == source.number]
    turn = len(earlier)
    if turn < max(map(len, others.values()), default=0):
        plan = {layer: others[layer][turn] if turn < len(others[layer]) else block
                for layer, block in selected.items()}
        differ = [layer for layer, block in selected.items() if plan[layer] != block]
        return plan, all(selected[layer] in plausible[layer]
                         and plausible[layer].index(plan[layer]) > plausible[layer].index(selected[layer])
                         for layer in differ)
    best = tolerance_pick([source, *earlier], tolerance) or source
    return dict((TrialRecord.of(best).metrics or {}).get("selected") or selected), False


def seed_params(space: Space, source: FrozenTrial) -> dict:
    """per_pattern params reproducing a one_round trial's selection (its rank and lambda2 too).

    Without per-layer blocks, the block most layers selected stands for all of them.
    """
    selected = (TrialRecord.of(source).metrics or {})["selected"]
    params = {"rank": source.params["rank"], "lambda2": source.params["lambda2"]}
    if space.search["per_layer_blocks"]:
        params.update({f"block:{layer}": block for layer, block in selected.items()})
    else:
        params["block"] = Counter(selected.values()).most_common(1)[0][0]
    return params


def seed_hybrid(study: optuna.Study, space: Space) -> int | None:
    """Enqueue the one-round trials' tolerance pick (the cheapest within search.tolerance of the best val
    accuracy, the rule show and export use) as the first per_pattern trial (once). Returns its source trial."""
    if StudyRecord.of(study).hybrid_seeded_from is not None:
        return None
    strategy = study_strategy(study)
    one_round = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if trial_kind(t, strategy) == Strategy.ONE_ROUND]
    source = tolerance_pick(one_round, space.search["tolerance"])
    if source is None or not (TrialRecord.of(source).metrics or {}).get("selected"):
        return None
    enqueue_seed(study, seed_params(space, source), source.number)
    return source.number
