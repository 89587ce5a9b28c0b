"""The Kronecker contraction: y = x @ W^T with W = sum_i C_i ⊗ B_i, without ever building W.

Shapes (nn.Linear orientation, W is out x in = (m1*h) x (n1*w)):
    x: (N, n1*w)    factors C: (r, m1, n1)    blocks B: (r, h, w)    y: (N, m1*h)

Viewing one input row as a matrix X (n1, w), its output is Y = sum_i C_i X B_i^T (m1, h).
The two association orders of that product are the paper's two contraction orders.
"""

from __future__ import annotations

import torch
from torch import Tensor


def contraction_macs(m1: int, n1: int, h: int, w: int, rank: int) -> tuple[int, int]:
    """Multiply-adds per input row of the two orders: (blocks first, factors first)."""
    blocks_first = rank * h * n1 * (w + m1)
    factors_first = rank * m1 * w * (n1 + h)
    return blocks_first, factors_first


def cheaper_order(m1: int, n1: int, h: int, w: int, rank: int) -> int:
    """1 to contract with the blocks B first, 2 to contract with the factors C first."""
    blocks_first, factors_first = contraction_macs(m1, n1, h, w, rank)
    return 1 if blocks_first <= factors_first else 2


def kron_matmul(x: Tensor, factors: Tensor, blocks: Tensor, order: int) -> Tensor:
    """x (N, n1*w) -> (N, m1*h), contracting in the given order (see `cheaper_order`).

    Each order is two plain matrix products (GEMMs) over the whole batch, with one transpose of
    the activations in between: O(N * (n + m)) copies against O(N * MACs) arithmetic.
    """
    rank, m1, n1 = factors.shape
    _, h, w = blocks.shape
    batch = x.shape[0]
    if order == 1:
        # Z[N, q, (i, a)] = sum_b X[N, q, b] B_i[a, b]
        z = x.reshape(batch * n1, w) @ blocks.reshape(rank * h, w).t()
        # Y[(N, a), p] = sum_(i, q) Z[N, q, i, a] C_i[p, q]
        z = z.reshape(batch, n1, rank, h).permute(0, 3, 2, 1).reshape(batch * h, rank * n1)
        y = z @ factors.permute(0, 2, 1).reshape(rank * n1, m1)
        return y.reshape(batch, h, m1).transpose(1, 2).reshape(batch, m1 * h)
    # Z[(N, b), (i, p)] = sum_q X[N, q, b] C_i[p, q]
    xt = x.reshape(batch, n1, w).transpose(1, 2).reshape(batch * w, n1)
    z = xt @ factors.permute(2, 0, 1).reshape(n1, rank * m1)
    # Y[(N, p), a] = sum_(i, b) Z[N, b, i, p] B_i[a, b]
    z = z.reshape(batch, w, rank, m1).permute(0, 3, 2, 1).reshape(batch * m1, rank * w)
    y = z @ blocks.permute(0, 2, 1).reshape(rank * w, h)
    return y.reshape(batch, m1 * h)
