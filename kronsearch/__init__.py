"""kronsearch: search block-sparsity patterns for Kronecker-decomposed networks."""

from kronsearch.layers import (BSRLinear, KronifyReport, KronLinear, LayerPattern, PatternSelectLinear, Plan,
                               finalize_model, kronify, load_plan, model_plan, selection_penalty, valid_blocks)
from kronsearch.loading import load_model

__version__ = "0.1.0"
__all__ = [
    "BSRLinear", "KronLinear", "KronifyReport", "LayerPattern", "PatternSelectLinear", "Plan",
    "finalize_model", "kronify", "load_model", "load_plan", "model_plan", "selection_penalty", "valid_blocks",
    "__version__",
]
