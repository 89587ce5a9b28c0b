"""kronsearch.load_model: an exported pattern file (+ weights, + the --bsr file) back to a working model,
and the docs' snippets for it (docs/inference.md, README.md), run as written on a real export of the shipped
ViT space."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import kronsearch
from kronsearch import BSRLinear, KronLinear, load_model
from kronsearch.cli import app
from kronsearch.data.batches import Batches
from kronsearch.layers.kron_linear import DEFAULT_THRESHOLD
from kronsearch.loading import dense_layers, model_bsr_tensors
from kronsearch.space import load_space
from kronsearch.storage import load_studies
from kronsearch.trainer import accuracy
from kronsearch.trial_run import load_space_data
from tests.docblocks import code_blocks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_torch_thread) -> Path:
    """search_spaces/vit.yaml cut to one 1-epoch trial, run and exported with --weights and --bsr."""
    folder = tmp_path_factory.mktemp("vit-export")
    space = yaml.safe_load((ROOT / "search_spaces" / "vit.yaml").read_text())
    space["data"]["limit"] = 300
    space["train"].update(epochs=1, finetune_epochs=0, warmup_epochs=0)
    space["search"]["trials"] = 1
    (folder / "vit.yaml").write_text(yaml.safe_dump(space))
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for args in (["run", "vit.yaml", "--quiet"],
                     ["export", "vit-digits:one_round", "--out", "best.yaml", "--weights", "best.safetensors",
                      "--bsr"]):
            result = runner.invoke(app, args)
            assert result.exit_code == 0, (result.stdout, result.stderr)
    return folder


def test_load_model_reproduces_the_trials_test_accuracy(exported, monkeypatch):
    monkeypatch.chdir(exported)
    model = load_model("best.yaml", "best.safetensors")
    (study,) = load_studies("vit-digits:one_round")
    data = load_space_data(load_space("vit.yaml"))
    assert not model.training
    assert accuracy(model, Batches(data.test, 64, "cpu")) == pytest.approx(
        study.best_trial.user_attrs["test_accuracy"])


def test_the_bsr_file_gives_a_bsr_model_that_predicts_like_the_merged_weights(exported):
    model = load_model(exported / "best.yaml", exported / "best.safetensors")
    fast = load_model(exported / "best.yaml", exported / "best.safetensors", bsr=exported / "best.bsr.safetensors")
    assert not any(isinstance(m, KronLinear) for m in fast.modules())
    with safe_open(str(exported / "best.bsr.safetensors"), "pt") as f:
        stored_dense = dense_layers(f.metadata())
    assert all(type(fast.get_submodule(layer)) is nn.Linear for layer in stored_dense)
    # qkv, proj, fc1, fc2 of both blocks: BSR, or dense where BSR would not be smaller
    assert sum(isinstance(m, BSRLinear) for m in fast.modules()) + len(stored_dense) == 8
    for name, module in list(model.named_modules()):  # the reference: each layer merged in place
        if isinstance(module, KronLinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, BSRLinear.from_kron(module, DEFAULT_THRESHOLD))
    x = torch.randn(32, 1, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x))


def test_pt_weights_load_like_safetensors(exported):
    runner = CliRunner()
    result = runner.invoke(app, ["export", "vit-digits:one_round", "--storage",
                                 f"sqlite:///{exported / 'studies' / 'vit-digits.db'}", "--out",
                                 str(exported / "pt.yaml"), "--weights", str(exported / "best.pt")])
    assert result.exit_code == 0, result.stderr
    x = torch.randn(4, 1, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(load_model(exported / "pt.yaml", exported / "best.pt")(x),
                                   load_model(exported / "best.yaml", exported / "best.safetensors")(x))


def test_a_pattern_file_without_a_model_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("layers: {fc1: {block: 4x4, rank: 1}}\n")
    with pytest.raises(ValueError, match=r"plan.yaml: key 'model' must be \{name, options\}"):
        load_model(path)


def test_a_bsr_file_needs_the_weights_file(exported):
    with pytest.raises(ValueError, match="give the weights file too"):
        load_model(exported / "best.yaml", bsr=exported / "best.bsr.safetensors")


def test_a_bsr_file_with_broken_indices_is_refused_naming_the_layer(exported, tmp_path):
    model = load_model(exported / "best.yaml", exported / "best.safetensors")
    first = next(m for m in model.modules() if isinstance(m, KronLinear))
    with torch.no_grad():
        first.s[1:] = 0.0  # one block row kept: this layer is stored in BSR form
    tensors, header = model_bsr_tensors(model, DEFAULT_THRESHOLD)
    key = next(k for k in tensors if k.endswith(".bsr.col_indices"))
    tensors[key] = tensors[key] + 1000  # columns past the weight's width
    save_file(tensors, str(tmp_path / "bad.bsr.safetensors"), metadata=header)
    with pytest.raises(ValueError, match=rf"bad.bsr.safetensors: layer '{key.split('.bsr.')[0]}' is not a valid"):
        load_model(exported / "best.yaml", exported / "best.safetensors", bsr=tmp_path / "bad.bsr.safetensors")


def test_weights_of_another_format_are_refused(exported):
    with pytest.raises(ValueError, match=r"best.bin: weights must be a .safetensors or .pt file"):
        load_model(exported / "best.yaml", exported / "best.bin")


def test_the_inference_page_snippets_run_as_written(exported, monkeypatch):
    monkeypatch.chdir(exported)
    snippets = code_blocks("docs/inference.md", "python")
    assert len(snippets) >= 4
    scope: dict = {}
    for snippet in snippets:
        exec(compile(snippet, "docs/inference.md", "exec"), scope)  # noqa: S102 - the docs' own code
    assert isinstance(scope["model"], torch.nn.Module) and "kronsearch" in scope and kronsearch.load_model


def test_the_readme_snippet_kronifies_a_network_with_the_exported_plan(exported, monkeypatch):
    monkeypatch.chdir(exported)
    (snippet,) = code_blocks("README.md", "python")
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    plan = kronsearch.load_plan(exported / "best.yaml")
    assert {name for name, m in scope["own"].named_modules() if isinstance(m, KronLinear)} == set(plan)
