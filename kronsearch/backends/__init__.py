"""Where trials run. The local backend (search.run_local) trains in this process; `ray` (backends.ray)
fans trials out to a Ray cluster while this process keeps the Optuna study.

A backend is a function run(study, space, kind, target, budget_kind, progress, console) that runs
trials of `kind` until `target` trials (of `budget_kind`, or of any kind) are finished.
"""
