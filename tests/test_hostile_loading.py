"""Hostile pattern files for load_model (issue 23): loading one is data-only unless the caller opts in to code,
with the model bounds of space files, and weights that do not fit are named key by key."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file
from torch import nn

from kronsearch import load_model
from kronsearch.errors import BadInput
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
