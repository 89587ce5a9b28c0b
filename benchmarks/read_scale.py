"""How the read commands scale with a study's trials: show, compare, export and plot against Optuna's own
load of the same study (optuna.load_study + get_trials), on SQLite and PostgreSQL (issue 33).

    python benchmarks/read_scale.py                        # 100, 1,000 and 10,000 trials; SQLite and PostgreSQL
    python benchmarks/read_scale.py --sizes 100 3000 --storages sqlite
    python benchmarks/read_scale.py --smoke                # 20 trials, SQLite, one round: checks it runs

One real trial is trained first (a one-trial one_round study of a tiny digits MLP); each study of N trials is
that study's attrs with N copies of its trial (the first added by Optuna's add_trial, the rest copies of its
rows, inserted in bulk), each with its own val accuracy, so the pick and the plots have something to choose.
Each round times, in this process and in a rotated order, every command's Python API as the CLI calls it, from
opening the storage to the rendered output (show and compare into a string, export's pattern file, plot's PNGs),
and Optuna's load of the study from a fresh storage. Reported: the median seconds over the rounds, and each
command's median per-round ratio to Optuna's load. PostgreSQL runs on a throwaway server the script starts
(tests/postgres.py: initdb and pg_ctl).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
import sqlalchemy  # noqa: E402
import yaml  # noqa: E402
from optuna.storages._rdb import models  # noqa: E402
from optuna.trial import FrozenTrial, TrialState, create_trial  # noqa: E402
from rich.console import Console  # noqa: E402

from kronsearch.report import compare_data, render_compare, render_show, show_data  # noqa: E402
from kronsearch.report.export import export_trial  # noqa: E402
from kronsearch.report.plot import plot_studies  # noqa: E402
from kronsearch.search import run_search  # noqa: E402
from kronsearch.storage import load_studies  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
STUDY = "scale:one_round"
SPACE = {
    "name": "scale", "seed": 0, "data": {"name": "digits", "limit": 200},
    "model": {"name": "mlp", "options": {"hidden": [16]}, "include": ["layers.*"]},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.01},
    "search": {"strategy": "one_round", "trials": 1, "sampler": "random", "pruner": "none"},
    "space": {"blocks": ["2x2", "4x4"], "ranks": [1], "lambda2": {"low": 1e-5, "high": 1e-3, "log": True}},
}


def template(folder: Path) -> optuna.Study:
    """A one-trial study trained for real in `folder` (its trial's attrs and artifact folder are copied)."""
    space = folder / "scale.yaml"
    space.write_text(yaml.safe_dump(SPACE), encoding="utf-8")
    run_search(space, storage=f"sqlite:///{folder}/template.db", progress=False, studies_dir=folder / "studies")
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder}/template.db")


def fill(url: str, source: optuna.Study, size: int) -> None:
    """A study STUDY in `url` with `source`'s attrs and `size` copies of its trial: the first by Optuna's
    add_trial, the others as copies of its rows, inserted in bulk (Optuna's add_trials commits trial by trial:
    10,000 trials took over half an hour on a shared 2-core machine). Each copy gets its own val accuracy."""
    study = optuna.create_study(study_name=STUDY, storage=url, directions=[d.name.lower() for d in source.directions])
    for key, value in source.user_attrs.items():
        study.set_user_attr(key, value)
    real: FrozenTrial = source.trials[0]
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=real.values, params=real.params,
                                 distributions=real.distributions, user_attrs=real.user_attrs,
                                 system_attrs=real.system_attrs, intermediate_values=real.intermediate_values))
    engine = sqlalchemy.create_engine(url)
    rng = random.Random(size)
    with engine.begin() as db:
        (first,) = db.execute(sqlalchemy.select(models.TrialModel.__table__)).mappings().all()
        rows = {model: [dict(r) for r in db.execute(sqlalchemy.select(model.__table__).where(
                    model.__table__.c.trial_id == first["trial_id"])).mappings()] for model in CHILDREN}
        for start in range(1, size, 1000):
            numbers = range(start, min(size, start + 1000))
            db.execute(models.TrialModel.__table__.insert(), [
                {**first, "trial_id": first["trial_id"] + n, "number": n} for n in numbers])
            accuracy = {n: min(1.0, max(0.0, real.values[0] + rng.uniform(-0.05, 0.05))) for n in numbers}
            for model, template in ((m, t) for m, t in rows.items() if t):
                key = model.__table__.primary_key.columns.keys()[0]
                db.execute(model.__table__.insert(), [
                    {**{k: v for k, v in varied(row, accuracy[n]).items() if k != key},
                     "trial_id": first["trial_id"] + n}
                    for n in numbers for row in template])
    engine.dispose()


CHILDREN = (models.TrialParamModel, models.TrialValueModel, models.TrialUserAttributeModel,
            models.TrialSystemAttributeModel, models.TrialIntermediateValueModel)


def varied(row: dict, accuracy: float) -> dict:
    """A copied row with the copy's val accuracy (its objective value and its val_accuracy user attr)."""
    if "objective" in row:
        return {**row, "value": accuracy}
    if row.get("key") == "val_accuracy" and "trial_user_attribute_id" in row:
        return {**row, "value_json": json.dumps(accuracy)}
    return dict(row)


def commands(url: str, out: Path) -> dict[str, Callable[[], object]]:
    """Each read command as the CLI runs it, from opening the storage to its output; Optuna's load first."""
    def optuna_load() -> object:
        return optuna.load_study(study_name=STUDY, storage=url).get_trials()

    def show() -> object:
        render_show(show_data(load_studies(STUDY, url)), Console(file=io.StringIO(), width=100))

    def compare() -> object:
        render_compare(compare_data(load_studies(STUDY, url)), Console(file=io.StringIO(), width=100))

    def export() -> object:
        return export_trial(load_studies(STUDY, url)[0], out / "best.yaml", storage_url=url)

    def plot() -> object:
        return plot_studies(load_studies(STUDY, url), out / "plots")

    return {"optuna load": optuna_load, "show": show, "compare": compare, "export": export, "plot": plot}


def measure(url: str, rounds: int, out: Path) -> dict[str, tuple[float, float]]:
    """name -> (median seconds, median per-round ratio to Optuna's load)."""
    runs = commands(url, out)
    names = list(runs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            start = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - start)
    base = seconds["optuna load"]
    return {name: (statistics.median(s), statistics.median(t / b for t, b in zip(s, base)))
            for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--storages", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per size (one above 5,000 trials)")
    parser.add_argument("--smoke", action="store_true", help="20 trials, SQLite, one round")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.storages, args.rounds = [20], ["sqlite"], 1
    server = None
    with tempfile.TemporaryDirectory(prefix="read-scale-") as tmp:
        folder = Path(tmp)
        source = template(folder)
        rows = []
        try:
            for kind in args.storages:
                if kind == "postgresql" and server is None:
                    from tests.postgres import PostgresServer, missing_reason

                    if missing_reason():
                        sys.exit(f"no PostgreSQL: {missing_reason()}")
                    server = PostgresServer()
                    server.start()
                for size in args.sizes:
                    name = f"scale{size}"
                    url = f"sqlite:///{folder / name}.db" if kind == "sqlite" else server.database(name)
                    start = time.perf_counter()
                    fill(url, source, size)
                    print(f"{kind} {size:,} trials: added in {time.perf_counter() - start:.1f} s", file=sys.stderr)
                    rounds = 1 if size > 5000 else args.rounds
                    found = measure(url, rounds, folder)
                    rows.append((kind, size, rounds, found))
        finally:
            if server is not None:
                server.stop()
    names = ["show", "compare", "export", "plot"]
    print("| storage | trials | rounds | Optuna load s | " + " | ".join(f"{n} s (x Optuna)" for n in names) + " |")
    print("|" + "---|" * (4 + len(names)))
    for kind, size, rounds, found in rows:
        cells = [f"{found[n][0]:.2f} ({found[n][1]:.2f}x)" for n in names]
        print(f"| {kind} | {size:,} | {rounds} | {found['optuna load'][0]:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
