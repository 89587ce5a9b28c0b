"""A teacher-student task whose teacher ``W = (S * A) ⊗ B`` has planted block sparsity.

Features are standard normal and are kept as generated (not normalized), so
``labels == argmax(x @ teacher.T)`` holds on the returned tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kronsearch.data.splits import Arrays, DatasetError
from kronsearch.layers.blocks import divisors

SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "in_features": 64, "num_classes": 16, "block": (4, 4), "sparsity": 0.5,
    "n_train": 4000, "n_test": 1000, "noise": 0.0,
}


def synthetic_teacher(num_classes: int, in_features: int, block: tuple[int, int],
                      sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """Teacher weight ``W = (S * A) ⊗ B`` of shape (num_classes, in_features).

    ``S`` is a 0/1 mask of shape (num_classes / h, in_features / w) with exactly
    ``round(sparsity * S.numel())`` zeros and at least one nonzero per row, ``A`` and the
    (h, w) block ``B`` are standard normal: ``W`` is zero exactly on the masked blocks.
    """
    h, w = block
    rows, cols = num_classes // h, in_features // w
    zeros = round(sparsity * rows * cols)
    if zeros > rows * (cols - 1):
        raise DatasetError(f"sparsity={sparsity} would zero a whole row of the {rows}x{cols} "
                           f"block grid; at most {rows * (cols - 1)} of {rows * cols} blocks "
                           "can be zero")
    keep = torch.randint(cols, (rows,), generator=generator)  # one guaranteed nonzero per row
    mask = torch.ones(rows, cols)
    others = (torch.arange(cols) != keep[:, None]).flatten().nonzero().squeeze(1)
    chosen = others[torch.randperm(len(others), generator=generator)[:zeros]]
    mask.view(-1)[chosen] = 0.0
    a = torch.randn(rows, cols, generator=generator)
    b = torch.randn(h, w, generator=generator)
    return torch.kron(mask * a, b)


def synthetic_options(options: dict[str, Any]) -> dict[str, Any]:
    """Defaults merged with ``options``, validated; block divisibility errors list divisors."""
    unknown = set(options) - set(SYNTHETIC_DEFAULTS)
    if unknown:
        raise DatasetError(f"unknown synthetic option(s) {sorted(unknown)}; allowed: "
                           f"{', '.join(SYNTHETIC_DEFAULTS)}")
    opts = {**SYNTHETIC_DEFAULTS, **options}
    for key in ("in_features", "num_classes", "n_train", "n_test"):
        if isinstance(opts[key], bool) or not isinstance(opts[key], int) or opts[key] < 1:
            raise DatasetError(f"synthetic {key} must be a positive integer, got {opts[key]!r}")
    block = opts["block"]
    if (not isinstance(block, Sequence) or len(block) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in block)):
        raise DatasetError(f"synthetic block must be two positive integers (h, w), got {block!r}")
    opts["block"] = h, w = tuple(block)
    n, m = opts["num_classes"], opts["in_features"]
    if n % h or m % w:
        raise DatasetError(
            f"block {(h, w)} must divide (num_classes, in_features) = {(n, m)}; allowed block "
            f"heights: {divisors(n)}, allowed block widths: {divisors(m)}")
    if not 0.0 <= opts["sparsity"] < 1.0:
        raise DatasetError(f"synthetic sparsity must be in [0, 1), got {opts['sparsity']!r}")
    if not opts["noise"] >= 0.0:
        raise DatasetError(f"synthetic noise must be >= 0, got {opts['noise']!r}")
    return opts


def synthetic_arrays(seed: int, **options: Any) -> tuple[torch.Tensor, Arrays]:
    """Teacher and data: x ~ N(0, I) of shape (N, 1, 1, in_features), y = argmax(W x + noise).

    Everything is drawn from one generator seeded with ``seed``.
    """
    opts = synthetic_options(options)
    generator = torch.Generator().manual_seed(seed)
    teacher = synthetic_teacher(opts["num_classes"], opts["in_features"], opts["block"],
                                opts["sparsity"], generator)
    n = opts["n_train"] + opts["n_test"]
    x = torch.randn(n, opts["in_features"], generator=generator)
    logits = x @ teacher.T
    if opts["noise"] > 0:
        logits = logits + opts["noise"] * torch.randn(logits.shape, generator=generator)
    images, labels = x.reshape(n, 1, 1, -1).numpy(), logits.argmax(dim=1).numpy()
    cut = opts["n_train"]
    return teacher, Arrays(images[:cut], labels[:cut], images[cut:], labels[cut:])
