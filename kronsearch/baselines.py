"""Baselines of the paper's comparison: dense training pushed to block sparsity (PAPER.md section 3).

    train_baseline(method, model, data, config, block=(h, w), target_sparsity=0.5) -> TrainResult

Every method trains the dense nn.Linear weights with kronsearch.trainer.train (through its
`regularizer` and `after_step` hooks, so the loop, schedule, seeding and metrics are the trainer's)
and reports the same metrics as a Kronecker run. Methods:

- "dense": plain training, no pruning (block sparsity is whatever is exactly zero: 0 in practice).
- "group_lasso": penalty strength * sum over every (h, w) block of every prunable weight of
  sqrt(h * w) * ||block||_F. After training, each prunable layer is pruned to exactly
  round(target_sparsity * blocks) zero blocks, the smallest by Frobenius norm, and accuracy is
  measured after that pruning (the paper compares at ~50% block sparsity). No retraining.
- "elastic_group_lasso": group lasso + l1 * sum |W| over the prunable weights; pruned as group_lasso.
- "rigl": block-wise RigL. Each prunable layer starts with a random mask at exactly the target
  block sparsity. Every `rigl_every` steps, until `rigl_end` of the training, each layer drops the
  fraction f(t) = rigl_drop / 2 * (1 + cos(pi * t / T_end)) of its active blocks with the smallest
  ||block||_F and grows as many inactive blocks with the largest ||dL/d block||_F (the dense gradient of
  that step, which is in .grad when the hook runs); grown blocks start at zero. The mask is applied
  to the weights after every optimizer step, so pruned blocks stay exactly zero. The optimizer's
  moments are not reset for grown blocks (the trainer owns the optimizer).
- "iterative_pruning": the epochs are split into `rounds` + 1 segments (fewer if there are not
  enough epochs); after each of the first `rounds` segments the smallest-norm blocks are pruned, the
  block sparsity rising linearly to the target; the mask is then held (applied after every step)
  while the next segment retrains. Each segment is one trainer run with a fresh optimizer and its
  own cosine schedule (a warm restart), seed config.seed + segment. With one epoch: train, prune.

Which layers: the nn.Linear layers matching `include`/`exclude` (fnmatch globs, as kronify) whose
shape the block divides; the others stay dense and are never pruned. Pruning is per layer (every
prunable layer reaches the target; the overall figure is area-weighted like the trainer's, so it
equals the target up to each layer's rounding).

Metrics: block_sparsity = area-weighted fraction of all-zero (h, w) blocks of the prunable weights;
train_params / train_macs = the dense model's (they train the dense W); inference_nonzeros = non-zero
weight entries of every nn.Linear and nn.Conv2d; wall_time and train_macs_total sum over segments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import torch
from torch import Tensor, nn

from kronsearch.data import DataSplits
from kronsearch.data.batches import Batches
from kronsearch.layers.blocks import Block, format_block, valid_blocks
from kronsearch.layers.costs import area_weighted
from kronsearch.layers.errors import BadInput
from kronsearch.layers.kronify import matching_linears
from kronsearch.trainer import TrainConfig, TrainResult, accuracy, resolve_device, train

METHODS: tuple[str, ...] = ("dense", "group_lasso", "elastic_group_lasso", "rigl", "iterative_pruning")


BlockSpec = Sequence[int] | Mapping[str, Sequence[int]]


def layer_blocks(model: nn.Module, block: BlockSpec, include: Sequence[str] = ("*",),
                 exclude: Sequence[str] = ()) -> dict[str, Block]:
    """layer -> block for the nn.Linear layers matched by the globs whose (out, in) shape their block divides.

    `block` is one (h, w) for every layer, or {layer name: (h, w)} (layers not named are not pruned).
    """
    out = {}
    for n, m in matching_linears(model, include, exclude).items():
        b = block.get(n) if isinstance(block, Mapping) else block
        if b is not None and tuple(b) in valid_blocks(m.out_features, m.in_features):
            out[n] = (int(b[0]), int(b[1]))
    return out


def prunable_layers(model: nn.Module, block: BlockSpec, include: Sequence[str] = ("*",),
                    exclude: Sequence[str] = ()) -> dict[str, nn.Linear]:
    """The nn.Linear modules of layer_blocks()."""
    return {n: cast(nn.Linear, model.get_submodule(n)) for n in layer_blocks(model, block, include, exclude)}


def block_norms(weight: Tensor, block: Block, eps: float = 0.0) -> Tensor:
    """(m1, n1) Frobenius norms of the (h, w) blocks of an (m1*h, n1*w) matrix."""
    h, w = block
    m, n = weight.shape
    squares = weight.reshape(m // h, h, n // w, w).pow(2).sum(dim=(1, 3))
    return (squares + eps).sqrt() if eps else squares.sqrt()


def expand(mask: Tensor, block: Block) -> Tensor:
    """(m1, n1) block mask -> (m1*h, n1*w) entry mask."""
    return mask.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)


def smallest_blocks_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Boolean keep-mask with exactly round(sparsity * numel) False entries: the smallest scores."""
    drop = round(sparsity * scores.numel())
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if drop:
        keep[torch.argsort(scores.flatten(), stable=True)[:drop]] = False
    return keep.reshape(scores.shape)


@torch.no_grad()
def apply_masks(layers: dict[str, nn.Linear], masks: dict[str, Tensor], blocks: dict[str, Block]) -> None:
    for name, layer in layers.items():
        layer.weight.mul_(expand(masks[name], blocks[name]).to(layer.weight.dtype))


@torch.no_grad()
def prune_to(layers: dict[str, nn.Linear], blocks: dict[str, Block], sparsity: float,
             masks: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Zero the smallest-norm blocks of every layer up to `sparsity`; already-pruned blocks stay pruned."""
    new = {}
    for name, layer in layers.items():
        scores = block_norms(layer.weight, blocks[name])
        if masks is not None:
            scores = scores.masked_fill(~masks[name], -1.0)  # pruned blocks go first
        new[name] = smallest_blocks_mask(scores, sparsity)
    apply_masks(layers, new, blocks)
    return new


@torch.no_grad()
def layer_block_sparsity(layers: dict[str, nn.Linear], blocks: dict[str, Block]) -> tuple[float, dict[str, float]]:
    """(area-weighted overall, per layer) fraction of all-zero blocks."""
    per = {n: float((block_norms(m.weight, blocks[n]) == 0).float().mean()) for n, m in layers.items()}
    return area_weighted(per, {n: m.weight.numel() for n, m in layers.items()}), per


@torch.no_grad()
def weight_nonzeros(model: nn.Module) -> int:
    return sum(int(m.weight.count_nonzero()) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def group_lasso_penalty(layers: dict[str, nn.Linear], blocks: dict[str, Block], strength: float, l1: float = 0.0
                        ) -> Callable[[nn.Module], Tensor]:
    def penalty(_: nn.Module) -> Tensor:
        total: Tensor | float = sum(math.sqrt(blocks[n][0] * blocks[n][1])
                                    * block_norms(m.weight, blocks[n], eps=1e-12).sum() for n, m in layers.items())
        total = strength * total
        if l1:
            total = total + l1 * sum(m.weight.abs().sum() for m in layers.values())
        return cast(Tensor, total)  # 0.0, a float, when no layer is prunable: the trainer adds it to the loss

    return penalty


class RigL:
    """Block-wise RigL masks over `layers`; call as the trainer's after_step hook."""

    def __init__(self, layers: dict[str, nn.Linear], blocks: dict[str, Block], sparsity: float, *, every: int,
                 drop: float, end: float, generator: torch.Generator) -> None:
        self.layers, self.blocks, self.every, self.drop, self.end = layers, blocks, every, drop, end
        self.masks = {}
        for name, layer in layers.items():
            scores = torch.rand(block_norms(layer.weight, blocks[name]).shape, generator=generator)
            self.masks[name] = smallest_blocks_mask(scores, sparsity).to(layer.weight.device)
        self.updates = 0
        apply_masks(layers, self.masks, blocks)

    @torch.no_grad()
    def __call__(self, step: int, total_steps: int) -> None:
        t_end = int(self.end * total_steps)
        if step % self.every == 0 and step < t_end:
            fraction = self.drop / 2 * (1 + math.cos(math.pi * step / t_end))
            for name, layer in self.layers.items():
                self._update(name, layer, fraction)
            self.updates += 1
        apply_masks(self.layers, self.masks, self.blocks)

    def _update(self, name: str, layer: nn.Linear, fraction: float) -> None:
        mask = self.masks[name].flatten().clone()
        active = int(mask.sum())
        k = min(int(fraction * active), int((~mask).sum()))
        if k == 0 or layer.weight.grad is None:
            return
        block = self.blocks[name]
        magnitude = block_norms(layer.weight, block).flatten().masked_fill(~mask, math.inf)
        dropped = torch.argsort(magnitude, stable=True)[:k]
        growth = block_norms(layer.weight.grad, block).flatten().masked_fill(mask, -math.inf)
        grown = torch.argsort(growth, descending=True, stable=True)[:k]  # among blocks inactive before the drop
        mask[dropped] = False
        mask[grown] = True
        self.masks[name] = mask.reshape(self.masks[name].shape)
        w = layer.weight.data
        grown_mask = torch.zeros_like(mask)
        grown_mask[grown] = True
        w.mul_(~expand(grown_mask.reshape(self.masks[name].shape), block))  # grown blocks start at zero


def _finish(result: TrainResult, model: nn.Module, data: DataSplits, config: TrainConfig,
            layers: dict[str, nn.Linear], blocks: dict[str, Block], remeasure: bool) -> TrainResult:
    """Replace the Kronecker-only metrics by the baseline's; re-measure accuracy after a final pruning."""
    overall, per = layer_block_sparsity(layers, blocks)
    changes: dict[str, Any] = {
        "block_sparsity": overall, "layer_sparsity": per, "inference_nonzeros": weight_nonzeros(model),
        "plan": {n: {"block": format_block(b), "pruned_dense": True} for n, b in blocks.items()}}
    if remeasure:
        device = resolve_device(config.device)

        changes["val_accuracy"] = accuracy(model, Batches(data.val, config.batch_size, device))
        changes["test_accuracy"] = accuracy(model, Batches(data.test, config.batch_size, device))
    return replace(result, **changes)


def train_baseline(
    method: str,
    model: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    *,
    block: BlockSpec = (4, 4),
    target_sparsity: float = 0.5,
    strength: float = 1e-4,
    l1: float = 1e-5,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    rigl_every: int | None = None,
    rigl_drop: float = 0.3,
    rigl_end: float = 0.75,
    rounds: int = 3,
    callback=None,
) -> TrainResult:
    """Train dense `model` with a baseline `method` (see the module doc) and return its metrics.

    block: one (h, w) for every layer, or {layer: (h, w)}. strength: group lasso weight; l1: elastic_group_lasso's
    l1 weight; rigl_every: steps between mask updates (default: about 20 updates over the first rigl_end of the
    training); rounds: pruning rounds of iterative_pruning. Raises BadInput for an unknown method or a target
    outside [0, 1).
    """
    if method not in METHODS:
        raise BadInput(f"unknown baseline method {method!r}; methods: {', '.join(METHODS)}")
    if not 0.0 <= target_sparsity < 1.0:
        raise BadInput(f"target_sparsity must be in [0, 1), got {target_sparsity!r}")
    blocks = layer_blocks(model, block, include, exclude)  # layer -> its block
    layers = {n: cast(nn.Linear, model.get_submodule(n)) for n in blocks}
    if method == "dense":
        return _finish(train(model, data, config, callback), model, data, config, layers, blocks, False)
    if method in ("group_lasso", "elastic_group_lasso"):
        model.to(resolve_device(config.device))
        penalty = group_lasso_penalty(layers, blocks, strength, l1 if method == "elastic_group_lasso" else 0.0)
        result = train(model, data, config, callback, regularizer=penalty)
        prune_to(layers, blocks, target_sparsity)
        return _finish(result, model, data, config, layers, blocks, True)
    if method == "rigl":
        model.to(resolve_device(config.device))
        steps = config.epochs * math.ceil(len(data.train) / config.batch_size)
        every = rigl_every or max(1, int(rigl_end * steps) // 20)
        rigl = RigL(layers, blocks, target_sparsity, every=every, drop=rigl_drop, end=rigl_end,
                    generator=torch.Generator().manual_seed(config.seed))
        result = train(model, data, config, callback, after_step=rigl)
        return _finish(result, model, data, config, layers, blocks, False)
    # iterative_pruning
    segments = max(1, min(rounds + 1, config.epochs))
    sizes = [config.epochs // segments + (i < config.epochs % segments) for i in range(segments)]
    prunes = max(1, segments - 1)
    masks: dict[str, Tensor] | None = None
    results: list[TrainResult] = []
    for i, epochs in enumerate(sizes):
        hook = None if masks is None else (lambda step, total, m=masks: apply_masks(layers, m, blocks))
        results.append(train(model, data, replace(config, epochs=epochs, seed=config.seed + i,
                                                  warmup_epochs=min(config.warmup_epochs, epochs)),
                             callback, after_step=hook))
        if i < prunes:
            masks = prune_to(layers, blocks, target_sparsity * (i + 1) / prunes, masks)
    history = [replace(h, epoch=k + 1) for k, h in enumerate(h for r in results for h in r.history)]
    result = replace(results[-1], history=history, wall_time=sum(r.wall_time for r in results),
                     train_macs_total=sum(r.train_macs_total for r in results))
    return _finish(result, model, data, config, layers, blocks, segments == 1)
