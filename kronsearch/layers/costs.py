"""Exact costs of a whole model: training parameters, forward MACs per sample, inference non-zeros.

MACs are counted for the weight layers (nn.Linear, KronLinear, nn.Conv2d), by running one
sample through the model with hooks, so token counts and conv output sizes come out right.
Parameter-free products (attention scores, norms, activations) are the same for every pattern
and are not counted. Inference non-zeros count the merged weight entries of the weight layers;
dense layers count as dense.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import cast

import torch
from torch import nn

from kronsearch.layers.blocks import kron_macs
from kronsearch.layers.kron_linear import DEFAULT_THRESHOLD, KronLinear
from kronsearch.layers.pattern_select import PatternSelectLinear


@dataclass
class Cost:
    """Costs of one layer or a whole model."""

    params: int = 0  # trainable parameters
    macs: int = 0  # forward multiply-adds per sample
    nonzeros: int = 0  # weight entries after merging for inference

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.macs + other.macs, self.nonzeros + other.nonzeros)


@dataclass
class ModelCost:
    """The model's totals and the per-layer costs of its weight layers."""

    total: Cost
    layers: dict[str, Cost] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"total": asdict(self.total), "layers": {k: asdict(v) for k, v in self.layers.items()}}


WEIGHT_LAYERS = (nn.Linear, nn.Conv2d, KronLinear, PatternSelectLinear)
WeightLayer = nn.Linear | nn.Conv2d | KronLinear | PatternSelectLinear  # WEIGHT_LAYERS as a type


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _macs_per_row(module: nn.Linear | KronLinear | PatternSelectLinear) -> int:
    if isinstance(module, KronLinear):
        return kron_macs(module.out_features, module.in_features, module.block, module.rank)
    if isinstance(module, PatternSelectLinear):
        return sum(_macs_per_row(cast(KronLinear, b)) for b in module.branches.values())
    return module.in_features * module.out_features


@torch.no_grad()
def _nonzeros(module: WeightLayer, threshold: float) -> int:
    if isinstance(module, KronLinear):
        return int(module.block_mask(threshold).sum()) * module.block[0] * module.block[1]
    if isinstance(module, PatternSelectLinear):
        alive = torch.zeros(module.out_features, module.in_features, dtype=torch.bool)
        for branch in module.branches.values():
            branch = cast(KronLinear, branch)  # ModuleDict is typed as holding nn.Module
            h, w = branch.block
            alive |= branch.block_mask(threshold).cpu().repeat_interleave(h, 0).repeat_interleave(w, 1)
        return int(alive.sum())
    return module.weight.numel()


def model_cost(model: nn.Module, input_shape: Sequence[int], threshold: float = DEFAULT_THRESHOLD) -> ModelCost:
    """Costs of `model` for one sample of shape input_shape (e.g. (C, H, W)), per weight layer and in total.

    The total's params is every trainable parameter of the model (norms, embeddings included).
    """
    outermost: dict[str, WeightLayer] = {}
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_LAYERS) and not any(name.startswith(p + ".") for p in outermost):
            outermost[name] = module
    macs = dict.fromkeys(outermost, 0)

    def hook(name: str):
        def count(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                macs[name] += output.numel() * k
            else:
                macs[name] += inputs[0].numel() // module.in_features * _macs_per_row(module)
        return count

    handles = [m.register_forward_hook(hook(n)) for n, m in outermost.items()]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    layers = {n: Cost(_trainable(m), macs[n], _nonzeros(m, threshold)) for n, m in outermost.items()}
    total = Cost(_trainable(model), sum(macs.values()), sum(c.nonzeros for c in layers.values()))
    return ModelCost(total, layers)


def area_weighted(fractions: dict[str, float], areas: dict[str, int]) -> float:
    """The mean of per-layer fractions (e.g. block sparsity) weighted by layer area; 0 with no layers."""
    total = sum(areas[n] for n in fractions)
    return sum(fractions[n] * areas[n] for n in fractions) / total if total else 0.0
