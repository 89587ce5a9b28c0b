"""What a trial's kronsearch user attrs may hold: checked when written (record_trial, a run's results) and
when read (every report).

A study is also written by other tools (a user's own objective, Optuna's API, a database edited by hand), so
one malformed attr must not stop show, compare, export or plot for the rest of the study: on read, an attr
that is not what kronsearch writes is read as missing and the trial carries one line saying which and why.
On write, the same rules refuse it with a BadInput naming the metric and what is allowed.
"""

from __future__ import annotations

import math
from typing import Any

from kronsearch.layers.errors import BadInput

FRACTIONS = ("val_accuracy", "test_accuracy", "block_sparsity")  # numbers in [0, 1]
COUNTS = ("val_examples", "test_examples", "train_params", "train_macs", "train_macs_total", "final_params",
          "final_macs", "inference_nonzeros")  # whole numbers >= 0
SECONDS = ("wall_time",)  # numbers >= 0
TEXTS = ("kind", "artifact_dir", "fail_reason", "skipped", "interrupted", "worker", "worker_started", "ray_worker")
TRIAL_NUMBERS = ("duplicate_of", "retry_of", "seeded_from")
SHOWN = 40  # characters of a malformed value quoted in a message


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


def _attr_problem(name: str, value: Any) -> tuple[Any, str | None]:
    """(the value as read, or None; why it was dropped, or None) for one user attr of a trial."""
    if name in FRACTIONS + COUNTS + SECONDS:
        try:
            return scalar_metric(name, value), None
        except ValueError:
            return None, f"{name} {shown(value)} (not {allowed(name)})"
    if name in TEXTS and not isinstance(value, str):
        return None, f"{name} {shown(value)} (not text)"
    if name in TRIAL_NUMBERS and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        return None, f"{name} {shown(value)} (not {allowed(name)})"
    if name in ("config", "metrics") and not isinstance(value, dict):
        return None, f"{name} {shown(value)} (not a mapping)"
    if name == "history" and not isinstance(value, list):
        return None, f"{name} {shown(value)} (not a list)"
    return value, None


def _metrics_problems(metrics: dict) -> tuple[dict, list[str]]:
    """The "metrics" user attr with its malformed entries dropped: scalars (older studies keep every metric
    there), "selected" (layer -> block text) and "plan" (layer -> {block, rank})."""
    kept, problems = {}, []
    for key, value in metrics.items():
        if key == "selected" and not (isinstance(value, dict) and all(isinstance(b, str) for b in value.values())):
            problems.append(f"metrics.selected {shown(value)} (not a mapping of layer to block)")
        elif key == "plan" and not (isinstance(value, dict) and all(isinstance(p, dict) for p in value.values())):
            problems.append(f"metrics.plan {shown(value)} (not a mapping of layer to {{block, rank}})")
        else:
            value, problem = _attr_problem(key, value) if key in FRACTIONS + COUNTS + SECONDS else (value, None)
            if problem is None:
                kept[key] = value
            else:
                problems.append(f"metrics.{problem}")
    return kept, problems


def checked_attrs(attrs: dict[str, Any], names: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """({name: value} of the user attrs `names`, a malformed one as None; what was malformed, one phrase each)."""
    out, problems = {}, []
    for name in names:
        value = attrs.get(name)
        if value is not None:
            value, problem = _attr_problem(name, value)
            if problem is not None:
                problems.append(problem)
            elif name == "metrics":
                value, inner = _metrics_problems(value)
                problems += inner
        out[name] = value
    return out, problems
