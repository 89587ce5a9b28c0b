"""Reading finished studies: `show` (trials, best trial or Pareto front) and `compare` (one-round vs per-pattern).

The data functions (`show_data`, `compare_data` and the trial helpers) return plain dicts and lists,
JSON-able as they are (what `--format json` prints); `render_show` and `render_compare` draw them as
rich tables. `kronsearch.report.trials` holds the trial helpers and number formats, `.show` and
`.compare` the two commands, `.cost` best accuracy against cumulative cost; every public name is
importable from `kronsearch.report`.
"""

from kronsearch.report.compare import (
    block_for,
    compare_data,
    pattern_label,
    pattern_ranking,
    render_compare,
    same_blocks,
    strategy_compute,
    trial_pattern,
)
from kronsearch.report.cost import cost_curve, reach
from kronsearch.report.show import render_show, show_data, study_report, trial_row
from kronsearch.report.trials import (
    FINISHED,
    KINDS,
    SCALAR_METRICS,
    artifact_dirs,
    best_one_round,
    best_trials,
    default_trial,
    describe_blocks,
    duration,
    fmt_count,
    fmt_params,
    fmt_pct,
    fmt_seconds,
    full_config,
    metrics,
    norm_block,
    objectives,
    study_strategy,
    trial_kind,
    trial_history,
    trial_rank,
    val_accuracy,
)

__all__ = [
    "FINISHED", "KINDS", "SCALAR_METRICS", "artifact_dirs", "best_one_round", "best_trials", "block_for",
    "compare_data", "cost_curve", "default_trial", "describe_blocks", "duration", "fmt_count", "fmt_params",
    "fmt_pct", "fmt_seconds", "full_config", "metrics", "norm_block", "objectives", "pattern_label",
    "pattern_ranking", "reach", "render_compare", "render_show", "same_blocks", "show_data",
    "strategy_compute", "study_report", "study_strategy", "trial_history", "trial_kind", "trial_pattern",
    "trial_rank", "trial_row", "val_accuracy",
]
