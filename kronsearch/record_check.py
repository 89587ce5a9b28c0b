"""What a trial's kronsearch user attrs may hold: checked when written (record_trial, a run's results) and
when read (every report).

A study is also written by other tools (a user's own objective, Optuna's API, a database edited by hand), so
one malformed attr must not stop show, compare, export or plot for the rest of the study: on read, an attr
that is not what kronsearch writes is read as missing and the trial carries one line saying which and why.
On write, the same rules refuse it with a BadInput naming the metric and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from kronsearch.layers.errors import BadInput

FRACTIONS = ("val_accuracy", "test_accuracy", "block_sparsity")  # numbers in [0, 1]
COUNTS = ("val_examples", "test_examples", "train_params", "train_macs", "train_macs_total", "final_params",
          "final_macs", "inference_nonzeros")  # whole numbers >= 0
SECONDS = ("wall_time",)  # numbers >= 0
TEXTS = ("kind", "artifact_dir", "fail_reason", "skipped", "interrupted", "worker", "worker_started", "ray_worker")
TRIAL_NUMBERS = ("duplicate_of", "retry_of", "seeded_from", "race_of", "challenges")
SHOWN = 40  # characters of a malformed value quoted in a message
SCALARS = frozenset(FRACTIONS + COUNTS + SECONDS)


def allowed(name: str) -> str:
    """What metric `name` may be, in words."""
    if name in FRACTIONS:
        return "a finite number in [0, 1]"
    if name in COUNTS or name in TRIAL_NUMBERS:
        return "a whole number >= 0"
    return "a finite number >= 0"


def scalar_metric(name: str, value: Any) -> int | float:
    """A scalar metric as a plain Python number: numpy and torch scalars (and one-element tensors) converted.

    ValueError saying what `name` allows: a string, a bool, a tensor of several elements, NaN or infinity,
    a negative number, a fraction outside [0, 1], a count that is not whole."""
    if callable(getattr(value, "item", None)) and not isinstance(value, (bool, int, float)):
        size = value.numel() if callable(getattr(value, "numel", None)) else getattr(value, "size", 1)
        if size != 1:
            raise ValueError(f"{name} must be one number ({allowed(name)}), got a {type(value).__name__} of {size} "
                             f"elements")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be {allowed(name)}, got {shown(value)}")
    if value < 0 or (name in FRACTIONS and value > 1):
        raise ValueError(f"{name} must be {allowed(name)}, got {shown(value)}")
    if name in COUNTS:
        if not float(value).is_integer():
            raise ValueError(f"{name} must be {allowed(name)}, got {shown(value)}")
        return int(value)
    return float(value) if name in FRACTIONS + SECONDS else value


def checked_metrics(metrics: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The given scalar metrics of `names` (None skipped) checked by scalar_metric; BadInput on the first bad one."""
    out = {}
    for name in names:
        if metrics.get(name) is not None:
            try:
                out[name] = scalar_metric(name, metrics[name])
            except ValueError as err:
                raise BadInput(str(err)) from None
    return out


def shown(value: Any) -> str:
    """repr(value), cut to SHOWN characters."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN - 3] + "..."


STUDY_TEXTS = ("strategy", "space_hash", "space_path", "kronsearch_version")  # a study's (artifacts_dir: storage's)
_RULES = {**dict.fromkeys(FRACTIONS, "fraction"), **dict.fromkeys(COUNTS, "count"), **dict.fromkeys(SECONDS, "seconds"),
          **dict.fromkeys(TEXTS + STUDY_TEXTS, "text"), **dict.fromkeys(TRIAL_NUMBERS, "count"), "config": "mapping",
          "metrics": "mapping", "history": "list", "objectives": "list", "space": "mapping",
          "space_identity": "mapping", "trial_config": "mapping", "hybrid_seeded_from": "count", "tolerance": "points"}
_WHAT = {"text": "text", "mapping": "a mapping", "list": "a list", "count": "a whole number >= 0",
         "points": "a number of accuracy points in [0, 100]"}


def _well_formed(rule: str, value: Any) -> bool:
    """Whether a value already is what its rule keeps as it is (the common case on read, so checked first and fast;
    anything else goes through _attr_problem, which converts or explains)."""
    kind = type(value)
    if rule == "text":
        return kind is str
    if rule == "mapping":
        return kind is dict
    if rule == "list":
        return kind is list
    if rule == "count":
        return kind is int and value >= 0
    if kind is not int and kind is not float:
        return False
    high = 1 if rule == "fraction" else 100 if rule == "points" else math.inf
    return 0 <= value <= high and value < math.inf


def _attr_problem(name: str, value: Any) -> tuple[Any, str | None]:
    """(the value as read, or None; why it was dropped, or None) for one user attr of a trial."""
    if name in SCALARS:
        try:
            return scalar_metric(name, value), None
        except ValueError:
            return None, f"{name} {shown(value)} (not {allowed(name)})"
    return None, f"{name} {shown(value)} (not {_WHAT[_RULES[name]]})"


def _metric_problem(key: str, value: Any) -> tuple[Any, str | None]:
    """_attr_problem for one entry of the "metrics" user attr: its scalars, "selected" (layer -> block text) and
    "plan" (layer -> {block, rank})."""
    if key == "selected" and not (type(value) is dict and all(type(b) is str for b in value.values())):
        return None, f"metrics.selected {shown(value)} (not a mapping of layer to block)"
    if key == "plan" and not (type(value) is dict and all(type(p) is dict for p in value.values())):
        return None, f"metrics.plan {shown(value)} (not a mapping of layer to {{block, rank}})"
    if key in SCALARS and not _well_formed(_RULES[key], value):
        value, problem = _attr_problem(key, value)
        return value, None if problem is None else f"metrics.{problem}"
    return value, None


def _metrics_problems(metrics: dict) -> tuple[dict, list[str]]:
    """The "metrics" user attr with its malformed entries dropped (older studies keep every metric there); the
    same dict when nothing is."""
    checked = {key: _metric_problem(key, value) for key, value in metrics.items()}
    problems = [problem for _, problem in checked.values() if problem is not None]
    if not problems and all(metrics[key] is value for key, (value, _) in checked.items()):
        return metrics, []
    return {key: value for key, (value, problem) in checked.items() if problem is None}, problems


def checked_attrs(attrs: dict[str, Any], names: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """({name: value} of the user attrs `names`, a malformed one as None; what was malformed, one phrase each)."""
    out, problems = {}, []
    for name in names:
        value = attrs.get(name)
        if value is not None:
            rule = _RULES.get(name)
            if rule is not None and not _well_formed(rule, value):
                value, problem = _attr_problem(name, value)
                if problem is not None:
                    problems.append(problem)
            if name == "metrics" and value is not None:
                value, inner = _metrics_problems(value)
                problems += inner
        out[name] = value
    return out, problems


_CHECKED: dict[tuple[int, type], tuple[dict, tuple, Any, str | None]] = {}
CHECKED_CACHE = 20_000
"""Records whose check is kept: the reports read a trial's record about 18 times per command, and checking it
each time made show and compare of 3,000 trials 1.3x as slow."""


def checked_record(attrs: dict[str, Any], cls: type) -> tuple[Any, str | None]:
    """(the cls record of these user attrs, checked by checked_attrs; its malformed attrs in one line or None), kept per
    attrs dict: Optuna replaces a trial's dict on every write, and a value replaced in it changes the fingerprint of
    its values' identities. (A study's user_attrs is a fresh copy at every read: StudyRecord.of checks it uncached.)"""
    fingerprint = tuple(map(id, attrs.values()))
    kept = _CHECKED.get((id(attrs), cls))
    if kept is not None and kept[0] is attrs and kept[1] == fingerprint:
        return kept[2], kept[3]
    fields, problems = checked_attrs(attrs, tuple(f.name for f in dataclasses.fields(cls)))
    record, line = cls(**fields), "; ".join(problems) or None
    if len(_CHECKED) >= CHECKED_CACHE:
        _CHECKED.clear()
    _CHECKED[(id(attrs), cls)] = (attrs, fingerprint, record, line)  # the dict is held: its id is not reused meanwhile
    return record, line
