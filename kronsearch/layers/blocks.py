"""Pattern math: which block shapes fit a layer, and what a pattern costs.

A pattern is a block shape (h, w) and a rank r for a layer of shape (out, in) = (m1*h, n1*w).
All counts are exact and are used as search objectives:
- training parameters: r * (m1*n1 + h*w) + m1*n1 (+ out for the bias);
- forward multiply-adds (MACs) per input row: the cheaper of the two contraction orders;
- inference non-zeros: the weight entries that survive merging, (non-zero blocks) * h * w.
"""

from __future__ import annotations

from collections.abc import Sequence

from kronsearch.layers.errors import BadInput

Block = tuple[int, int]
MAX_RANK = 1024  # the largest rank a space file or a plan may ask for
MAX_KRON_PARAMS = 250_000_000
"""The Kronecker layers' trainable parameters a space file or a pattern file may ask for (a one-round model's
every candidate counted), as models.MAX_MODEL_PARAMS bounds the dense model: 1 GB of float32, 4 GB with
gradients and Adam's states. The rank alone was bounded before: 1x1 blocks at rank 1024 on one 4096x4096
layer passed, and asked for 68.7 GB."""


def contraction_macs(m1: int, n1: int, h: int, w: int, rank: int) -> tuple[int, int]:
    """Multiply-adds per input row of the two orders: (blocks first, factors first)."""
    blocks_first = rank * h * n1 * (w + m1)
    factors_first = rank * m1 * w * (n1 + h)
    return blocks_first, factors_first


def divisors(n: int) -> list[int]:
    """All positive divisors of n, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def valid_blocks(out_features: int, in_features: int) -> list[Block]:
    """Every block shape (h, w) that tiles an (out_features, in_features) weight exactly."""
    return [(h, w) for h in divisors(out_features) for w in divisors(in_features)]


def format_block(block: Sequence[int]) -> str:
    """(4, 8) -> '4x8', the spelling used in reports and space files."""
    return f"{block[0]}x{block[1]}"


def parse_block(text: str | Sequence[int]) -> Block:
    """'4x8', [4, 8] or (4, 8) -> (4, 8). Raises BadInput on anything else (sides < 1 included)."""
    block = None
    if isinstance(text, str):
        parts = text.lower().split("x")
        if len(parts) == 2 and all(p.strip().isdecimal() for p in parts):
            block = int(parts[0]), int(parts[1])
    elif isinstance(text, Sequence) and len(text) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in text):
        block = int(text[0]), int(text[1])
    if block is None:
        raise BadInput(f"a block is written 'HxW' (e.g. '4x4') or [H, W] with positive integers, got {text!r}")
    if min(block) < 1:
        raise BadInput(f"block sides must be >= 1, got {text!r}")
    return block


def check_block(out_features: int, in_features: int, block: Sequence[int], layer: str = "layer") -> Block:
    """Return block as a tuple, or raise BadInput naming the layer shape and the valid blocks."""
    if len(block) != 2:
        raise BadInput(f"a block is (h, w), two integers; got {tuple(block)!r}")
    h, w = block
    if h < 1 or w < 1 or out_features % h or in_features % w:
        valid = ", ".join(format_block(b) for b in valid_blocks(out_features, in_features))
        raise BadInput(
            f"block {format_block(block)} does not divide {layer} of shape "
            f"(out={out_features}, in={in_features}); valid blocks: {valid}"
        )
    return int(h), int(w)


def kron_params(out_features: int, in_features: int, block: Block, rank: int, bias: bool = True) -> int:
    """Trainable parameters of a KronLinear: S, the r factors A_i, the r blocks B_i, the bias."""
    h, w = block
    m1, n1 = out_features // h, in_features // w
    return rank * (m1 * n1 + h * w) + m1 * n1 + (out_features if bias else 0)


def kron_macs(out_features: int, in_features: int, block: Block, rank: int) -> int:
    """Forward multiply-adds per input row, in the cheaper contraction order (bias adds excluded)."""
    h, w = block
    return min(contraction_macs(out_features // h, in_features // w, h, w, rank))


def kron_nonzeros(block: Block, nonzero_blocks: int) -> int:
    """Weight entries left after merging: every surviving block is dense h x w."""
    return nonzero_blocks * block[0] * block[1]
