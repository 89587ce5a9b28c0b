"""PatternSelectLinear: several candidate block shapes in one layer, one of which the layer keeps.

The layer holds one KronLinear per candidate k (W_k = sum_i (S_k ⊙ A_{k,i}) ⊗ B_{k,i}, its own block
shape) and a shared bias. Its forward is the paper's sum W = sum_k W_k over the live candidates;
`only(k)` makes it compute with one candidate alone, which is how the one round trains and measures
them (kronsearch/selection.py: a race, each step training one candidate, the cheapest candidate
within a tolerance of the best winning). The race removes a candidate with `remove` when it leaves.

||W_k||_F (`candidate_norms`, from the factors through the r x r Gram matrices, never building W_k)
compares candidates of any block size directly, since every W_k has the layer's shape; the trainer
reports it per epoch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import cast

import torch
from torch import Tensor, nn

from kronsearch.layers.blocks import Block, format_block, valid_blocks
from kronsearch.layers.compute import check_compute, kron_forward
from kronsearch.layers.errors import BadInput
from kronsearch.layers.kron_linear import KronLinear


class PatternSelectLinear(nn.Module):
    """y = x (sum_k W_k)^T + b: one bias-free KronLinear per candidate block, sharing one bias.

    Candidates that do not divide (out_features, in_features) are dropped with a warning.
    Each branch starts as a whole layer would (a fresh KronLinear), because the one round trains and
    measures every candidate alone (`only`, kronsearch/selection.py); the sum of all K is then K
    layers' worth, which no training runs.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        candidates: Sequence[Sequence[int]],
        rank: int = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        compute: str | None = None,
    ) -> None:
        super().__init__()
        self.compute = check_compute(compute)  # as KronLinear's; "auto" compares factored and merged
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        valid = set(valid_blocks(out_features, in_features))
        kept = list(dict.fromkeys(tuple(int(v) for v in c) for c in candidates))
        dropped = [c for c in kept if c not in valid]
        self.candidates: list[Block] = [c for c in kept if c in valid]
        shape = f"(out={out_features}, in={in_features})"
        if not self.candidates:
            raise BadInput(
                f"no candidate block in {[format_block(c) for c in kept]} divides a layer of shape {shape}; "
                f"valid blocks: {', '.join(format_block(b) for b in sorted(valid))}"
            )
        if dropped:
            warnings.warn(f"candidates {[format_block(c) for c in dropped]} do not divide {shape}; dropped",
                          stacklevel=2)
        self.branches = nn.ModuleDict({
            format_block(c): KronLinear(in_features, out_features, c, rank, False, device, dtype)
            for c in self.candidates
        })
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every branch as a fresh KronLinear; the bias as nn.Linear's."""
        with torch.no_grad():
            for branch in self._live():
                branch.reset_parameters()
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.in_features)
                nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, candidates: Sequence[Sequence[int]], rank: int = 1) -> PatternSelectLinear:
        """Every candidate starts as the nearest Kronecker sum of the same trained layer
        (KronLinear.from_linear); the bias is the layer's. Each candidate alone then starts from the
        dense layer's function rather than from noise, with no candidate favoured.
        """
        weight = linear.weight
        layer = cls(linear.in_features, linear.out_features, candidates, rank, linear.bias is not None,
                    weight.device, weight.dtype)
        with torch.no_grad():
            for block, branch in zip(layer.candidates, layer._live()):
                nearest = KronLinear.from_linear(linear, block, rank)
                branch.s.copy_(nearest.s)
                branch.a.copy_(nearest.a)
                branch.b.copy_(nearest.b)
            if layer.bias is not None and linear.bias is not None:  # both or neither (bias=linear.bias is not None)
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features): bias + sum over the live branches of x W_k^T.

        Merged, all live candidates are summed into one W and cost one GEMM (kronsearch/layers/compute.py).
        """
        if x.shape[-1] != self.in_features:
            raise BadInput(f"expected input (..., {self.in_features}), got {tuple(x.shape)}")
        terms = [(branch.factors(), branch.b, branch.order) for branch in self._live()]
        return kron_forward(x, terms, self.bias, self.compute)

    def candidate_norms(self) -> Tensor:
        """||W_k||_F of every live candidate, differentiable: (K,), in `branches` order.

        ||sum_i C_i ⊗ B_i||_F^2 = sum_ij <C_i, C_j> <B_i, B_j> with C_i = S ⊙ A_i: O(r^2 (m1 n1 + h w)).
        """
        norms = []
        for branch in self._live():
            c = branch.factors().flatten(1)
            b = branch.b.flatten(1)
            norms.append(((c @ c.t()) * (b @ b.t())).sum().clamp_min(0).sqrt())
        return torch.stack(norms)

    @torch.no_grad()
    def weight_norms(self) -> dict[str, float]:
        """{candidate block name: ||W_k||_F} for every live candidate."""
        return dict(zip(self.branches, self.candidate_norms().tolist()))

    def remove(self, name: str) -> list[nn.Parameter]:
        """Drop candidate `name` from the layer (W loses W_k); return its parameters, for the optimizer."""
        if name not in self.branches:
            raise KeyError(f"no live candidate {name!r}; live: {', '.join(self.branches)}")
        if len(self.branches) == 1:
            raise BadInput(f"{name} is the last candidate of the layer; a layer keeps one")
        return list(self.branches.pop(name).parameters())

    @contextmanager
    def only(self, name: str) -> Iterator[None]:
        """Within the block, the layer computes x W_name^T + b alone (the others are kept, not used)."""
        live = self.branches
        self.branches = nn.ModuleDict({name: live[name]})
        try:
            yield
        finally:
            self.branches = live

    def selected(self) -> tuple[Block, dict[str, float]]:
        """The winning block (the live candidate with the largest ||W_k||_F: after the race, the only one)
        and every live candidate's ||W_k||_F."""
        norms = self.weight_norms()
        winner = max(norms, key=norms.__getitem__)
        return self._branch(winner).block, norms

    @torch.no_grad()
    def finalize(self) -> KronLinear:
        """The winner alone as a plain KronLinear, keeping its trained factors and the shared bias."""
        block, _ = self.selected()
        branch = self._branch(format_block(block))
        p = branch.s
        layer = KronLinear(self.in_features, self.out_features, block, self.rank,
                           self.bias is not None, p.device, p.dtype)
        layer.load_state_dict({**branch.state_dict(), **({"bias": self.bias} if self.bias is not None else {})})
        return layer

    def _branch(self, name: str) -> KronLinear:
        return cast(KronLinear, self.branches[name])  # ModuleDict is typed as holding nn.Module

    def _live(self) -> list[KronLinear]:
        """The live candidates' layers, in `branches` order."""
        return [cast(KronLinear, branch) for branch in self.branches.values()]

    def extra_repr(self) -> str:
        blocks = ", ".join(format_block(c) for c in self.candidates)
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"candidates=[{blocks}], rank={self.rank}, bias={self.bias is not None}")


def l1_penalty(model: nn.Module, lambda2: float) -> Tensor:
    """lambda2 * the sum of ||S||_1 over every KronLinear (the candidates of a PatternSelectLinear included).

    The penalty the trainer reports per epoch; it does not back-propagate through it: lambda2 acts by a
    proximal step on S (kronsearch/selection.py). A scalar tensor on the model's device; zero for a
    model without Kronecker layers.
    """
    l1 = [m.s.abs().sum() for m in model.modules() if isinstance(m, KronLinear)]
    return lambda2 * sum(l1, next(model.parameters()).new_zeros(()))


def finalize_model(model: nn.Module) -> dict[str, tuple[Block, dict[str, float]]]:
    """Replace every PatternSelectLinear by its winner, in place; return {layer: (winner, norms)}.

    A layer a OneRound raced must have its race decided (one live candidate): BadInput otherwise, rather than a
    winner by norm that the race never chose. A layer no race ran keeps its largest ||W_k||_F (`selected`)."""
    undecided = {name: list(m.branches) for name, m in model.named_modules() if isinstance(m, PatternSelectLinear)
                 and getattr(m, "_one_round_race", False) and len(m.branches) > 1}
    if undecided:
        layers = "; ".join(f"{name} ({', '.join(live)} live)" for name, live in list(undecided.items())[:5])
        raise BadInput(f"finalize_model: the OneRound race of {len(undecided)} layer(s) never decided: {layers}; "
                       f"call one_round.finish() first, which decides every open race now")
    selections = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, PatternSelectLinear):
            selections[name] = module.selected()
            model.set_submodule(name, module.finalize())
    return selections
