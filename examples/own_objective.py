"""Your own Optuna objective with a hand-written loop: kronsearch samples the pattern and records the trial.

    python examples/own_objective.py                   # 3 trials into own_objective.db
    kronsearch show own-objective --storage sqlite:///own_objective.db      # compare and export likewise

`kronsearch.suggest` samples rank and lambda2 from the `space` section of search_spaces/own_model.yaml (the
search's own sampling); the loop trains with kronsearch.OneRound; `kronsearch.record_trial` writes the trial
record that `kronsearch run` writes, so the kronsearch commands read this study as one of their own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna
import torch
from torch import nn

import kronsearch
from kronsearch.space import load_space

try:
    from examples.own_loop import digits
    from examples.own_model import small_mlp
except ModuleNotFoundError:  # run as a script: examples/ is on the path, not the repository
    from own_loop import digits
    from own_model import small_mlp

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "own_model.yaml"


def objective_for(space_path: str | Path = SPACE, epochs: int = 2, select_steps: int = 20):
    space = load_space(space_path)  # read once; suggest also takes the path

    def objective(trial: optuna.Trial) -> float:
        spec = kronsearch.suggest(trial, space)  # rank, lambda2; the candidates are the space's blocks
        torch.manual_seed(trial.number)
        (x, y), (val_x, val_y) = digits()
        model = small_mlp((1, 8, 8), 10, **space.model["options"])
        kronsearch.kronify(model, candidates=spec.blocks(), rank=spec.rank, include=space.model["include"])
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
        val = [(val_x[i:i + 128], val_y[i:i + 128]) for i in range(0, len(val_y), 128)]
        one_round = kronsearch.OneRound(model, optimizer, select_steps=select_steps, validate=val,
                                        tolerance=space.search["tolerance"], lambda2=spec.lambda2)
        for _ in range(epochs):
            order = torch.randperm(len(y))
            for start in range(0, len(y), 32):
                batch = order[start:start + 32]
                nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
                optimizer.zero_grad()
        one_round.finish()
        one_round.close()
        kronsearch.finalize_model(model)
        model.eval()
        with torch.no_grad():
            accuracy = (model(val_x).argmax(-1) == val_y).float().mean().item()
        return kronsearch.record_trial(trial, one_round, val_accuracy=accuracy, model=model, input_shape=(1, 8, 8))

    return objective


def main(storage: str = "sqlite:///own_objective.db", trials: int = 3, **options) -> optuna.Study:
    study = optuna.create_study(study_name="own-objective", storage=storage, direction="maximize",
                                load_if_exists=True)
    study.optimize(objective_for(**options), n_trials=trials)
    return study


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite:///own_objective.db")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    main(args.storage, args.trials)
