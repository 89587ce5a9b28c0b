"""Space files: validated whole before training; every problem names the file, the key and what is allowed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from kronsearch.models import build_model, model_size
from kronsearch.search import run_search
from kronsearch.space import SpaceError, load_space
from tests.datafiles import write_cifar100, write_idx_dataset

REPO = Path(__file__).resolve().parents[1]

BAD_SPACES = [
    ({"colour": "red"}, "(top level).colour: unknown key"),
    ({"name": "../evil"}, "name: must be a name"),
    ({"data": {"name": "imagenet"}}, "data.name: must be one of digits"),
    ({"data": {"val_fraction": 0.9}}, "data.val_fraction"),
    ({"model": {"name": "resnet"}}, "model.name: must be one of linear, mlp, lenet5, vit"),
    ({"model": {"options": {"widht": 3}}}, "model.options"),
    ({"model": {"include": ["nothing.*"]}}, "model.include: matches no nn.Linear layer"),
    ({"train": {"epochs": 0}}, "train.epochs: must be an integer in [1, 10000]"),
    ({"train": {"epochs": "ten"}}, "train.epochs"),
    ({"train": {"optimizer": "lbfgs"}}, "train.optimizer: must be one of adam, adamw, sgd"),
    ({"train": {"select_epochs": 2}}, "train.select_epochs: must be a number of epochs > 0 and <= train.epochs"),
    ({"train": {"select_epochs": "soon"}}, "train.select_epochs"),
    ({"train": {"compute": "fast"}}, "train.compute: must be one of auto, factored, merged"),
    ({"train": {"learning_rate": 1}}, "train.learning_rate: unknown key; allowed: epochs"),
    ({"search": {"strategy": "grid"}}, "search.strategy: must be one of one_round, per_pattern, hybrid"),
    ({"search": {"trials": 0}}, "search.trials"),
    ({"search": {"objectives": [{"metric": "train_macs"}]}}, "the first objective must be val_accuracy"),
    ({"search": {"objectives": ["val_accuracy", {"metric": "train_macs", "direction": "maximize"}]}},
     "train_macs can only be minimized"),
    ({"backend": {"name": "slurm"}}, "backend.name: must be one of local, ray"),
    ({"backend": {"callbacks": "tensorboard"}}, "backend.callbacks: must be a list of 'package.module:function'"),
    ({"backend": {"callbacks": ["no_such_module_x:make"]}},
     "backend.callbacks[0]: 'no_such_module_x:make': cannot import module 'no_such_module_x'"),
    ({"backend": {"keep_session": "yes"}}, "backend.keep_session"),
    ({"space": {"blocks": ["3x3"]}}, "block 3x3 divides no decomposed layer"),
    ({"space": {"blocks": ["4by4"]}}, "space.blocks[0]"),
    ({"space": {"blocks": [f"{i}x1" for i in range(1, 40)]}}, "at most 32 are allowed"),
    ({"space": {"ranks": [0]}}, "space.ranks[0]: must be an integer in [1, 1024]"),
    ({"space": {"lambda2": {"low": 0, "high": 0.1, "log": True}}}, "space.lambda2.low: must be > 0 on a log scale"),
    ({"space": {"lambda2": {"low": 0.1, "high": 0.01}}}, "space.lambda2: needs 0 <= low <= high"),
    ({"space": {"lambda2": None}}, "space.lambda2: required"),
    ({"space": {"lambda1": {"low": 0.01, "high": 0.1}}}, "space.lambda1: retired: the one round no longer weighs a "
                                                          "group penalty; it races the candidates and keeps the "
                                                          "cheapest within search.tolerance"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_SPACES, ids=[m for _, m in BAD_SPACES])
def test_bad_space_file_is_rejected_with_the_key_and_what_is_allowed(write_space, changes, message):
    path = write_space(**changes)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_missing_dataset_is_reported_before_training(write_space, monkeypatch, tmp_path):
    monkeypatch.setenv("KRONSEARCH_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr("kronsearch.data.folders.SYSTEM_DATA_DIR", tmp_path / "nothing")
    path = write_space(data={"name": "mnist", "limit": None})
    with pytest.raises(SpaceError, match="dataset 'mnist' not found") as err:
        load_space(path)
    assert "data.root" in str(err.value) and "$KRONSEARCH_DATA/mnist" in str(err.value)
    assert "--data-root" not in str(err.value)  # no such option


def test_yaml_aliases_are_refused(workdir):
    path = workdir / "bomb.yaml"
    path.write_text("a: &a [x, x]\nb: [*a, *a]\n", encoding="utf-8")
    with pytest.raises(SpaceError, match="aliases"):
        load_space(path)


def test_non_utf8_space_file_is_refused(workdir):
    path = workdir / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpaceError, match="not UTF-8"):
        load_space(path)


def test_command_line_overrides_are_validated_too(write_space):
    with pytest.raises(SpaceError, match="search.strategy"):
        load_space(write_space(), strategy="exhaustive")


def test_per_layer_blocks_keep_only_blocks_that_divide_each_layer(write_space):
    space = load_space(write_space(space={"blocks": {"layers.0": ["2x2", "16x16"], "*": ["2x2"]}}))
    assert space.layer_blocks("layers.0") == [(2, 2), (16, 16)]
    assert set(space.layers) == {"layers.0"}


def test_relative_data_root_is_resolved_next_to_the_space_file(write_space, workdir):
    write_idx_dataset(workdir / "data", gz=True)
    space = load_space(write_space(data={"name": "mnist", "root": "data", "limit": None}))
    assert space.data["root"] == str(workdir / "data")


@pytest.mark.parametrize("name", ["vit", "linear", "lenet5", "vit_cifar100", "own_model"])
def test_shipped_search_spaces_pass_a_dry_run(name, tmp_path, monkeypatch):
    write_idx_dataset(tmp_path / "fashion-mnist", gz=True)
    write_cifar100(tmp_path / "cifar100")
    monkeypatch.setenv("KRONSEARCH_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    summary = run_search(REPO / "search_spaces" / f"{name}.yaml", dry_run=True)
    assert "decomposed layers" in summary.plan_text
    assert "one-round model (all candidates)" in summary.plan_text
    assert not (tmp_path / "studies").exists()


def test_the_shipped_timm_space_passes_a_dry_run(tmp_path, monkeypatch, timm):
    monkeypatch.chdir(tmp_path)
    summary = run_search(REPO / "search_spaces" / "timm_vit.yaml", dry_run=True)
    assert "blocks.1.mlp.fc2" in summary.plan_text


def test_a_key_given_twice_is_refused_naming_both_lines(write_space):
    path = write_space()
    path.write_text(path.read_text(encoding="utf-8") + "seed: 7\n", encoding="utf-8")  # seed: 0 is line 2
    with pytest.raises(SpaceError, match=r"key 'seed' is given twice \(lines 2 and \d+\); keep one"):
        load_space(path)


def test_an_absurdly_deep_model_is_refused_by_arithmetic_within_a_second(write_space):
    path = write_space(model={"name": "vit", "options": {"patch_size": 4, "dim": 32, "depth": 100_000, "heads": 2},
                              "include": ["blocks.*"]})
    started = time.perf_counter()
    with pytest.raises(SpaceError, match=r"model.options: the model has [\d,]{13} parameters; at most 250,000,000"):
        load_space(path)
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize("strategy", ["per_pattern", "one_round"])
def test_a_rank_whose_kronecker_layers_exceed_the_parameter_bound_is_refused_naming_the_rank_that_fits(
        write_space, strategy):
    path = write_space(data={"name": "synthetic", "options": {"in_features": 4096}, "limit": None},
                       model={"options": {"hidden": [4096]}, "include": ["layers.0"]},
                       search={"strategy": strategy}, space={"blocks": ["1x1"], "ranks": [1, 1024]})
    started = time.perf_counter()
    with pytest.raises(SpaceError, match=r"tiny.yaml: space.ranks: rank 1024 gives the Kronecker layers "
                                         r"17,196,651,520 trainable parameters \(largest: layers.0 4096x4096 at 1x1: "
                                         r"17,196,651,520\); at most 250,000,000 are allowed: ranks up to 13 fit"):
        load_space(path)
    assert time.perf_counter() - started < 5  # by arithmetic: nothing of 68.7 GB is allocated
    load_space(write_space(data={"name": "synthetic", "options": {"in_features": 4096}, "limit": None},
                           model={"options": {"hidden": [4096]}, "include": ["layers.0"]},
                           search={"strategy": strategy}, space={"blocks": ["1x1"], "ranks": [13]}))


def test_a_model_of_too_many_layers_is_refused_even_when_small(write_space):
    path = write_space(model={"options": {"hidden": [1] * 5000}})
    with pytest.raises(SpaceError, match="model.options: the model has 5,001 nn.Linear layers; at most 1,024"):
        load_space(path)


@pytest.mark.parametrize(("name", "shape", "options"), [
    ("linear", (1, 8, 8), {}), ("mlp", (3, 32, 32), {"hidden": [16, 32]}), ("lenet5", (1, 28, 28), {}),
    ("lenet5", (3, 40, 37), {}), ("vit", (3, 32, 32), {"dim": 30, "heads": 3, "mlp_ratio": 1.3, "depth": 2}),
])
def test_the_arithmetic_model_size_is_the_built_models(name, shape, options):
    with torch.device("meta"):
        model = build_model(name, shape, 10, **options)
    built = (sum(p.numel() for p in model.parameters()), sum(isinstance(m, nn.Linear) for m in model.modules()))
    assert model_size(name, shape, 10, **options) == built


@pytest.mark.parametrize("device", ["cuda:99", "cuda"])
def test_a_device_torch_does_not_see_is_refused_before_anything_runs(write_space, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    path = write_space(train={"device": device})
    with pytest.raises(SpaceError, match=rf"train.device: '{device}' does not exist: torch sees \d+ CUDA devices? "
                                         rf"here; allowed: auto, cpu"):
        load_space(path)


def test_the_device_of_a_ray_trial_is_not_checked_on_the_driver(write_space):
    """A Ray trial sees its own GPUs, which the machine running `kronsearch run` may not have."""
    assert load_space(write_space(train={"device": "cuda"}, backend={"name": "ray",
                                  "resources_per_trial": {"gpu": 1}})).train["device"] == "cuda"
