"""kronsearch: search block-sparsity patterns for Kronecker-decomposed networks.

The public names are imported on first use (PEP 562; dir() lists them all), so importing the package, as the
command line's entry point (kronsearch.__main__) does before anything else, loads no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_EXPORTS = {name: "kronsearch.layers" for name in (
    "BSRLinear", "KronInference", "KronLinear", "KronifyReport", "LayerPattern", "PatternSelectLinear",
    "Plan", "finalize_model", "for_inference", "kronify", "load_plan", "model_plan", "l1_penalty", "valid_blocks")}
_EXPORTS["load_model"] = _EXPORTS["export_program"] = _EXPORTS["export_onnx"] = "kronsearch.loading"
_EXPORTS["OneRound"] = "kronsearch.one_round"
_EXPORTS["suggest"] = _EXPORTS["record_trial"] = "kronsearch.objective"
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kronsearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (imported or not yet), so tab completion and dir() find them."""
    return sorted(set(globals()) | set(__all__))
