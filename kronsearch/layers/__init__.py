"""The self-contained core: Kronecker layers, their block math, plans and exact costs.

It imports nothing of kronsearch outside this folder, so a user who only wants
`kronify(model, plan)` depends on this package alone. One concept per module, re-exported flat:

- blocks: which block shapes tile a layer, and what a (block, rank) costs
- kron_ops, compute: the products (factored and merged) and the per-shape choice between them
- kron_linear: KronLinear (one block pattern), BSRLinear (merged, block-sparse inference)
- inference: KronInference, for_inference (a trained model's exact forms that skip pruned blocks)
- pattern_select: PatternSelectLinear (several candidate blocks competing in one layer)
- kronify: put either into any model; plan: which block and rank each layer gets
- costs: exact params / MACs / non-zeros of a whole model; errors: the error hierarchy
"""

from kronsearch.layers.blocks import (MAX_RANK, Block, check_block, divisors, format_block, kron_macs,
                                      kron_nonzeros, kron_params, parse_block, valid_blocks)
from kronsearch.layers.compute import COMPUTE_MODES, default_compute_as, set_default_compute
from kronsearch.layers.costs import Cost, ModelCost, model_cost
from kronsearch.layers.errors import BadInput, KronsearchError, RunFailure
from kronsearch.layers.inference import KronInference, for_inference
from kronsearch.layers.kron_linear import DEFAULT_THRESHOLD, BSRLinear, KronLinear
from kronsearch.layers.kronify import KronifyReport, kronify
from kronsearch.layers.pattern_select import PatternSelectLinear, finalize_model, l1_penalty
from kronsearch.layers.plan import LayerPattern, Plan, load_plan, model_plan, parse_plan

__all__ = [
    "COMPUTE_MODES", "DEFAULT_THRESHOLD", "MAX_RANK", "BSRLinear", "BadInput", "Block", "Cost", "KronInference",
    "KronLinear", "KronifyReport", "KronsearchError", "LayerPattern", "ModelCost", "PatternSelectLinear", "Plan",
    "RunFailure", "check_block", "default_compute_as", "divisors", "finalize_model", "for_inference",
    "format_block", "kron_macs", "kron_nonzeros", "kron_params", "kronify", "load_plan", "model_cost",
    "model_plan", "parse_block", "parse_plan", "l1_penalty", "set_default_compute", "valid_blocks",
]
