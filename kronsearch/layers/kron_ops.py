"""The Kronecker contraction: y = x @ W^T with W = sum_i C_i ⊗ B_i, without ever building W.

Shapes (nn.Linear orientation, W is out x in = (m1*h) x (n1*w)):
    x: (N, n1*w)    factors C: (r, m1, n1)    blocks B: (r, h, w)    y: (N, m1*h)

Viewing one input row as a matrix X (n1, w), its output is Y = sum_i C_i X B_i^T (m1, h).
The two association orders of that product are the paper's two contraction orders.

Why it is fast (measured against nn.Linear, benchmarks/layer_speed.py): each order is one GEMM over
the whole batch plus one batched product with the factors broadcast over the rows, and nothing
else. The blocks act on the innermost axis of a row, so that product is one GEMM over all N*n1
(or N*m1) sub-rows; the factors act on the middle axis, so that product is N small GEMMs
(torch.bmm) on a stride-0 view of the factors. Every intermediate is produced directly in the
layout the next product reads, so no activation is ever transposed or copied, and plain
autograd's backward is the same kind of products (the intermediate is saved, S*A is not recomputed).
At these sizes copies and per-op overhead cost about as much as the arithmetic: the previous
version (two GEMMs with a permute copy of the activations between them, and one of the output)
took 1.1-1.5x as long per training step. A custom autograd.Function for the whole contraction
was measured too: it runs the same products plus Python overhead (5-50% slower at the small
shapes), and gained only through the weight-gradient route below, which is kept on its own.

That route: autograd's gradient of a broadcast bmm operand is N per-row products (K = h or w
each) summed afterwards, through an (N, P, K) temporary. When that temporary is large,
`_BroadcastBmm` computes the same gradient as one long GEMM over (row, column) instead, after
copying gy and z to row-inner layouts (3072x768 layer: 15-25% faster per step; at the smaller
shapes the extra copies and Python overhead lose, hence the size threshold).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kronsearch.layers.blocks import contraction_macs

GEMM_GRAD_MIN_ELEMENTS = 1 << 20
"""Use `_BroadcastBmm` when the (N, P, K) per-row gradient temporary would have more elements."""


def cheaper_order(m1: int, n1: int, h: int, w: int, rank: int) -> int:
    """1 to contract with the blocks B first, 2 to contract with the factors C first.

    On a MAC tie (e.g. 1024x1024 with 32x32 blocks) the two orders measured within 3% of each
    other, so the tie goes to order 1 rather than to a timing run.
    """
    blocks_first, factors_first = contraction_macs(m1, n1, h, w, rank)
    return 1 if blocks_first <= factors_first else 2


class _BroadcastBmm(torch.autograd.Function):
    """out[n] = c @ z[n] for c (P, K), z (N, K, M); grad c = one GEMM over the (n, m) pairs.

    Under autocast the forward's bmm runs in the autocast dtype (c may be float32, z bfloat16), but the
    backward runs outside autocast: it computes in the dtype the forward's output had, as autograd's own
    bmm backward would, and returns each gradient in its input's dtype."""

    @staticmethod
    def forward(ctx, c: Tensor, z: Tensor) -> Tensor:
        ctx.save_for_backward(c, z)
        out = torch.bmm(c.expand(z.shape[0], -1, -1), z)
        ctx.compute_dtype = out.dtype
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        c, z = ctx.saved_tensors
        (n, k, m), p = z.shape, c.shape[0]
        dtype = ctx.compute_dtype
        grad, c_, z_ = grad.to(dtype), c.to(dtype), z.to(dtype)
        grad_c = grad_z = None
        if ctx.needs_input_grad[0]:
            grad_c = (grad.transpose(0, 1).reshape(p, n * m) @ z_.transpose(0, 1).reshape(k, n * m).t()).to(c.dtype)
        if ctx.needs_input_grad[1]:
            grad_z = torch.bmm(c_.t().expand(n, -1, -1), grad).to(z.dtype)
        return grad_c, grad_z


def _broadcast_bmm(c: Tensor, z: Tensor) -> Tensor:
    """c (P, K) applied to every z[n] (K, M): (N, P, M)."""
    if z.shape[0] * c.numel() > GEMM_GRAD_MIN_ELEMENTS:
        return _BroadcastBmm.apply(c, z)
    return torch.bmm(c.expand(z.shape[0], -1, -1), z)


def kron_weight(factors: Tensor, blocks: Tensor) -> Tensor:
    """W = sum_i C_i ⊗ B_i: factors (r, m1, n1), blocks (r, h, w) -> (m1*h, n1*w), differentiable.

    W[p, a, q, b] = sum_i C_i[p, q] B_i[a, b] written in W's (m1, h, n1, w) layout: r * m * n
    multiply-adds, and the backward is a reduction of dW against each operand. Measured for a
    768x192 weight with 2x2 blocks, forward + backward, median of 50: this einsum 0.93 ms at rank 1
    (an explicit broadcast multiply: 0.92 ms) and 0.97 ms at rank 2 (broadcast multiply and sum
    over i: 1.56 ms), against ~20 ms for that layer's GEMMs at 4096 rows.
    """
    rank, m1, n1 = factors.shape
    _, h, w = blocks.shape
    return torch.einsum("ipq,iab->paqb", factors, blocks).reshape(m1 * h, n1 * w)


def kron_matmul(x: Tensor, factors: Tensor, blocks: Tensor, order: int) -> Tensor:
    """x (N, n1*w) -> (N, m1*h), contracting in the given order (see `cheaper_order`)."""
    rank, m1, n1 = factors.shape
    _, h, w = blocks.shape
    batch = x.shape[0]
    if order == 1:
        # Z[(N, q), (i, a)] = sum_b X[N, q, b] B_i[a, b]: one GEMM, rows (N, q)
        z = F.linear(x.reshape(batch * n1, w), blocks.reshape(rank * h, w))
        # Y[N, p, a] = sum_(q, i) C_i[p, q] Z[N, (q, i), a]: C broadcast over N
        c = factors.permute(1, 2, 0).reshape(m1, n1 * rank)
        return _broadcast_bmm(c, z.view(batch, n1 * rank, h)).view(batch, m1 * h)
    # Z[N, (p, i), b] = sum_q C_i[p, q] X[N, q, b]: C broadcast over N
    z = _broadcast_bmm(factors.transpose(0, 1).reshape(m1 * rank, n1), x.reshape(batch, n1, w))
    # Y[(N, p), a] = sum_(i, b) Z[N, p, i, b] B_i[a, b]: one GEMM, rows (N, p)
    y = F.linear(z.view(batch * m1, rank * w), blocks.transpose(0, 1).reshape(h, rank * w))
    return y.view(batch, m1 * h)


class _MergedLinear(torch.autograd.Function):
    """y = x W^T + bias with W = sum over terms of kron_weight(C, B), rebuilt in backward, not saved.

    Saves x and the factors only (as nn.Linear saves x and its weight parameter): W would add m * n
    per layer to the activations (+4% peak for ViT-tiny). Backward: dx = dy W (one GEMM),
    dW = dy^T x (one GEMM), then dW projected onto every term: dC_i[p, q] = <dW block (p, q), B_i>,
    dB_i = sum_pq C_i[p, q] dW block (p, q), r * m * n each. Written with differentiable ops, so
    double backward works. At ViT-tiny's 768x192 with 2x2 blocks (1 thread) the build took 0.35 ms,
    dC 0.2 ms and dB 0.18 ms, against about 30 ms for each of the three GEMMs at 4160 rows.
    """

    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor | None, *pairs: Tensor) -> Tensor:
        ctx.save_for_backward(x, *pairs)
        ctx.has_bias = bias is not None
        weight = _sum_weights(pairs)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, *pairs = ctx.saved_tensors
        grad = grad.to(x.dtype)  # under autocast the output (so grad) is bf16/fp16, x and the factors are not
        grad_x = grad @ _sum_weights(pairs) if ctx.needs_input_grad[0] else None
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[1] else None
        grad_pairs: list[Tensor | None] = [None] * len(pairs)
        if any(ctx.needs_input_grad[2:]):
            grad_w = grad.t() @ x
            for k in range(0, len(pairs), 2):
                (_, m1, n1), (_, h, w) = pairs[k].shape, pairs[k + 1].shape
                blocks_view = grad_w.view(m1, h, n1, w)
                grad_pairs[k] = torch.einsum("paqb,iab->ipq", blocks_view, pairs[k + 1])
                # the einsum "paqb,ipq->iab" (a permute copy and a GEMM) took 4x as long at 2x2 blocks
                grad_pairs[k + 1] = torch.stack([(blocks_view * c[:, None, :, None]).sum(0).sum(1) for c in pairs[k]])
        return grad_x, grad_bias, *grad_pairs


def _sum_weights(pairs: Sequence[Tensor]) -> Tensor:
    """sum_k kron_weight(pairs[2k], pairs[2k + 1]), accumulated in place (two m x n buffers at most)."""
    weight = kron_weight(pairs[0], pairs[1])
    for k in range(2, len(pairs), 2):
        weight.add_(kron_weight(pairs[k], pairs[k + 1]))
    return weight


def merged_linear(x: Tensor, pairs: Sequence[tuple[Tensor, Tensor]], bias: Tensor | None) -> Tensor:
    """x (N, n) -> (N, m) = x W^T + bias, W = sum of C ⊗ B over the (factors, blocks) pairs: one GEMM."""
    return _MergedLinear.apply(x, bias, *(t for pair in pairs for t in pair))
