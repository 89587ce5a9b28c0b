"""Reading finished studies: show, compare, export, plot, and the dry-run plan.

The study is read through kronsearch.record. The data functions (`show_data`, `compare_data` and
the trial helpers) return plain dicts and lists, JSON-able as they are (what `--format json`
prints); `render_show` and `render_compare` draw them as rich tables. One module per concern:
`trials` (trial helpers, number formats), `show`, `compare`, `cost` (best accuracy against
cumulative cost), `plan` (the dry run), `export` (pattern, weights, BSR files) and `plot`
(matplotlib figures, imported only when used). The names below are importable from
`kronsearch.report`.
"""

from kronsearch.record import SCALAR_METRICS
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
    artifact_dirs,
    best_trials,
    default_trial,
    describe_blocks,
    duration,
    fmt_count,
    fmt_params,
    fmt_pct,
    fmt_seconds,
    norm_block,
    objectives,
    trial_history,
    trial_rank,
)

__all__ = [
    "SCALAR_METRICS", "artifact_dirs", "best_trials", "block_for",
    "compare_data", "cost_curve", "default_trial", "describe_blocks", "duration", "fmt_count", "fmt_params",
    "fmt_pct", "fmt_seconds", "norm_block", "objectives", "pattern_label",
    "pattern_ranking", "reach", "render_compare", "render_show", "same_blocks", "show_data",
    "strategy_compute", "study_report", "trial_history", "trial_pattern",
    "trial_rank", "trial_row",
]
