"""KronLinear: a drop-in nn.Linear whose weight is a block-sparse sum of Kronecker products."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kronsearch.layers.blocks import Block, check_block, format_block
from kronsearch.layers.compute import check_compute, kron_forward
from kronsearch.layers.errors import BadInput
from kronsearch.layers.kron_ops import cheaper_order, kron_weight

DEFAULT_THRESHOLD = 0.0
"""|S| at or below this counts as a pruned block: the trainer's proximal steps leave pruned blocks at exactly 0."""


class KronLinear(nn.Module):
    """y = x W^T + b with W = sum_{i=1..r} (S ⊙ A_i) ⊗ B_i, trained through the factors only.

    W is (out_features, in_features) = (m1*h, n1*w), nn.Linear's orientation. S and A_i are
    (m1, n1), B_i is (h, w): S[p, q] scales the whole h x w block (p, q) of W, so an l1 penalty
    on S makes W block-sparse with block shape (h, w).

    Args:
        in_features: size of each input row.
        out_features: size of each output row.
        block: (h, w), the block shape; must divide (out_features, in_features).
        rank: r, the number of Kronecker terms.
        bias: learn an additive bias like nn.Linear.
        compute: "factored" (never build W), "merged" (build W once per call, one GEMM), "auto"
            (the faster of those, timed once per shape) or None to follow the process default
            (`kronsearch.layers.compute.set_default_compute`, "factored" unless changed). Every path
            computes the same function and gradients; see kronsearch/layers/compute.py.
    """

    __constants__ = ["in_features", "out_features", "block", "rank"]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        block: Sequence[int],
        rank: int = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        compute: str | None = None,
    ) -> None:
        super().__init__()
        self.compute = check_compute(compute)
        self.block: Block = check_block(out_features, in_features, block)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise BadInput(f"rank must be an integer >= 1, got {rank!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        h, w = self.block
        m1, n1 = out_features // h, in_features // w
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.s = nn.Parameter(torch.empty(m1, n1, **factory))
        self.a = nn.Parameter(torch.empty(rank, m1, n1, **factory))
        self.b = nn.Parameter(torch.empty(rank, h, w, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.order = cheaper_order(m1, n1, h, w, rank)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Match nn.Linear's weight variance, Var(W) = 1 / (3 * in_features).

        S starts at 1 (every block alive; the l1 penalty decides which die). A_i and B_i are
        N(0, sigma^2) with sigma^4 = 1 / (3 * in_features * r): each entry of W is a sum of r
        products A_i[p, q] * B_i[a, b], so Var(W) = r * sigma^4, which is nn.Linear's
        kaiming-uniform variance. The bias is U(-1/sqrt(in), 1/sqrt(in)) as in nn.Linear.
        """
        sigma = (3.0 * self.in_features * self.rank) ** -0.25
        nn.init.ones_(self.s)
        nn.init.normal_(self.a, std=sigma)
        nn.init.normal_(self.b, std=sigma)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def grid(self) -> tuple[int, int]:
        """(m1, n1): how many blocks tile W vertically and horizontally."""
        m1, n1 = self.s.shape
        return m1, n1

    def factors(self) -> Tensor:
        """S ⊙ A_i for every term: (r, m1, n1)."""
        return self.s * self.a

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features) along the `compute` path (factored: in `self.order`)."""
        if x.shape[-1] != self.in_features:
            raise BadInput(f"expected input (..., {self.in_features}), got {tuple(x.shape)}")
        return kron_forward(x, [(self.factors(), self.b, self.order)], self.bias, self.compute)

    def materialize(self) -> Tensor:
        """The dense weight W: (out_features, in_features). For inspection and export only."""
        return kron_weight(self.factors(), self.b)

    def block_mask(self, threshold: float = DEFAULT_THRESHOLD) -> Tensor:
        """Boolean (m1, n1): True where block (p, q) survives, i.e. |S[p, q]| > threshold."""
        return self.s.detach().abs() > threshold

    def block_sparsity(self, threshold: float = DEFAULT_THRESHOLD) -> float:
        """Fraction of pruned blocks, in [0, 1]."""
        return 1.0 - self.block_mask(threshold).float().mean().item()

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """An nn.Linear computing the same function (W materialized once)."""
        p = self.s
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None, p.device, p.dtype)
        linear.weight.copy_(self.materialize())
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    @torch.no_grad()
    def to_bsr(self, threshold: float | None = DEFAULT_THRESHOLD) -> Tensor:
        """W as a sparse BSR tensor with (h, w) blocks, storing only the surviving blocks.

        Blocks with |S| <= threshold are dropped (None keeps every block with S != 0).
        """
        m1, n1 = self.grid
        h, w = self.block
        mask = self.s != 0 if threshold is None else self.block_mask(threshold)
        dense_blocks = self.materialize().reshape(m1, h, n1, w).transpose(1, 2)
        rows, cols = mask.nonzero(as_tuple=True)
        crow = torch.zeros(m1 + 1, dtype=torch.int64, device=mask.device)
        crow[1:] = mask.sum(dim=1).cumsum(0)
        return torch.sparse_bsr_tensor(
            crow, cols, dense_blocks[rows, cols], size=(self.out_features, self.in_features),
            check_invariants=True,
        )

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, block: Sequence[int], rank: int = 1) -> KronLinear:
        """The KronLinear nearest to `linear` in Frobenius norm (rearrangement + truncated SVD).

        Rearranging W so that block (p, q) becomes row p*n1 + q gives an (m1*n1, h*w) matrix R
        with W = sum_i C_i ⊗ B_i  <=>  R = sum_i vec(C_i) vec(B_i)^T (Van Loan-Pitsianis), so
        the best rank-r R gives the best r-term W. S is 1 on the non-zero blocks of W and 0 on
        the others, so `block_mask` reads a block-sparse W's pattern exactly. If rank exceeds
        the rank of R, the extra terms start with A_i = 0 (W unchanged) and trainable B_i.
        """
        out_features, in_features = linear.weight.shape
        weight = linear.weight.detach()
        layer = cls(in_features, out_features, block, rank, linear.bias is not None,
                    weight.device, weight.dtype)
        (m1, n1), (h, w) = layer.grid, layer.block
        r = weight.reshape(m1, h, n1, w).permute(0, 2, 1, 3).reshape(m1 * n1, h * w)
        u, sigma, vh = torch.linalg.svd(r, full_matrices=False)
        kept = min(rank, sigma.numel())
        root = sigma[:kept].sqrt()
        layer.a.zero_()
        layer.a[:kept] = (u[:, :kept] * root).t().reshape(kept, m1, n1)
        layer.b[:kept] = (vh[:kept] * root[:, None]).reshape(kept, h, w)
        layer.s.copy_((r != 0).any(dim=1).reshape(m1, n1).to(layer.s.dtype))
        if linear.bias is not None and layer.bias is not None:
            layer.bias.copy_(linear.bias)
        return layer

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"block={format_block(self.block)}, rank={self.rank}, bias={self.bias is not None}"
            + ("" if self.compute is None else f", compute={self.compute!r}")
        )


class BSRLinear(nn.Module):
    """Inference-only linear layer running from a block-sparse (BSR) weight: (..., in) -> (..., out).

    It multiplies only the stored blocks (gather the input blocks, one batched product, scatter-add
    into the output rows), so its cost is (non-zero blocks) * h * w MACs per row, on any device and
    dtype and for non-square blocks, which torch's CPU BSR kernels do not support.
    """

    weight: Tensor  # buffers, typed for the checker (nn.Module.__getattr__ says Tensor | Module)
    bias: Tensor | None
    block_rows: Tensor

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if weight.layout != torch.sparse_bsr:
            raise BadInput(f"BSRLinear needs a torch.sparse_bsr weight, got layout {weight.layout}")
        self.out_features, self.in_features = weight.shape
        crow = weight.crow_indices()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        rows = torch.arange(len(crow) - 1, device=crow.device)
        self.register_buffer("block_rows", torch.repeat_interleave(rows, crow.diff()))

    @classmethod
    def from_kron(cls, layer: KronLinear, threshold: float | None = DEFAULT_THRESHOLD) -> BSRLinear:
        """Merge a trained KronLinear once into its block-sparse weight."""
        bias = None if layer.bias is None else layer.bias.detach().clone()
        return cls(layer.to_bsr(threshold), bias)

    def forward(self, x: Tensor) -> Tensor:
        values = self.weight.values()  # (blocks, h, w)
        _, h, w = values.shape
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features // w, w)
        parts = torch.einsum("kab,nkb->nka", values, x[:, self.weight.col_indices()])
        y = x.new_zeros(x.shape[0], self.out_features // h, h).index_add_(1, self.block_rows, parts)
        y = y.reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return f"in_features={self.in_features}, out_features={self.out_features}, nonzeros={nnz}"
