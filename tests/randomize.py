"""Test helper: a module with every parameter drawn N(0, 1) in float64."""

from __future__ import annotations

import torch
from torch import nn


def randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter N(0, 1), in float64 (S included, so it has signs and varied magnitudes, not all ones)."""
    torch.manual_seed(seed)
    module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module
