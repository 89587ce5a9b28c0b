"""kronsearch: search block-sparsity patterns for Kronecker-decomposed networks."""

from kronsearch.layers.kron_linear import BSRLinear, KronLinear
from kronsearch.layers.kronify import KronifyReport, kronify
from kronsearch.layers.pattern_select import PatternSelectLinear, finalize_model, selection_penalty
from kronsearch.patterns import valid_blocks
from kronsearch.loading import load_model
from kronsearch.plan import LayerPattern, Plan, load_plan, model_plan

__version__ = "0.1.0"
__all__ = [
    "BSRLinear", "KronLinear", "KronifyReport", "LayerPattern", "PatternSelectLinear", "Plan",
    "finalize_model", "kronify", "load_model", "load_plan", "model_plan", "selection_penalty", "valid_blocks",
    "__version__",
]
