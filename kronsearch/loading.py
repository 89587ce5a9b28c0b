"""Load an exported model in one call: the pattern file (`kronsearch export --out`) says which model and
which pattern, the weights file holds what was trained, and the optional BSR file the merged block-sparse
weights for inference.

    model = kronsearch.load_model("best.yaml", "best.safetensors")              # KronLinear layers
    fast = kronsearch.load_model("best.yaml", "best.safetensors", inference=True)  # pruned blocks skipped
    plain = kronsearch.load_model("best.yaml", "best.safetensors", plain=True)     # needs only torch
    bsr = kronsearch.load_model("best.yaml", "best.safetensors", bsr="best.bsr.safetensors")  # BSRLinear
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from kronsearch.layers.blocks import MAX_KRON_PARAMS, format_block, kron_params, valid_blocks
from kronsearch.layers.errors import BadInput
from kronsearch.layers.inference import DEFAULT_BATCH_SIZES, for_inference
from kronsearch.layers.kron_linear import BSRLinear, KronLinear
from kronsearch.layers.kronify import kronify
from kronsearch.layers.plan import Plan, parse_plan
from kronsearch.layers.yamlfile import read_yaml_file
from kronsearch.references import build_configured_model, read_state_dict, state_mismatch

BSR_PARTS = ("crow_indices", "col_indices", "values")
BSR_FORMAT = "kronsearch-bsr"


def load_model(pattern_file: str | os.PathLike, weights: str | os.PathLike | None = None, *,
               bsr: str | os.PathLike | None = None, inference: bool = False, plain: bool = False,
               batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, trust_code: bool = False) -> nn.Module:
    """The searched model of an exported pattern file, its plan applied, in eval mode.

    A pattern file is data: loading it runs no code of its own. A `model.factory` (a Python function it
    names) is imported and called only with trust_code=True, for a file you trust (as trust_remote_code);
    built-in models are bounded as in space files (models.check_model_size), and the plan's Kronecker layers
    by MAX_KRON_PARAMS, before anything is allocated.

    weights: the exported weights (.safetensors, or a .pt state dict read with weights_only=True);
    without them the Kronecker factors are freshly initialized. bsr: the `--bsr` file; every
    KronLinear is then replaced by a BSRLinear running from its merged block-sparse weight (for
    inference only; needs `weights` for the biases and the dense layers). inference: every KronLinear
    replaced by the fastest exact form that skips its pruned blocks at `batch_sizes`
    (kronsearch.layers.inference.for_inference). plain: that model (exportable paths only) run through
    torch.export with a dynamic batch, returned as a torch.fx.GraphModule that needs only torch (see
    `export_program` to save it or convert it to ONNX). Raises BadInput naming the file and the key for
    a pattern file that does not describe a model, or a missing or unreadable file.
    """
    if bsr is not None and (inference or plain):
        raise BadInput(f"{bsr}: bsr= gives BSRLinear layers; inference=True and plain=True give KronInference "
                       f"layers: choose one")
    document, _ = read_yaml_file(pattern_file, "pattern file", BadInput)
    model = _build(pattern_file, document, trust_code)
    if weights is not None:
        state = read_state_dict(weights)
        mismatch = state_mismatch(model, state)
        if mismatch:
            raise BadInput(f"{weights}: these weights do not fit the model of {pattern_file}: {mismatch}")
        model.load_state_dict(state)
    if bsr is not None:
        if weights is None:
            raise BadInput(f"{bsr}: a BSR file holds only the merged Kronecker weights; give the weights file too "
                             f"(biases and dense layers)")
        to_bsr_modules(model, bsr)
    if plain:
        shape = tuple(document["data"]["input_shape"])
        return export_program(for_inference(model, batch_sizes, exportable=True), shape).module()
    if inference:
        return for_inference(model, batch_sizes)
    return model.eval()


def export_program(model: nn.Module, input_shape: Sequence[int]) -> torch.export.ExportedProgram:
    """torch.export of `model` (eval mode, no grad) for inputs (batch, *input_shape), the batch dynamic.

    Save it with torch.export.save(program, "model.pt2") (loads with torch alone, torch.export.load),
    or write ONNX with kronsearch.export_onnx(program, "model.onnx") (needs the [deploy] extra).
    """
    model = model.eval()
    example = torch.zeros(2, *input_shape)  # batch 2: torch.export specializes sizes 0 and 1
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))


ONNX_NOISE_LOGGER = "torch.onnx._internal.exporter._registration"  # one note per torchvision op it skips


class _TorchvisionNotes(logging.Filter):
    """Drops the exporter's "torchvision is not installed. Skipping torchvision::nms" notes (four per export):
    torchvision's detection ops, which no kronsearch model uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


def export_onnx(program: torch.export.ExportedProgram, path: str | os.PathLike) -> Path:
    """Write an export_program result as ONNX to `path` (torch.onnx.export; needs the [deploy] extra).

    Without the exporter's noise that concerns no kronsearch model: the "torchvision is not installed" notes
    and torch's FutureWarning on pytree's LeafSpec (raised inside torch's own export code); every other
    warning and log record goes through."""
    path = Path(path)
    notes = _TorchvisionNotes()
    logger = logging.getLogger(ONNX_NOISE_LOGGER)
    logger.addFilter(notes)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)
            torch.onnx.export(program, f=str(path), verbose=False)
    except ImportError as err:
        raise ImportError(f"ONNX export needs onnx and onnxscript ({err}): pip install 'kronsearch[deploy]'") from err
    finally:
        logger.removeFilter(notes)
    return path


def _build(pattern_file: str | os.PathLike, document: object, trust_code: bool) -> nn.Module:
    if not isinstance(document, Mapping):
        raise BadInput(f"{pattern_file}: a pattern file is a mapping with layers, model and data")
    model, data = document.get("model"), document.get("data")
    if not isinstance(model, Mapping) or not isinstance(model.get("name") or model.get("factory"), str):
        raise BadInput(f"{pattern_file}: key 'model' must be {{name, options}} (or {{factory, options}}) as "
                       f"`kronsearch export` writes it")
    if model.get("factory") and not trust_code:
        raise BadInput(f"{pattern_file}: key model.factory names Python code ({model['factory']!r}) that loading "
                       f"would import and call; a pattern file is loaded as data only. If you trust this file, "
                       f"pass trust_code=True to load_model")
    if not isinstance(data, Mapping) or "input_shape" not in data or "num_classes" not in data:
        raise BadInput(f"{pattern_file}: key 'data' must give input_shape and num_classes "
                         f"as `kronsearch export` writes them")
    if not isinstance(document.get("layers"), Mapping):
        raise BadInput(f"{pattern_file}: key 'layers' must map layer names to {{block, rank}}")
    try:
        net = build_configured_model(model, tuple(data["input_shape"]), int(data["num_classes"]))
        plan = parse_plan(document["layers"])
    except (TypeError, ValueError) as err:  # a ModelError too: an unknown model, or one over the size bounds
        raise BadInput(f"{pattern_file}: keys model, data and layers: {err}") from None
    _check_kron_size(pattern_file, net, plan)
    kronify(net, plan)
    return net


def _check_kron_size(pattern_file: str | os.PathLike, net: nn.Module, plan: Plan) -> None:
    """BadInput when the plan's Kronecker layers would have more than MAX_KRON_PARAMS trainable parameters,
    counted before kronify allocates them (a pattern file may come from anywhere)."""
    sizes, modules = {}, dict(net.named_modules())
    for name, pattern in plan.items():
        linear = modules.get(name)
        if isinstance(linear, nn.Linear) and pattern.block in valid_blocks(linear.out_features, linear.in_features):
            sizes[name] = kron_params(linear.out_features, linear.in_features, pattern.block, pattern.rank)
    if sum(sizes.values()) > MAX_KRON_PARAMS:
        name = max(sizes, key=sizes.__getitem__)
        linear, pattern = modules[name], plan[name]
        raise BadInput(f"{pattern_file}: key layers: the Kronecker layers would have {sum(sizes.values()):,} trainable "
                       f"parameters (largest: {name} {linear.out_features}x{linear.in_features} at "
                       f"{format_block(pattern.block)} rank {pattern.rank}: {sizes[name]:,}); at most "
                       f"{MAX_KRON_PARAMS:,} are allowed")


@contextmanager
def _quiet_bsr_beta() -> Iterator[None]:
    with warnings.catch_warnings():  # torch: "Sparse BSR tensor support is in beta state"
        warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
        yield


def model_bsr_tensors(model: nn.Module, threshold: float) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The `--bsr` file of a model: every KronLinear's merged weight in BSR form ("<layer>.bsr.<part>"; blocks
    with |S| <= threshold dropped) and the safetensors header (format, threshold, per layer: size, block, the
    fraction of blocks kept, how it is stored and the bytes of both forms).

    A layer whose BSR form (kept blocks plus int64 indices) would not be smaller than its dense weight is
    stored dense ("<layer>.dense.weight", header stored=dense): a nearly dense layer in BSR took 1.09 MB
    against its 64 KB of factors (issue 21), and the file is never larger than the dense weights.
    """
    tensors, header = {}, {"format": BSR_FORMAT, "threshold": str(threshold)}
    for layer, module in model.named_modules():
        if isinstance(module, KronLinear):
            with _quiet_bsr_beta():
                bsr = module.to_bsr(threshold)
            parts = {part: getattr(bsr, part)().detach().contiguous().clone() for part in BSR_PARTS}
            bsr_bytes = sum(t.numel() * t.element_size() for t in parts.values())
            dense_bytes = module.out_features * module.in_features * parts["values"].element_size()
            stored = "bsr" if bsr_bytes < dense_bytes else "dense"
            if stored == "bsr":
                tensors.update({f"{layer}.bsr.{part}": t for part, t in parts.items()})
            else:
                with _quiet_bsr_beta():  # the same function as the BSR form: blocks under the threshold zero
                    tensors[f"{layer}.dense.weight"] = bsr.to_dense().detach().contiguous()
            kept = len(parts["values"]) / (module.grid[0] * module.grid[1])
            header[f"layer:{layer}"] = (f"size={module.out_features}x{module.in_features} "
                                        f"block={module.block[0]}x{module.block[1]} kept={kept:.4f} "
                                        f"stored={stored} bsr_bytes={bsr_bytes} dense_bytes={dense_bytes}")
    return tensors, header


def dense_layers(header: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The layers a `--bsr` file stores dense (its BSR form would not be smaller): {layer: its header fields}."""
    layers = {}
    for key, value in header.items():
        fields = dict(item.split("=", 1) for item in value.split() if "=" in item)
        if key.startswith("layer:") and fields.get("stored") == "dense":
            layers[key[len("layer:"):]] = fields
    return layers


def to_bsr_modules(model: nn.Module, bsr: str | os.PathLike) -> list[str]:
    """Replace every KronLinear of `model` by a BSRLinear from the `--bsr` file (an nn.Linear where the file stores
    the layer dense); returns the replaced names."""
    tensors = load_file(str(bsr))
    with safe_open(str(bsr), "pt") as f:
        header = f.metadata() or {}
    if header.get("format") != BSR_FORMAT:
        raise BadInput(f"{bsr}: not a kronsearch BSR file (written by `kronsearch export --bsr`)")
    weights = {k: v for k, v in tensors.items() if k.endswith((".bsr.values", ".dense.weight"))}
    broken = [k for k, v in weights.items() if not v.is_floating_point() or not torch.isfinite(v).all()]
    if broken:  # as the weights file (references.read_state_dict): NaN would only surface as NaN outputs
        raise BadInput(f"{bsr}: the BSR file holds NaN, infinite or non-float weights in {', '.join(broken[:5])}; "
                       f"only finite floating-point weights are allowed")
    replaced = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, KronLinear):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if f"{name}.dense.weight" in tensors:
            setattr(parent, child, dense_layer(bsr, name, module, tensors[f"{name}.dense.weight"]))
            replaced.append(name)
            continue
        missing = [p for p in BSR_PARTS if f"{name}.bsr.{p}" not in tensors]
        if missing:
            raise BadInput(f"{bsr}: layer {name!r} has no {', '.join(missing)}")
        crow, col, values = (tensors[f"{name}.bsr.{p}"] for p in BSR_PARTS)
        try:
            with _quiet_bsr_beta():
                weight = torch.sparse_bsr_tensor(crow, col, values, size=(module.out_features, module.in_features),
                                                 check_invariants=True)  # the file may come from anywhere
        except RuntimeError as err:
            raise BadInput(f"{bsr}: layer {name!r} is not a valid {module.out_features}x{module.in_features} "
                             f"BSR weight: {str(err).splitlines()[0]}") from None
        bias = None if module.bias is None else module.bias.detach().clone()
        setattr(parent, child, BSRLinear(weight, bias))
        replaced.append(name)
    return replaced


def dense_layer(bsr: str | os.PathLike, name: str, module: KronLinear, weight: torch.Tensor) -> nn.Linear:
    """The nn.Linear of a layer the `--bsr` file stores dense, with the KronLinear's bias."""
    if tuple(weight.shape) != (module.out_features, module.in_features) or not weight.is_floating_point():
        raise BadInput(f"{bsr}: layer {name!r} is stored dense as a {tuple(weight.shape)} {weight.dtype} tensor; "
                       f"a {module.out_features}x{module.in_features} floating-point weight is needed")
    linear = nn.Linear(module.in_features, module.out_features, module.bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    return linear
