"""The space file's schema, declared: one table per section, a Rule per key, and the Checker that applies them.

Every problem is a SpaceError naming the file, the key path and what is allowed. What a table
cannot say (a key that depends on another, a model that must be built to be checked) is checked
in kronsearch.space after the tables. pydantic v2 was considered (issue 12): its messages would
need rewriting per field to keep the file:key: allowed form, and the tables below are shorter
than the models plus their validators.
"""

from __future__ import annotations

import copy
import math
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from kronsearch.data import DATASETS
from kronsearch.layers.blocks import Block, parse_block
from kronsearch.layers.compute import COMPUTE_MODES
from kronsearch.layers.errors import BadInput
from kronsearch.models import MODELS
from kronsearch.record import RACES, STRATEGIES
from kronsearch.selection import RACE_FALLBACKS
from kronsearch.trainer import OPTIMIZERS, SCHEDULES, TrainConfig

MAX_EPOCHS = 10_000
MAX_CANDIDATES = 32  # per layer: every candidate is a full KronLinear in the one-round model
MAX_TRIALS = 100_000
SAMPLERS = ("tpe", "random", "nsga2")
PRUNERS = ("median", "hyperband", "none")
BACKENDS = ("local", "ray")
METRICS = {  # objective metric -> the only sensible direction
    "val_accuracy": "maximize", "train_macs": "minimize", "train_params": "minimize",
    "inference_nonzeros": "minimize", "final_macs": "minimize", "final_params": "minimize",
}
TOP_LEVEL = "(top level)"
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60


class SpaceError(BadInput):
    """A space file that cannot be run; the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class FloatRange:
    """A lambda range; low == high means a fixed value."""

    low: float
    high: float
    log: bool = True


def _anything(_: Any) -> bool:
    return True


@dataclass(frozen=True)
class Rule:
    """One key of a section: its default (... = required) and what a value must be.

    kind None leaves the value to a later check; a float kind accepts integers (stored as floats),
    bool only booleans; `nullable` lets None through unchecked.
    """

    default: Any = ...
    kind: type | None = None
    what: str = ""
    ok: Callable[[Any], bool] = _anything
    choices: tuple | None = None
    nullable: bool = False


def integer(low: int, high: int, default: Any = ..., nullable: bool = False) -> Rule:
    return Rule(default, int, f"an integer in [{low}, {high}]", lambda v: low <= v <= high, nullable=nullable)


def number(what: str, ok: Callable[[float], bool], default: Any = ..., nullable: bool = False) -> Rule:
    return Rule(default, float, what, ok, nullable=nullable)


def text(what: str, ok: Callable[[str], bool] = _anything, default: Any = ..., nullable: bool = False) -> Rule:
    return Rule(default, str, what, ok, nullable=nullable)


def choice(choices: tuple, default: Any = ...) -> Rule:
    return Rule(default, choices=tuple(choices))


def flag(default: bool) -> Rule:
    return Rule(default, bool, "true or false")


def later(default: Any = ...) -> Rule:
    """A key checked after the tables (it depends on other keys, or has its own structure)."""
    return Rule(default)


def globs(default: list) -> Rule:
    return Rule(default, list, "a list of glob patterns on layer names", lambda v: all(isinstance(g, str) for g in v))


POSITIVE = number("a number > 0", lambda v: 0 < v < 1e6)
NON_NEGATIVE = number("a number >= 0", lambda v: 0 <= v < 1e6)

TOP = {"name": text("a name of letters, digits, '.', '_' or '-', not ending in .db (search N's storage is N.db, its "
                    "trial folders N/: a search 'a.db' would put them where search 'a' keeps its storage)",
                    lambda v: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v) is not None
                    and not v.lower().endswith(".db")),
       "seed": integer(0, 2**31 - 1, 0), "data": later(), "model": later(), "train": later({}),
       "search": later({}), "backend": later({}), "space": later()}
REFERENCE = text("'package.module:function'", lambda v: re.fullmatch(r"[\w.]+:[\w.]+", v) is not None, None, True)
DATA = {"name": Rule(None, choices=DATASETS, nullable=True), "factory": REFERENCE,
        "root": text("a folder path", default=None, nullable=True),
        "val_fraction": number("a number in (0, 0.5]", lambda v: 0 < v <= 0.5, 0.1),
        "limit": integer(10, 10**8, None, nullable=True), "test_limit": integer(10, 10**8, None, nullable=True),
        "options": later({})}
MODEL = {"name": text(f"one of {', '.join(MODELS)} or 'timm:<model name>'",
                      lambda v: v in MODELS or (v.startswith("timm:") and len(v) > 5), None, True),
         "factory": REFERENCE, "options": later({}), "include": globs(["*"]), "exclude": globs([]),
         "checkpoint": text("a weights file (.safetensors or .pt)", default=None, nullable=True),
         "init": choice(("random", "dense"), "random")}
STUDY_RACE_FALLBACK = "cheapest"
"""A study's default (a space file's train.race_fallback): there the pick is the tolerance rule's (the cheapest
within search.tolerance of the best) among full trainings, and `cheapest` is that rule applied to the race's
evidence; `most_accurate` often trained the costliest block, which the rule then passed over (2x2, as costly as the
dense layer, in 3 of 5 races at 24 epochs). Measured (docs/benchmarks/search-cost.md, table 11, "The race's
fallback in a study"): hybrid studies 0.88x/0.79x/0.94x per_pattern's MACs against 1.01x/0.88x/1.31x (MLP, ViT,
24 epochs), one_round 1.21x/1.01x/1.64x against 1.43x/1.16x/2.48x; picks as cheap as per_pattern's, their
accuracy at 1x within one standard error of most_accurate's but for hybrid at 24 epochs (+0.49 point)."""
TRAIN_RULES = {
    "epochs": integer(1, MAX_EPOCHS), "finetune_epochs": integer(0, MAX_EPOCHS), "select_epochs": later(),
    "race_cap": number("a number >= 1 (the race's cap, times select_epochs)", lambda v: v >= 1),
    "race_fallback": choice(RACE_FALLBACKS),
    "batch_size": integer(1, 1_000_000), "optimizer": choice(OPTIMIZERS), "schedule": choice(SCHEDULES),
    "compute": choice(COMPUTE_MODES), "lr": POSITIVE, "s_lr_scale": POSITIVE, "weight_decay": NON_NEGATIVE,
    "momentum": NON_NEGATIVE, "warmup_epochs": NON_NEGATIVE, "threshold": NON_NEGATIVE,
    "threads": integer(1, 1024, nullable=True), "workers": integer(0, 256),
    "max_grad_norm": number("a number > 0", lambda v: v > 0, nullable=True),
    "device": text("auto, cpu, cuda or cuda:N", lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None),
}
# every TrainConfig field but those a trial sets itself, with TrainConfig's default (a study's race fallback apart)
TRAIN = {k: replace(TRAIN_RULES[k], default=STUDY_RACE_FALLBACK if k == "race_fallback" else getattr(TrainConfig, k))
         for k in TrainConfig.__dataclass_fields__ if k not in ("lambda2", "tolerance", "seed", "progress")}
SEARCH = {"strategy": choice(STRATEGIES, "one_round"), "trials": integer(1, MAX_TRIALS, 10),
          "objectives": later([{"metric": "val_accuracy"}]), "sampler": choice(SAMPLERS, "tpe"),
          "pruner": choice(PRUNERS, "median"), "timeout": number("seconds > 0", lambda v: v > 0, None, nullable=True),
          "per_layer_blocks": flag(False), "one_round_trials": later(None), "save_weights": flag(True),
          # which one_round trials race; the others train a plan of a finished race (kronsearch.strategies.race_plan)
          "races": choice(RACES, "per_rank"),
          # the artifact root shared by every machine (kronsearch.artifacts); relative to the space file
          "artifacts": text("a folder path", default=None, nullable=True),
          # accuracy points: a one-round contest and the reports keep the cheapest within this of the best
          "tolerance": number("a number of accuracy points in [0, 100]", lambda v: 0 <= v <= 100,
                              TrainConfig.tolerance)}
BACKEND = {"name": choice(BACKENDS, "local"),
           "address": text("null, 'auto' or 'ray://host:port'", default=None, nullable=True),
           "resources_per_trial": later(None), "max_concurrent": integer(1, 10_000, None, True),
           "max_retries": integer(0, 100, 1), "keep_session": flag(False), "heartbeat": integer(1, 3600, 60, True),
           "callbacks": Rule([], list, "a list of 'package.module:function' references to functions returning "
                                       "ray.tune.Callback objects",
                             lambda v: all(isinstance(r, str) and re.fullmatch(r"[\w.]+:[\w.]+", r) for r in v))}
RESOURCES = {key: number("a number >= 0", lambda v: 0 <= v <= 1024, default)
             for key, default in (("cpu", 1), ("gpu", 0))}
SPACE = {"blocks": later(), "ranks": later([1]), "lambda2": later()}
RETIRED = {"space.lambda1": "retired: the one round no longer weighs a group penalty; it races the candidates and "
                            "keeps the cheapest within search.tolerance (docs/strategies.md). Remove the key"}
"""Keys earlier versions read, with why they are refused now (a study that used one is a new study)."""
OBJECTIVE = {"metric": choice(tuple(METRICS)), "direction": later(None)}
RANGE = {"low": number("a finite number", math.isfinite), "high": number("a finite number", math.isfinite),
         "log": flag(True)}


def _clip(text: str, limit: int) -> str:
    """Hostile files have huge keys and values: messages show their start."""
    return text if len(text) <= limit else text[:limit] + "..."


class Checker:
    """Reads one file's sections, failing with the file and key path on the first problem."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> SpaceError:
        """The file, the key and the problem (a problem that already starts with the key keeps only the rest)."""
        if problem.startswith(f"{key} ") or problem.startswith(f"{key}:"):
            problem = problem[len(key):].lstrip(": ")
        return SpaceError(f"{self.path}: {_clip(key, 200)}: {_clip(problem, 2000)}")

    def section(self, raw: Any, key: str, table: Mapping[str, Rule]) -> dict:
        """A mapping with only the table's keys, defaults filled in, every value checked by its Rule."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise self.fail(key, f"must be a mapping, got {type(raw).__name__}")
        unknown = sorted(set(map(str, raw)) - set(table))
        retired = [k for k in unknown if f"{key}.{k}" in RETIRED]
        if retired:
            raise self.fail(f"{key}.{retired[0]}", RETIRED[f"{key}.{retired[0]}"])
        if unknown:
            raise self.fail(f"{key}.{unknown[0]}", f"unknown key; allowed: {', '.join(table)}")
        missing = [k for k, rule in table.items() if rule.default is ... and k not in raw]
        if missing:
            raise self.fail(f"{key}.{missing[0]}", "required")
        values = {k: copy.deepcopy(raw.get(k, rule.default)) for k, rule in table.items()}
        for k, rule in table.items():
            path = k if key == TOP_LEVEL else f"{key}.{k}"
            if values[k] is None and rule.nullable:
                continue
            if rule.choices is not None:
                self.choice(values[k], path, rule.choices)
            elif rule.kind is not None:
                values[k] = self.typed(values[k], path, rule.kind, rule.what, rule.ok)
        return values

    def keys(self, raw: Any, key: str) -> dict:
        """A free-form mapping (e.g. data.options): any keys, checked by whoever uses them."""
        return self.section(raw, key, {str(k): later(None) for k in (raw or {})} if isinstance(raw, dict) else {})

    def typed(self, value: Any, key: str, kind: type, what: str, ok: Callable[[Any], bool] = _anything) -> Any:
        """value if it is a `kind` (ints accepted as floats, bools only as bools) and passes `ok`."""
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind) or not ok(value):
            raise self.fail(key, f"must be {what}, got {_SHORT.repr(value)}")
        return value

    def integer(self, value: Any, key: str, low: int, high: int) -> int:
        return self.typed(value, key, int, f"an integer in [{low}, {high}]", lambda v: low <= v <= high)

    def choice(self, value: Any, key: str, allowed: tuple) -> Any:
        if value not in allowed:
            raise self.fail(key, f"must be one of {', '.join(map(str, allowed))}, got {_SHORT.repr(value)}")
        return value

    def float_range(self, raw: Any, key: str) -> FloatRange:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            raw = {"low": raw, "high": raw}
        spec = self.section(raw, key, RANGE)
        low, high, log = spec["low"], spec["high"], spec["log"]
        if log and low <= 0:
            raise self.fail(f"{key}.low", f"must be > 0 on a log scale, got {low}")
        if low < 0 or high < low:
            raise self.fail(key, f"needs 0 <= low <= high, got low={low}, high={high}")
        return FloatRange(low, high, log)

    def block_list(self, raw: Any, key: str) -> list[Block]:
        if not isinstance(raw, list) or not raw:
            raise self.fail(key, "must be a non-empty list of blocks like '4x4' or [4, 4]")
        if len(raw) > MAX_CANDIDATES:
            raise self.fail(key, f"{len(raw)} candidate blocks; at most {MAX_CANDIDATES} are allowed")
        blocks = []
        for i, item in enumerate(raw):
            try:
                block = parse_block(item)
            except (ValueError, TypeError) as err:
                raise self.fail(f"{key}[{i}]", str(err)) from None
            blocks.append(block)
        return list(dict.fromkeys(blocks))

    def objectives(self, raw: Any) -> list[dict]:
        """search.objectives: [{metric, direction}], val_accuracy first, each metric once."""
        if not isinstance(raw, list) or not raw:
            raise self.fail("search.objectives", "must be a non-empty list of {metric, direction}")
        objectives = []
        for i, item in enumerate(raw):
            spec = self.section({"metric": item} if isinstance(item, str) else item, f"search.objectives[{i}]",
                                OBJECTIVE)
            metric = spec["metric"]
            direction = spec["direction"] or METRICS[metric]
            if direction != METRICS[metric]:
                raise self.fail(f"search.objectives[{i}].direction", f"{metric} can only be {METRICS[metric]}d")
            objectives.append({"metric": metric, "direction": direction})
        if objectives[0]["metric"] != "val_accuracy":
            raise self.fail("search.objectives[0]", "the first objective must be val_accuracy")
        if len({o["metric"] for o in objectives}) != len(objectives):
            raise self.fail("search.objectives", "lists a metric twice")
        return objectives
