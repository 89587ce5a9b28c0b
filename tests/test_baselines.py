"""Baselines (kronsearch.baselines): each method trains a tiny MLP on digits and reports the trainer's metrics."""

from __future__ import annotations

import pytest
import torch

from kronsearch.baselines import METHODS, RigL, block_norms, layer_blocks, prunable_layers, train_baseline
from kronsearch.data import load_dataset
from kronsearch.layers.costs import model_cost
from kronsearch.models import build_model
from kronsearch.trainer import TrainConfig, seed_everything

BLOCK = (2, 2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=200)


def tiny(data):
    seed_everything(0)
    return build_model("mlp", data.input_shape, data.num_classes, hidden=[16])  # layers.0 16x64, head 10x16


def run(method, data, epochs=1, **kwargs):
    model = tiny(data)
    config = TrainConfig(epochs=epochs, batch_size=32, lr=1e-2, progress=False)
    return model, train_baseline(method, model, data, config, block=BLOCK, target_sparsity=0.5, **kwargs)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_reports_metrics(method, digits):
    model, result = run(method, digits)
    dense = model_cost(tiny(digits), digits.input_shape)
    assert 0.0 <= result.test_accuracy <= 1.0 and 0.0 <= result.val_accuracy <= 1.0
    assert result.train_params == dense.total.params  # the baselines train the dense W
    assert result.train_macs == dense.total.macs
    assert result.train_macs_total > 0 and result.wall_time > 0
    assert result.inference_nonzeros == sum(int(m.weight.count_nonzero()) for m in model.modules()
                                            if isinstance(m, torch.nn.Linear))
    assert set(result.layer_sparsity) == {"layers.0", "head"}
    if method == "dense":
        assert result.block_sparsity == 0.0


@pytest.mark.parametrize("method", ["group_lasso", "elastic_group_lasso", "rigl", "iterative_pruning"])
def test_pruning_hits_the_target_exactly(method, digits):
    model, result = run(method, digits, epochs=3 if method == "iterative_pruning" else 1)
    # layers.0: 8x32 = 256 blocks, head: 5x8 = 40 blocks: 50% is exact for both
    assert result.layer_sparsity == {"layers.0": 0.5, "head": 0.5}
    assert result.block_sparsity == 0.5
    for layer in prunable_layers(model, BLOCK).values():
        assert int((block_norms(layer.weight, BLOCK) == 0).sum()) == layer.weight.numel() // 8
    assert result.inference_nonzeros < model_cost(model, digits.input_shape).total.nonzeros


def test_rigl_masks_keep_pruned_blocks_zero(digits):
    model = tiny(digits)
    layers = prunable_layers(model, BLOCK)
    rigl = RigL(layers, dict.fromkeys(layers, BLOCK), 0.5, every=2, drop=0.3, end=0.75,
                generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = digits.train.tensors
    before = {n: m.clone() for n, m in rigl.masks.items()}
    for step in range(1, 9):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
        opt.step()
        rigl(step, 12)
        for name, layer in layers.items():
            norms = block_norms(layer.weight, BLOCK)
            assert bool((norms[~rigl.masks[name]] == 0).all())  # pruned blocks exactly zero
            assert int(rigl.masks[name].sum()) == rigl.masks[name].numel() // 2  # sparsity constant
    assert rigl.updates == 4  # steps 2, 4, 6, 8 < t_end 9
    assert any(not torch.equal(before[n], rigl.masks[n]) for n in layers)  # blocks moved


def test_layers_a_block_does_not_divide_stay_dense(digits):
    model = tiny(digits)
    assert set(prunable_layers(model, (3, 4))) == set()  # 16x64 and 10x16: 3 divides neither
    assert set(prunable_layers(model, (2, 2), include=["head"])) == {"head"}
    assert layer_blocks(model, (4, 4)) == {"layers.0": (4, 4)}  # head 10x16: 4 does not divide 10


def test_per_layer_blocks(digits):
    model = tiny(digits)
    config = TrainConfig(epochs=1, batch_size=32, lr=1e-2, progress=False)
    result = train_baseline("group_lasso", model, digits, config, block={"layers.0": (4, 4), "head": (2, 2)})
    assert result.layer_sparsity == {"layers.0": 0.5, "head": 0.5}
    assert result.plan == {"layers.0": {"block": "4x4", "pruned_dense": True},
                           "head": {"block": "2x2", "pruned_dense": True}}


def test_bad_method_lists_methods(digits):
    with pytest.raises(ValueError, match="group_lasso, elastic_group_lasso, rigl, iterative_pruning"):
        train_baseline("magic", tiny(digits), digits, TrainConfig(epochs=1, progress=False))
