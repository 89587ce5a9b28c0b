"""The one round in your own Ray Tune function trainable, with an Optuna study as the study of record.

    python examples/ray_trainable.py                   # 2 Tune trials, 1 CPU each, into ray_trainable.db
    kronsearch show ray-trainable --storage sqlite:///ray_trainable.db      # compare and export likewise

Tune schedules the trials; each one is an Optuna trial of the same study (a storage every worker reaches:
here a SQLite file on this machine, on a cluster a database server). Inside the trainable: `study.ask()`,
`kronsearch.suggest` samples rank and lambda2 from search_spaces/own_model.yaml's `space` section, a
hand-written loop trains with kronsearch.OneRound and reports every epoch to Tune (`tune.report`), then
`kronsearch.record_trial` writes the trial record that `kronsearch run` writes and `study.tell` finishes
it, so `kronsearch show/compare/export` read the study as one of their own. (A worker that dies leaves its
Optuna trial RUNNING: tell it FAIL from the driver, or let a rerun skip it.)

Ray here: a local Ray whose temp folder is short (/tmp/kr<pid>: its socket paths must fit 107 bytes) and
outside the source tree, stopped (ray.shutdown) and removed at the end whatever happens.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # before ray is imported: a local cluster of this process only
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's plain output

import optuna  # noqa: E402 - after the environment Ray reads at import
import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402

import kronsearch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "own_model.yaml"  # its data and model factories import examples.own_model
STUDY = "ray-trainable"


def digits(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """sklearn's 8x8 digits as (train, val) tensors: 1400 and 397 flat images in [0, 1]."""
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return (x[order[:1400]], y[order[:1400]]), (x[order[1400:]], y[order[1400:]])


def trainable(config: dict) -> None:
    """One Tune trial = one Optuna trial: ask, suggest, train with the one round, report, record, tell."""
    torch.set_num_threads(1)
    study = optuna.load_study(study_name=config["study"], storage=config["storage"])
    trial = study.ask()
    spec = kronsearch.suggest(trial, config["space"])  # rank, lambda2; the candidates are the space's blocks
    torch.manual_seed(trial.number)
    (x, y), (val_x, val_y) = digits()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10))
    kronsearch.kronify(model, candidates=spec.blocks(), rank=spec.rank, include=["1", "3"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    val = [(val_x[i:i + 128], val_y[i:i + 128]) for i in range(0, len(val_y), 128)]
    one_round = kronsearch.OneRound(model, optimizer, select_steps=config["select_steps"], validate=val,
                                    lambda2=spec.lambda2)
    for epoch in range(1, config["epochs"] + 1):
        model.train()
        order = torch.randperm(len(y))
        for start in range(0, len(y), 32):
            batch = order[start:start + 32]
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()  # the race advances here
            optimizer.zero_grad()
        model.eval()  # racing layers run their leaders in eval mode
        with torch.no_grad():
            accuracy = (model(val_x).argmax(-1) == val_y).float().mean().item()
        tune.report({"epoch": epoch, "val_accuracy": accuracy, "racing": not one_round.done,
                     "optuna_trial": trial.number})
    one_round.finish()
    one_round.close()
    kronsearch.finalize_model(model)
    model.eval()
    with torch.no_grad():
        accuracy = (model(val_x).argmax(-1) == val_y).float().mean().item()
    kronsearch.record_trial(trial, one_round, val_accuracy=accuracy, model=model, input_shape=(1, 8, 8))
    study.tell(trial, accuracy)


def main(storage: str = "sqlite:///ray_trainable.db", trials: int = 2, epochs: int = 2, select_steps: int = 20,
         space: str | Path = SPACE) -> optuna.Study:
    if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):  # workers may run elsewhere
        storage = "sqlite:///" + str(Path(storage[len("sqlite:///"):]).resolve())
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize", load_if_exists=True)
    temp = Path(f"/tmp/kr{os.getpid()}")  # short: Ray's socket paths must fit 107 bytes; outside the source tree
    try:
        ray.init(num_cpus=trials, include_dashboard=False, _temp_dir=str(temp / "ray"), logging_level="WARNING",
                 runtime_env={"env_vars": {"RAY_AIR_NEW_OUTPUT": "0",  # workers import the space's factories
                                           "PYTHONPATH": os.pathsep.join(
                                               filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}})
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={"study": STUDY, "storage": storage, "space": str(space), "epochs": epochs,
                         "select_steps": select_steps, "run": tune.grid_search(list(range(trials)))},
            tune_config=tune.TuneConfig(max_concurrent_trials=trials),
            run_config=tune.RunConfig(storage_path=str(temp / "results"), name=STUDY, verbose=0))
        results = tuner.fit()
        errors = [str(r.error) for r in results if r.error]
        if errors:
            raise RuntimeError("Tune trials failed: " + "; ".join(errors))
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    return study


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite:///ray_trainable.db")
    parser.add_argument("--trials", type=int, default=2)
    args = parser.parse_args()
    done = main(args.storage, args.trials)
    print(f"best val accuracy {done.best_value:.3f} (Optuna trial {done.best_trial.number}); "
          f"kronsearch show {STUDY} --storage {args.storage}")
