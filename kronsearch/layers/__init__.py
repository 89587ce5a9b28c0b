"""The self-contained core: Kronecker layers, their block math, plans and exact costs.

It imports nothing of kronsearch outside this folder, so a user who only wants
`kronify(model, plan)` depends on this package alone. One concept per module, re-exported flat (each
name imported on first use):

- blocks: which block shapes tile a layer, and what a (block, rank) costs
- kron_ops, compute: the products (factored and merged) and the per-shape choice between them
- kron_linear: KronLinear (one block pattern), BSRLinear (merged, block-sparse inference)
- inference: KronInference, for_inference (a trained model's exact forms that skip pruned blocks)
- pattern_select: PatternSelectLinear (several candidate blocks competing in one layer)
- kronify: put either into any model; plan: which block and rank each layer gets
- costs: exact params / MACs / non-zeros of a whole model; errors: the error hierarchy
"""

import importlib
import sys
import types
from typing import Any

# name -> the module defining it, imported on first use (PEP 562): importing kronsearch.layers.errors,
# as every command does, loads no torch
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["MAX_RANK", "Block", "check_block", "divisors", "format_block", "kron_macs", "kron_nonzeros",
                     "kron_params", "parse_block", "valid_blocks"], "blocks"),
    **dict.fromkeys(["COMPUTE_MODES", "default_compute_as", "set_default_compute"], "compute"),
    **dict.fromkeys(["Cost", "ModelCost", "model_cost"], "costs"),
    **dict.fromkeys(["BadInput", "KronsearchError", "RunFailure"], "errors"),
    **dict.fromkeys(["KronInference", "for_inference"], "inference"),
    **dict.fromkeys(["DEFAULT_THRESHOLD", "BSRLinear", "KronLinear"], "kron_linear"),
    **dict.fromkeys(["KronifyReport", "kronify", "model_plan"], "kronify"),
    **dict.fromkeys(["PatternSelectLinear", "finalize_model", "l1_penalty"], "pattern_select"),
    **dict.fromkeys(["LayerPattern", "Plan", "load_plan", "parse_plan"], "plan"),
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kronsearch.layers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"kronsearch.layers.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Keeps the function kronify as this package's attribute when its module, also named kronify, is
    imported (the import system then sets the package's attribute to the module)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and getattr(value, name, None) is not None and name in _EXPORTS:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
