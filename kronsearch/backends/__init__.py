"""Where trials run, behind one small interface (base.Backend; the trial life cycle in base).

- local: trials one after another in this process (study.optimize);
- ray: trials fanned out to a Ray cluster while this process keeps the Optuna study.

Each backend imports base, never the reverse; kronsearch.search picks one from backend.name.
"""
