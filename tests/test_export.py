"""Tests for kronsearch.report.export: the pattern file, weights copies, BSR export, atomic writes, refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from kronsearch import load_plan
from kronsearch.atomic_write import write_atomic
from kronsearch.layers.kron_linear import KronLinear
from kronsearch.layers.plan import LayerPattern
from kronsearch.models import build_model
from kronsearch.report.export import (
    ExportError,
    bsr_path,
    display_storage,
    export_trial,
    find_trial,
    pattern_document,
    weights_path,
)
from kronsearch.storage import load_studies
from tests.test_report import build_search


@pytest.fixture
def studies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_search(tmp_path)
    one, per = load_studies("demo")
    return one, per


def test_export_default_trial_writes_a_loadable_pattern_file(studies, tmp_path):
    one, _ = studies
    result = export_trial(one, tmp_path / "out" / "best.yaml", storage_url="sqlite:///studies/demo.db")
    assert result.trial == 1 and result.paths() == [tmp_path / "out" / "best.yaml"]
    assert load_plan(result.pattern) == {"layers.0": LayerPattern((2, 2), 2), "head": LayerPattern((2, 2), 2)}
    doc = yaml.safe_load(result.pattern.read_text())
    assert list(doc) == ["layers", "lambdas", "metrics", "model", "data", "provenance"]
    assert doc["lambdas"] == {"lambda1": 0.002, "lambda2": 0.0001}
    assert doc["metrics"]["val_accuracy"] == 0.85 and doc["metrics"]["train_macs_total"] == 5 * 10**6
    assert "plan" not in doc["metrics"] and "layer_sparsity" not in doc["metrics"]  # scalars only
    assert doc["model"] == {"name": "mlp", "options": {"hidden": [16]}}
    assert doc["data"]["input_shape"] == [1, 8, 8]
    provenance = doc["provenance"]
    assert provenance["study"] == "demo:one_round" and provenance["trial"] == 1
    assert provenance["storage"] == f"sqlite:///{(tmp_path / 'studies' / 'demo.db').resolve()}"
    assert provenance["space_hash"] == "ab" * 32 and provenance["kronsearch_version"] == "0.1.0"
    assert provenance["exported_at"].endswith("+00:00")


def test_per_pattern_export_has_no_lambda1_and_multiobjective_default_is_best_val(studies, tmp_path):
    _, per = studies
    result = export_trial(per, tmp_path / "p.yaml")
    doc = yaml.safe_load(result.pattern.read_text())
    assert result.trial == 1 and doc["lambdas"] == {"lambda2": 0.0001}
    assert doc["layers"] == {"layers.0": {"block": "2x2", "rank": 1}, "head": {"block": "2x2", "rank": 1}}


def test_export_a_chosen_trial(studies, tmp_path):
    _, per = studies
    doc = yaml.safe_load(export_trial(per, tmp_path / "t0.yaml", trial=0).pattern.read_text())
    assert doc["layers"] == {"layers.0": {"block": "4x4", "rank": 1}}  # 4x4 does not divide the 10x16 head
    assert doc["provenance"]["trial"] == 0


@pytest.mark.parametrize("number, message", [(2, "is FAIL, not COMPLETE \\(diverged at \\[epoch 2\\]\\)"),
                                             (3, "is PRUNED, not COMPLETE"), (99, "has no trial 99")])
def test_refuses_unknown_and_unfinished_trials(studies, tmp_path, number, message):
    one, _ = studies
    with pytest.raises(ValueError, match=message):
        export_trial(one, tmp_path / "x.yaml", trial=number)
    assert not (tmp_path / "x.yaml").exists()


def test_weights_are_copied_byte_for_byte(studies, tmp_path):
    one, _ = studies
    result = export_trial(one, tmp_path / "best.yaml", weights=tmp_path / "best.safetensors")
    source = tmp_path / "studies" / "demo" / "one_round" / "trial-1" / "model.safetensors"
    assert result.weights.read_bytes() == source.read_bytes()


def test_pt_weights_are_a_state_dict_loadable_without_pickle(studies, tmp_path):
    one, _ = studies
    result = export_trial(one, tmp_path / "best.yaml", weights=tmp_path / "best.pt")
    state = torch.load(result.weights, weights_only=True)
    source = load_file(str(tmp_path / "studies" / "demo" / "one_round" / "trial-1" / "model.safetensors"))
    assert state.keys() == source.keys()
    assert all(torch.equal(state[k], source[k]) for k in source)


def exported_layers(result) -> dict[str, torch.Tensor]:
    """Each layer of a --bsr file densified: its BSR tensors, or its dense weight where the file stores it dense."""
    tensors = load_file(str(result.bsr))
    with safe_open(str(result.bsr), "pt") as f:
        header = f.metadata()
    dense = {}
    for key, value in header.items():
        if key.startswith("layer:"):
            layer, size = key[len("layer:"):], tuple(int(v) for v in value.split()[0][len("size="):].split("x"))
            dense[layer] = tensors[f"{layer}.dense.weight"] if "stored=dense" in value else torch.sparse_bsr_tensor(
                tensors[f"{layer}.bsr.crow_indices"], tensors[f"{layer}.bsr.col_indices"],
                tensors[f"{layer}.bsr.values"], size=size, check_invariants=True).to_dense()
    return dense


def prune_block_rows(studies_root, rows: int) -> None:
    """Set S of the demo's one-round trial 1 to zero in the first `rows` block rows of layers.0 (a 8x32 grid)."""
    from safetensors.torch import save_file

    source = studies_root / "studies" / "demo" / "one_round" / "trial-1" / "model.safetensors"
    state = load_file(str(source))
    state["layers.0.s"][:rows, :] = 0.0
    save_file(state, str(source))


def test_bsr_export_matches_the_merged_weights(studies, tmp_path):
    one, _ = studies
    prune_block_rows(tmp_path, 5)  # layers.0 in BSR; the head, nearly dense at 2x2, stored dense
    result = export_trial(one, tmp_path / "best.yaml", weights=tmp_path / "w" / "best.safetensors", bsr=True)
    assert result.bsr == tmp_path / "w" / "best.bsr.safetensors" == bsr_path(result.weights)
    assert sorted(load_file(str(result.bsr))) == sorted(
        [f"layers.0.bsr.{part}" for part in ("crow_indices", "col_indices", "values")] + ["head.dense.weight"])
    with safe_open(str(result.bsr), "pt") as f:
        header = f.metadata()
    assert header["format"] == "kronsearch-bsr" and header["layer:head"].startswith("size=10x16 block=2x2 ")
    # Rebuild independently and compare each stored layer, densified, with the layer's merged weight.
    model = build_model("mlp", (1, 8, 8), 10, hidden=[16])
    from kronsearch import kronify

    kronify(model, load_plan(result.pattern))
    model.load_state_dict(load_file(str(result.weights)))
    stored = exported_layers(result)
    assert set(stored) == {"layers.0", "head"}
    for layer, module in model.named_modules():
        if isinstance(module, KronLinear):
            torch.testing.assert_close(stored[layer], module.materialize().detach())


def test_bsr_drops_pruned_blocks(studies, tmp_path):
    one, _ = studies
    prune_block_rows(tmp_path, 5)
    result = export_trial(one, tmp_path / "best.yaml", weights=tmp_path / "best.safetensors", bsr=True)
    tensors = load_file(str(result.bsr))
    assert tensors["layers.0.bsr.values"].shape == (3 * 32, 2, 2)
    assert tensors["layers.0.bsr.crow_indices"][:6].tolist() == [0] * 6


def test_bsr_stores_a_layer_dense_where_its_bsr_form_would_be_larger_and_says_so(studies, tmp_path):
    one, _ = studies  # 2x2 blocks nearly all kept: 16 bytes of values and 8 of index per block against 16 dense
    result = export_trial(one, tmp_path / "best.yaml", weights=tmp_path / "best.safetensors", bsr=True)
    tensors = load_file(str(result.bsr))
    assert {"layers.0.dense.weight", "head.dense.weight"} <= set(tensors)
    assert not [k for k in tensors if ".bsr." in k]
    assert result.bsr.stat().st_size < 1.1 * sum(t.numel() * t.element_size() for t in tensors.values()) + 4096
    assert len(result.notes) == 2 and all(" dense: it keeps " in n and " bytes against " in n for n in result.notes)


def test_a_bsr_file_with_a_dense_layer_loads_as_an_nn_linear_computing_the_same_function(studies, tmp_path):
    from kronsearch import load_model

    one, _ = studies
    prune_block_rows(tmp_path, 5)
    result = export_trial(one, tmp_path / "best.yaml", weights=tmp_path / "best.safetensors", bsr=True)
    plain = load_model(result.pattern, result.weights)
    mixed = load_model(result.pattern, result.weights, bsr=result.bsr)
    assert type(mixed.head) is nn.Linear and type(mixed.layers[0]).__name__ == "BSRLinear"
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(mixed(x), plain(x))


def test_bsr_needs_weights(studies, tmp_path):
    one, _ = studies
    with pytest.raises(ValueError, match="--bsr needs --weights"):
        export_trial(one, tmp_path / "best.yaml", bsr=True)


def test_missing_weights_name_the_path_and_write_nothing(studies, tmp_path):
    _, per = studies
    with pytest.raises(FileNotFoundError, match=r"trial-0[/\\]model\.safetensors does not exist"):
        export_trial(per, tmp_path / "best.yaml", trial=0, weights=tmp_path / "w.safetensors")
    assert not (tmp_path / "best.yaml").exists() and not (tmp_path / "w.safetensors").exists()


def test_duplicate_trial_exports_the_weights_of_the_trial_it_reused(studies, tmp_path):
    _, per = studies
    trial = find_trial(per, 4)
    assert trial.user_attrs["duplicate_of"] == 1
    assert weights_path(per, trial) == tmp_path / "studies" / "demo" / "per_pattern" / "trial-1" / "model.safetensors"


def test_relative_artifact_dir_is_found_under_the_study_artifacts_dir(studies, tmp_path, monkeypatch):
    one, _ = studies
    trial = find_trial(one, 1)
    trial.user_attrs["artifact_dir"] = "somewhere/else/trial-1"  # relative to a cwd we are not in
    assert weights_path(one, trial) == tmp_path / "studies" / "demo" / "one_round" / "trial-1" / "model.safetensors"


def test_weights_that_do_not_fit_the_model_are_an_export_error(studies, tmp_path):
    one, _ = studies
    source = tmp_path / "studies" / "demo" / "one_round" / "trial-1" / "model.safetensors"
    state = load_file(str(source))
    del state["head.bias"]
    from safetensors.torch import save_file

    save_file(state, str(source))
    with pytest.raises(ExportError, match="do not fit the rebuilt model"):
        export_trial(one, tmp_path / "best.yaml", weights=tmp_path / "best.safetensors", bsr=True)
    assert not (tmp_path / "best.yaml").exists()


def test_trial_without_plan_is_an_export_error(studies):
    one, _ = studies
    trial = find_trial(one, 1)
    trial.user_attrs["metrics"] = {"val_accuracy": 0.85}
    with pytest.raises(ExportError, match="no final plan"):
        pattern_document(one, trial)


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "best.yaml"
    target.write_text("old: 1\n")
    os.chmod(target, 0o640)

    def broken(f):
        f.write(b"new: 1\n")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, broken)
    assert target.read_text() == "old: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.yaml"]  # no temp file left behind
    write_atomic(target, lambda f: f.write(b"new: 2\n"))
    assert target.read_text() == "new: 2\n" and target.stat().st_mode & 0o777 == 0o640


def test_display_storage_masks_passwords_and_resolves_sqlite_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert display_storage("sqlite:///studies/x.db") == f"sqlite:///{(tmp_path / 'studies' / 'x.db')}"
    assert display_storage("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert display_storage("postgresql://bob:s3cret@db:5432/k") == "postgresql://bob:***@db:5432/k"
    assert display_storage(None) is None


def test_exported_pattern_rebuilds_the_trained_model(studies, tmp_path):
    """The point of the file: load_plan + kronify gives a model the exported weights load into."""
    one, _ = studies
    result = export_trial(one, tmp_path / "best.yaml", weights=tmp_path / "best.safetensors")
    from kronsearch import kronify

    model = build_model("mlp", (1, 8, 8), 10, hidden=[16])
    kronify(model, load_plan(result.pattern))
    missing, unexpected = model.load_state_dict(load_file(str(Path(result.weights))), strict=True)
    assert not missing and not unexpected
