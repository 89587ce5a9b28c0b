"""Your own model and data: timm models by name, factories by reference, dense checkpoints, init dense."""

from __future__ import annotations

import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import save_file
from torch import nn

from kronsearch import KronLinear, PatternSelectLinear, kronify, load_plan
from kronsearch.data import load_dataset
from kronsearch.data.batches import Batches
from kronsearch.references import build_configured_model, load_factory_data
from kronsearch.space import load_space
from kronsearch.storage import load_studies
from kronsearch.trainer import accuracy
from kronsearch.trial_run import TrialSpec, build_trial_model
from tests.test_cli import assert_error

FACTORY_MODEL = {"name": None, "factory": "examples.own_model:small_mlp", "options": {"hidden": 16},
                 "include": ["1", "3"]}
FACTORY_DATA = {"name": None, "limit": None, "factory": "examples.own_model:noisy_digits", "options": {"noise": 0.1}}


def write_checkpoint(path, model: nn.Module) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


@pytest.mark.parametrize("strategy", ["one_round", "per_pattern"])
def test_a_factory_model_on_factory_data_runs_end_to_end_through_the_cli(cli, write_space, strategy):
    path = write_space(model=FACTORY_MODEL, data=FACTORY_DATA, search={"strategy": strategy})
    result = cli("run", path, "--quiet")
    assert result.exit_code == 0, result.output
    (study,) = load_studies(f"tiny:{strategy}")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2
    assert set(done[0].user_attrs["metrics"]["plan"]) == {"1", "3"}  # the factory's hidden layers, head dense


def test_the_dry_run_lists_a_factory_models_layers(cli, write_space):
    result = cli("run", write_space(model=FACTORY_MODEL, data=FACTORY_DATA), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "factory examples.own_model:small_mlp" in result.stdout and "16x16" in result.stdout


def test_a_factory_that_cannot_be_imported_names_the_module_and_exits_2(cli, write_space):
    model = {**FACTORY_MODEL, "factory": "no_such_package.models:build"}
    assert_error(cli("run", write_space(model=model)), 2, "model.factory",
                 "cannot import module 'no_such_package.models'", "ModuleNotFoundError")


def test_a_factory_that_fails_exits_2_with_its_error(cli, write_space):
    model = {**FACTORY_MODEL, "factory": "examples.own_model:noisy_digits", "options": {}}
    assert_error(cli("run", write_space(model=model)), 2, "model.factory", "failed: TypeError")


def test_a_model_factory_returning_a_non_module_says_what_it_returned(tmp_path, monkeypatch):
    (tmp_path / "not_a_model.py").write_text("def make(input_shape, num_classes):\n    return {'layers': 3}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="returned a dict, not an nn.Module"):
        build_configured_model({"factory": "not_a_model:make"}, (1, 8, 8), 10)


def test_a_model_needs_exactly_one_of_name_and_factory(cli, write_space):
    assert_error(cli("run", write_space(model={"factory": "examples.own_model:small_mlp"})), 2,
                 "model: give exactly one of name")


def test_split_settings_given_to_a_data_factory_are_refused(cli, write_space):
    assert_error(cli("run", write_space(model=FACTORY_MODEL, data={**FACTORY_DATA, "limit": 100})), 2,
                 "data.limit: does not apply to a data factory")


def test_a_data_factory_missing_a_part_names_it(tmp_path, monkeypatch):
    module = tmp_path / "half_data.py"
    module.write_text("def make():\n    return {'train': [1], 'val': [1], 'test': [1]}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="returned no input_shape, num_classes"):
        load_factory_data("half_data:make", {})


def test_an_unknown_timm_model_exits_2_naming_timm(cli, write_space):
    """With timm: close names are listed; without it (or with a broken torchvision): how to install it."""
    result = cli("run", write_space(model={"name": "timm:vit_tnyi_patch16_224", "include": ["blocks.*"]}))
    assert_error(result, 2, "model.name", "timm")


def test_a_missing_checkpoint_exits_2(cli, write_space):
    result = cli("run", write_space(model={"checkpoint": "nowhere.safetensors"}))
    assert_error(result, 2, "model.checkpoint", "nowhere.safetensors", "does not exist")


def test_a_checkpoint_of_another_architecture_exits_2_naming_the_mismatch(cli, write_space, workdir):
    write_checkpoint(workdir / "other.safetensors", build_configured_model({"name": "mlp", "options": {"hidden": [32]}},
                                                                           (1, 8, 8), 10))
    result = cli("run", write_space(model={"checkpoint": "other.safetensors"}))
    assert_error(result, 2, "model.checkpoint", "does not fit this model", "shape mismatch layers.0.weight")


def test_init_dense_starts_every_kronecker_layer_from_the_checkpoints_nearest_sum(write_space, workdir):
    dense = build_configured_model({"name": "mlp", "options": {"hidden": [16]}}, (1, 8, 8), 10)
    write_checkpoint(workdir / "dense.safetensors", dense)
    space = load_space(write_space(model={"checkpoint": "dense.safetensors", "init": "dense"}))
    model = build_trial_model(space, TrialSpec("per_pattern", 2, 0.0, plan={"layers.0": "4x4"}))
    nearest = KronLinear.from_linear(dense.get_submodule("layers.0"), (4, 4), 2)
    torch.testing.assert_close(model.get_submodule("layers.0").materialize(), nearest.materialize())
    torch.testing.assert_close(model.get_submodule("head").weight, dense.get_submodule("head").weight)


def test_init_dense_starts_every_one_round_candidate_from_the_same_dense_layer(write_space, workdir):
    dense = build_configured_model({"name": "mlp", "options": {"hidden": [16]}}, (1, 8, 8), 10)
    write_checkpoint(workdir / "dense.safetensors", dense)
    space = load_space(write_space(model={"checkpoint": "dense.safetensors", "init": "dense"}))
    model = build_trial_model(space, TrialSpec("one_round", 1, 0.0, candidates={"*": ["2x2", "4x4"]}))
    layer = model.get_submodule("layers.0")
    assert isinstance(layer, PatternSelectLinear)
    for block, branch in zip(layer.candidates, layer.branches.values()):
        nearest = KronLinear.from_linear(dense.get_submodule("layers.0"), block, 1)
        torch.testing.assert_close(branch.materialize(), nearest.materialize())


def test_init_random_ignores_the_checkpoints_layers_but_keeps_the_rest(write_space, workdir):
    dense = build_configured_model({"name": "mlp", "options": {"hidden": [16]}}, (1, 8, 8), 10)
    write_checkpoint(workdir / "dense.safetensors", dense)
    space = load_space(write_space(model={"checkpoint": "dense.safetensors"}))
    model = build_trial_model(space, TrialSpec("per_pattern", 1, 0.0, plan={"layers.0": "4x4"}))
    nearest = KronLinear.from_linear(dense.get_submodule("layers.0"), (4, 4), 1)
    assert not torch.allclose(model.get_submodule("layers.0").materialize(), nearest.materialize())
    torch.testing.assert_close(model.get_submodule("head").weight, dense.get_submodule("head").weight)


class Pairs(torch.utils.data.Dataset):
    """The same examples as a TensorDataset, served one (image, label) pair at a time."""

    def __init__(self, tensors: torch.utils.data.TensorDataset) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, index: int):
        image, label = self.tensors[index]
        return image, int(label)


def test_a_dataset_that_is_not_in_memory_yields_every_example_once_per_epoch():
    data = load_dataset("digits", limit=100)
    batches = Batches(Pairs(data.train), batch_size=32, device="cpu")
    labels = torch.cat([y for _, y in batches.shuffled(torch.Generator().manual_seed(0))])
    assert sorted(labels.tolist()) == sorted(data.train.tensors[1].tolist())


def test_accuracy_is_the_same_over_a_dataset_and_over_its_tensors():
    data = load_dataset("digits", limit=100)
    model = build_configured_model({"name": "mlp", "options": {"hidden": [16]}}, (1, 8, 8), 10)
    assert accuracy(model, Batches(Pairs(data.val), 7, "cpu")) == accuracy(model, Batches(data.val, 64, "cpu"))


# ---------------------------------------------------------------------------------------- timm

TIMM_OPTIONS = {"img_size": 8, "patch_size": 2, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}
TIMM_VIT = {"name": "timm:vit_tiny_patch16_224", "include": ["blocks.*"],
            "options": {**TIMM_OPTIONS, "hidden": None}}  # None: drop the tiny space's mlp option


@pytest.mark.parametrize("strategy", ["one_round", "per_pattern"])
def test_a_timm_model_runs_end_to_end_through_the_cli(cli, write_space, strategy, timm):
    result = cli("run", write_space(model=TIMM_VIT, search={"strategy": strategy}), "--quiet")
    assert result.exit_code == 0, result.output
    (study,) = load_studies(f"tiny:{strategy}")
    assert any(t.state == TrialState.COMPLETE for t in study.trials)


def test_an_exported_timm_pattern_applied_to_a_fresh_timm_model_reproduces_the_trial(cli, write_space, workdir,
                                                                                     timm):
    assert cli("run", write_space(model=TIMM_VIT), "--quiet").exit_code == 0
    assert cli("export", "tiny:one_round", "--out", "best.yaml", "--weights", "best.safetensors").exit_code == 0
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, in_chans=1,
                              **TIMM_OPTIONS)
    kronify(model, load_plan(workdir / "best.yaml"))
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(workdir / "best.safetensors")))
    (study,) = load_studies("tiny:one_round")
    data = load_dataset("digits", limit=150)
    assert accuracy(model, Batches(data.test, 64, "cpu")) == pytest.approx(
        study.best_trial.user_attrs["test_accuracy"])
