"""Hostile pattern files for load_model (issue 23): loading one is data-only unless the caller opts in to code,
with the model bounds of space files, and weights that do not fit are named key by key."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from kronsearch import load_model
from kronsearch.errors import BadInput
from kronsearch.layers.kron_linear import DEFAULT_THRESHOLD
from kronsearch.loading import model_bsr_tensors
from kronsearch.models import MAX_MODEL_PARAMS, build_model


def pattern(folder: Path, model: dict | None = None, data: dict | None = None) -> Path:
    path = folder / "p.yaml"
    document = {"layers": {}, "model": model or {"name": "mlp", "options": {"hidden": [16]}},
                "data": data or {"input_shape": [1, 8, 8], "num_classes": 10}}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def test_a_pattern_file_runs_no_code_unless_the_caller_trusts_it(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    hostile = pattern(tmp_path, {"factory": "logging:basicConfig",
                                 "options": {"filename": str(victim), "filemode": "w"}})
    with pytest.raises(BadInput, match=r"p.yaml: key model.factory names Python code \('logging:basicConfig'\).*"
                                       r"trust_code=True"):
        load_model(hostile)
    assert victim.read_text() == "keep me"
    trusted = pattern(tmp_path, {"factory": "torch.nn:Identity", "options": {}})
    assert isinstance(load_model(trusted, trust_code=True), nn.Identity)


@pytest.mark.parametrize("model, data", [
    (None, {"input_shape": [1, 8, 8], "num_classes": 10**9}),
    (None, {"input_shape": [1, 100_000, 100_000], "num_classes": 10}),
    ({"name": "mlp", "options": {"hidden": [10**9]}}, None),
    ({"name": "vit", "options": {"depth": 2000, "dim": 8, "heads": 1}}, None),
], ids=["classes", "input", "hidden", "depth"])
def test_a_pattern_file_is_bounded_like_a_space_file_before_anything_is_allocated(tmp_path, model, data):
    started = time.monotonic()
    with pytest.raises(BadInput, match=r"p.yaml: keys model, data and layers: the model has [\d,]+ "
                                       r"(parameters|nn.Linear layers); at most"):
        load_model(pattern(tmp_path, model, data))
    assert time.monotonic() - started < 5
    assert MAX_MODEL_PARAMS == 250_000_000


def test_a_pattern_whose_kronecker_layers_exceed_the_parameter_bound_is_refused_before_kronify(tmp_path):
    path = pattern(tmp_path, {"name": "mlp", "options": {"hidden": [4096]}},
                   {"input_shape": [1, 64, 64], "num_classes": 10})
    document = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**document, "layers": {"layers.0": {"block": "1x1", "rank": 1024}}}))
    with pytest.raises(BadInput, match=r"p.yaml: key layers: the Kronecker layers would have 17,196,651,520 trainable "
                                       r"parameters \(largest: layers.0 4096x4096 at 1x1 rank 1024: 17,196,651,520\); "
                                       r"at most 250,000,000 are allowed"):
        load_model(path)


def test_weights_that_do_not_fit_name_the_missing_unexpected_and_mis_shaped_keys(tmp_path):
    other = build_model("mlp", (1, 8, 8), 10, hidden=[8]).state_dict()
    other["extra"] = other["head.bias"].clone()
    del other["head.bias"]
    save_file(other, tmp_path / "w.safetensors")
    with pytest.raises(BadInput) as err:
        load_model(pattern(tmp_path), tmp_path / "w.safetensors")
    message = str(err.value)
    assert "w.safetensors: these weights do not fit the model of" in message
    assert "missing head.bias" in message and "unexpected extra" in message
    assert "shape mismatch layers.0.weight (8, 64) vs (16, 64)" in message


def test_non_finite_or_integer_weights_are_refused_naming_the_tensor(tmp_path):
    state = build_model("mlp", (1, 8, 8), 10, hidden=[16]).state_dict()
    state["layers.0.weight"][0, 0] = float("nan")
    save_file(state, tmp_path / "nan.safetensors")
    with pytest.raises(BadInput, match="nan.safetensors: weights holds NaN or infinite values in layers.0.weight"):
        load_model(pattern(tmp_path), tmp_path / "nan.safetensors")
    state["layers.0.weight"] = torch.ones(16, 64, dtype=torch.int64)
    save_file(state, tmp_path / "int.safetensors")
    with pytest.raises(BadInput, match="dtype mismatch layers.0.weight torch.int64 vs torch.float32"):
        load_model(pattern(tmp_path), tmp_path / "int.safetensors")


@pytest.mark.parametrize("stored", ["bsr", "dense"])
def test_a_bsr_file_with_nan_weights_is_refused_naming_the_tensor(tmp_path, stored):
    path = pattern(tmp_path)
    document = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**document, "layers": {"layers.0": {"block": "4x4", "rank": 1}}}))
    model = load_model(path)
    if stored == "bsr":
        with torch.no_grad():
            model.layers[0].s[1:] = 0.0  # one block row kept: the layer is stored in BSR form
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    tensors, header = model_bsr_tensors(model, DEFAULT_THRESHOLD)
    key = f"layers.0.{'bsr.values' if stored == 'bsr' else 'dense.weight'}"
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, tmp_path / "nan.bsr.safetensors", metadata=header)
    with pytest.raises(BadInput, match=f"nan.bsr.safetensors: the BSR file holds NaN, infinite or non-float weights "
                                       f"in {key}; only finite floating-point weights are allowed"):
        load_model(path, tmp_path / "w.safetensors", bsr=tmp_path / "nan.bsr.safetensors")


def test_a_nan_checkpoint_with_init_dense_is_refused_in_dry_run_and_run(write_space, workdir, cli):
    state = build_model("mlp", (1, 8, 8), 10, hidden=[16]).state_dict()
    state["head.weight"][:] = float("inf")
    save_file(state, workdir / "dense.safetensors")
    path = write_space(model={"checkpoint": "dense.safetensors", "init": "dense"})
    for extra in (["--dry-run"], []):
        result = cli("run", path, "--quiet", *extra)
        assert result.exit_code == 2
        assert "model.checkpoint" in result.output and "NaN or infinite values in head.weight" in result.output
