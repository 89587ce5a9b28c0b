"""kronsearch.layers.inference: exact forms of a pruned KronLinear that skip its pruned blocks, chosen by
timing; load_model(inference=, plain=); torch.export and the ONNX round trip of the result."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from kronsearch import KronInference, KronLinear, export_onnx, export_program, for_inference, load_model
from kronsearch.layers.errors import BadInput
from kronsearch.layers.inference import INFERENCE_PATHS, choose_inference_path, time_inference_paths
from kronsearch.layers.kronify import kronify
from kronsearch.models import build_model


def pruned(in_features: int, out_features: int, block: tuple[int, int], rank: int, sparsity: float,
           seed: int = 0) -> KronLinear:
    """A float64 KronLinear with a random `sparsity` fraction of its S set to exactly 0."""
    torch.manual_seed(seed)
    layer = KronLinear(in_features, out_features, block, rank, dtype=torch.float64)
    with torch.no_grad():
        layer.s.mul_((torch.rand_like(layer.s) >= sparsity).double())
    return layer


@pytest.mark.parametrize("path", INFERENCE_PATHS)
@pytest.mark.parametrize("shape", [(64, 64, (8, 8), 1), (48, 64, (4, 8), 2), (96, 36, (6, 4), 3), (32, 32, (2, 2), 1)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("batch", [1, 32])
def test_every_path_equals_the_materialized_dense_weight(path, shape, sparsity, batch):
    """All pruned, nothing pruned, random masks; rank > 1; non-square blocks; float64."""
    in_features, out_features, block, rank = shape
    layer = pruned(in_features, out_features, block, rank, sparsity)
    x = torch.randn(batch, in_features, dtype=torch.float64)
    expected = x @ layer.materialize().T + layer.bias
    with torch.no_grad():
        assert torch.allclose(KronInference(layer, path)(x), expected, rtol=1e-10, atol=1e-12)
        assert torch.allclose(KronInference(layer, path)(x[None]), expected[None], rtol=1e-10, atol=1e-12)


def test_whole_pruned_rows_and_columns_are_dropped_and_without_bias():
    layer = KronLinear(64, 32, (4, 8), 2, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.s[1] = 0
        layer.s[:, 3] = 0
    form = KronInference(layer, "factored")
    assert form.c.shape in {(7 * 2, 7), (7, 7 * 2)} and form.bias is None
    x = torch.randn(5, 64, dtype=torch.float64)
    assert torch.allclose(form(x), x @ layer.materialize().T)


def test_auto_picks_the_timed_path_with_the_smallest_worst_ratio():
    layer = pruned(256, 256, (8, 8), 1, 0.75).float()
    times = time_inference_paths(layer, (1, 16), INFERENCE_PATHS)
    assert set(times) == {1, 16} and all(set(t) == set(INFERENCE_PATHS) for t in times.values())
    chosen = choose_inference_path(times)
    worst = {p: max(t[p] / min(t.values()) for t in times.values()) for p in INFERENCE_PATHS}
    assert worst[chosen] == min(worst.values())
    assert choose_inference_path({1: {"factored": 2.0, "merged": 1.0}, 8: {"factored": 1.0, "merged": 1.5}}) == "merged"
    model = for_inference(nn.Sequential(layer), (1, 16), exportable=True)
    chosen, timed = model.inference_choices["0"]
    assert chosen in {"factored", "merged"} and set(timed[1]) == {"factored", "merged"}
    assert isinstance(model[0], KronInference) and model[0].path == chosen


def test_for_inference_leaves_the_model_alone_and_names_what_is_wrong():
    model = nn.Sequential(pruned(16, 16, (4, 4), 1, 0.5), nn.ReLU())
    fast = for_inference(model, path="sparse")
    assert isinstance(model[0], KronLinear) and fast[0].path == "sparse"
    with pytest.raises(BadInput, match="'factored', 'merged'"):
        for_inference(model, path="sparse", exportable=True)
    single = for_inference(model[0], (1,))
    assert isinstance(single, KronInference) and set(single.inference_choices) == {""}
    with pytest.raises(BadInput, match="batch_sizes"):
        for_inference(model, batch_sizes=(0,))
    with pytest.raises(BadInput, match="path must be"):
        KronInference(model[0], "bsr")
    from kronsearch import PatternSelectLinear
    with pytest.raises(BadInput, match="finalize_model"):
        for_inference(nn.Sequential(PatternSelectLinear(16, 16, [(4, 4), (2, 2)])))


def test_for_inference_of_a_bf16_model_times_only_the_paths_with_a_bf16_kernel():
    model = nn.Sequential(pruned(16, 16, (4, 4), 1, 0.5)).to(torch.bfloat16)
    fast = for_inference(model, (1, 8))
    chosen, times = fast.inference_choices["0"]
    assert "sparse" not in times[1] and chosen in times[1]  # torch has no bf16 CSR product on CPU
    x = torch.randn(8, 16, dtype=torch.bfloat16)
    torch.testing.assert_close(fast(x).float(), model(x).float(), rtol=0, atol=3e-2 * model(x).abs().max().item())
    with pytest.raises(BadInput, match="path 'sparse' has no torch.bfloat16 kernel on cpu"):
        for_inference(model, path="sparse")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, nn.Module]:
    """An MLP 784-64-64-10 kronified at 8x8 rank 1 and 4x4 rank 2, 60% of S zero, as `kronsearch export` writes it."""
    folder = tmp_path_factory.mktemp("inference-export")
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10, hidden=[64, 64])
    plan = {"layers.0": {"block": "8x8", "rank": 1}, "layers.1": {"block": "4x4", "rank": 2}}
    kronify(model, plan)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, KronLinear):
                module.s.mul_((torch.rand_like(module.s) >= 0.6).float())
    (folder / "best.yaml").write_text(yaml.safe_dump({
        "layers": plan, "model": {"name": "mlp", "options": {"hidden": [64, 64]}},
        "data": {"input_shape": [1, 28, 28], "num_classes": 10}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "best.safetensors"))
    return folder / "best.yaml", folder / "best.safetensors", model.eval()


def test_load_model_inference_and_plain_compute_the_trained_model(exported):
    pattern, weights, model = exported
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        fast = load_model(pattern, weights, inference=True, batch_sizes=(1, 8))
        assert any(isinstance(m, KronInference) for m in fast.modules())
        assert torch.allclose(fast(x), expected, atol=1e-5)
        plain = load_model(pattern, weights, plain=True, batch_sizes=(1, 8))
        assert not any(isinstance(m, (KronInference, KronLinear)) for m in plain.modules())
        assert torch.allclose(plain(x), expected, atol=1e-5)
        assert torch.allclose(plain(x[:3]), expected[:3], atol=1e-5)  # the batch is dynamic
    with pytest.raises(BadInput, match="choose one"):
        load_model(pattern, weights, bsr=weights, plain=True)


@pytest.mark.parametrize("path", ["factored", "merged"])
def test_torch_export_saves_and_loads_with_torch_alone(exported, tmp_path, path):
    _, _, model = exported
    program = export_program(for_inference(model, path=path), (1, 28, 28))
    torch.export.save(program, tmp_path / "model.pt2")
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(torch.export.load(tmp_path / "model.pt2").module()(x), model(x), atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
                    reason="onnxruntime and onnxscript are not installed (pip install 'kronsearch[deploy]')")
def test_onnx_round_trip_matches_pytorch(exported, tmp_path):
    import onnxruntime

    _, _, model = exported
    program = export_program(for_inference(model, exportable=True, batch_sizes=(1, 8)), (1, 28, 28))
    export_onnx(program, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    for batch in (1, 9):
        x = torch.randn(batch, 1, 28, 28)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            assert torch.allclose(torch.from_numpy(got), model(x), rtol=0, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
                    reason="onnxruntime and onnxscript are not installed (pip install 'kronsearch[deploy]')")
def test_export_onnx_prints_no_torchvision_notes_and_no_future_warning(exported, tmp_path, capfd):
    import warnings

    _, _, model = exported
    program = export_program(for_inference(model, exportable=True, batch_sizes=(1, 8)), (1, 28, 28))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(program, tmp_path / "model.onnx")
    out, err = capfd.readouterr()
    assert "torchvision" not in out + err and "FutureWarning" not in out + err
    assert [w for w in caught if issubclass(w.category, FutureWarning)] == []
    assert (tmp_path / "model.onnx").stat().st_size > 0


def test_macs_count_the_kept_blocks():
    layer = KronLinear(64, 32, (4, 8), 2)  # m1 8, n1 8
    with torch.no_grad():
        layer.s.zero_()
        layer.s[0, :3] = 1  # 3 kept blocks, in block-row 0 and block-columns 0..2
    assert KronInference(layer, "merged").macs == 64 * 32
    factored, sparse = KronInference(layer, "factored"), KronInference(layer, "sparse")
    inner = 4 if factored.order == 1 else 8
    b_part = (3 if factored.order == 1 else 1) * 2 * 4 * 8
    assert (factored.macs, sparse.macs) == (1 * 3 * 2 * inner + b_part, 3 * 2 * inner + b_part)
