"""Inference time of pruned Kronecker models: dense, KronLinear, for_inference's form, and onnxruntime.

    python benchmarks/inference.py              # MLP 784-1024-1024-10 (8x8, 16x16, rank 1, 2) and ViT-tiny; 1 thread
    python benchmarks/inference.py --models mlp # the MLP rows only
    python benchmarks/inference.py --smoke      # one small model of each kind, few repetitions: checks the script runs

The MLP (28x28 inputs) has its hidden layers kronified (head dense); the ViT-tiny of
benchmarks/model_speed.py (3x32x32 inputs, 64 tokens) every Linear of its blocks at 16x16 rank 1. A
fraction of each layer's S entries (the block sparsity the l1 penalty reaches) is set to exactly 0.
Compared, on the same inputs: "dense" (nn.Linear layers holding the merged weights), "kron" (the KronLinear model
as trained, factored path), "new" (`kronsearch.for_inference(model)`, each layer's path chosen by timing at the
rows of the table's batch sizes: batch x 65 tokens for the ViT), and "ort" (`for_inference(model, exportable=True)`
through `kronsearch.export_program` and torch.onnx.export, run by onnxruntime with one thread; "-" where
onnxruntime is not installed). MAC ratios: the KronLinear model's and the new form's
multiply-adds per sample over the dense model's (weight layers only; attention products excluded).

Timing (as benchmarks/bsr_inference.py): forward passes under torch.inference_mode on one CPU thread;
after a warm-up, `--repeats` rounds in which each model runs once, in an order rotated from round to
round; the median time per forward and the median of the per-round ratios to dense.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import tempfile
from pathlib import Path

import torch
from bsr_inference import time_models
from model_speed import VIT_TINY
from torch import nn

from kronsearch import KronInference, KronLinear, export_onnx, export_program, for_inference
from kronsearch.layers.blocks import kron_macs
from kronsearch.layers.kronify import kronify
from kronsearch.models import build_model

BATCHES = (1, 32, 256)
SPARSITIES = (0.5, 0.75, 0.9)
VIT_BATCHES = (1, 32)


def pruned(model: nn.Module, plan: dict, sparsity: float) -> nn.Module:
    """`model` kronified by `plan` (kronify's keyword arguments) with `sparsity` of each S set to exactly 0."""
    kronify(model, **plan)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, KronLinear):
                module.s.mul_((torch.rand_like(module.s) >= sparsity).float())
    return model.eval()


def merged_twin(model: nn.Module) -> nn.Module:
    """A copy of `model` with every KronLinear replaced by the nn.Linear holding its merged weight."""
    dense = copy.deepcopy(model)
    for name, module in list(dense.named_modules()):
        if isinstance(module, KronLinear):
            dense.set_submodule(name, module.to_linear())
    return dense.eval()


def weight_macs(model: nn.Module) -> int:
    """Multiply-adds per sample of the weight layers (nn.Linear, KronLinear in its cheaper order, KronInference)."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            total += module.in_features * module.out_features
        elif isinstance(module, KronInference):
            total += module.macs
        elif isinstance(module, KronLinear):
            total += kron_macs(module.out_features, module.in_features, module.block, module.rank)
    return total


def onnx_runner(model: nn.Module, folder: Path, input_shape: tuple[int, ...], batches: tuple[int, ...]):
    """onnxruntime (one thread) on the exportable form of `model`, as a callable on torch tensors."""
    import onnxruntime

    program = export_program(for_inference(model, batches, exportable=True), input_shape)
    path = folder / "model.onnx"
    export_onnx(program, path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def kron_rows_per_sample(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Rows one sample sends through the first KronLinear (1 for the MLP, the tokens for the ViT)."""
    seen = []
    layer = next(m for m in model.modules() if isinstance(m, KronLinear))
    hook = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].numel() // module.in_features))
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    hook.remove()
    return seen[0]


def run_rows(label: str, kron: nn.Module, input_shape: tuple[int, ...], batches: tuple[int, ...], repeats: int,
             folder: Path, use_ort: bool) -> None:
    """Print one table row per batch size: the four models timed in the same rounds."""
    dense = merged_twin(kron)
    rows = [batch * kron_rows_per_sample(kron, input_shape) for batch in batches]  # for_inference times rows
    new = for_inference(kron, rows)
    models = {"dense": dense, "kron": kron, "new": new}
    if use_ort:
        models["ort"] = onnx_runner(kron, folder, input_shape, rows)
    paths = "/".join(sorted({path for path, _ in new.inference_choices.values()}))
    macs = weight_macs(dense)
    for batch in batches:
        x = torch.randn(batch, *input_shape)
        r = time_models(models, x, repeats)
        ort_ms, ort_ratio = (f"{r['ort'][0]:.3f}", f"{r['ort'][1]:.2f}") if use_ort else ("-", "-")
        print(f"| {label} | {batch} | {r['dense'][0]:.3f} | {r['kron'][0]:.3f} | {r['new'][0]:.3f} | {ort_ms} | "
              f"{r['kron'][1]:.2f} | {r['new'][1]:.2f} | {ort_ratio} | {weight_macs(kron) / macs:.3f} | "
              f"{weight_macs(new) / macs:.3f} | {paths} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small models, few repetitions")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--models", nargs="+", choices=("mlp", "vit"), default=["mlp", "vit"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    hidden, repeats = ([64, 64], 3) if args.smoke else ([1024, 1024], args.repeats)
    configs = [(8, 1)] if args.smoke else [(8, 1), (8, 2), (16, 1), (16, 2)]
    sparsities, mlp_batches, vit_batches = ((0.9,), (1, 32), (1,)) if args.smoke else (SPARSITIES, BATCHES, VIT_BATCHES)
    vit_options = dict(VIT_TINY, depth=1) if args.smoke else VIT_TINY
    use_ort = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnxscript") is not None
    print(f"load average before: {os.getloadavg()[0]:.2f}; torch {torch.__version__}, 1 thread; "
          f"onnxruntime {'yes' if use_ort else 'not installed'}")
    print(f"MLP 784-{'-'.join(map(str, hidden))}-10 (hidden layers kronified, head dense); ViT-tiny "
          f"{vit_options} on 3x32x32 (blocks.* kronified)\n")
    print("| model | block | rank | pruned | batch | dense ms | kron ms | new ms | ort ms | kron / dense | "
          "new / dense | ort / dense | kron MACs / dense | new MACs / dense | new paths |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models:
            for block, rank in (configs if model_name == "mlp" else [(16, 1)]):
                for sparsity in sparsities:
                    torch.manual_seed(0)
                    label = f"{model_name} | {block}x{block} | {rank} | {sparsity:.0%}"
                    if model_name == "mlp":
                        net = build_model("mlp", (1, 28, 28), 10, hidden=hidden)
                        plan = {"plan": {f"layers.{i}": {"block": f"{block}x{block}", "rank": rank}
                                         for i in range(len(hidden))}}
                        shape, batches = (1, 28, 28), mlp_batches
                    else:
                        net = build_model("vit", (3, 32, 32), 100, **vit_options)
                        plan = {"include": ["blocks.*"], "block": (block, block), "rank": rank}
                        shape, batches = (3, 32, 32), vit_batches
                    run_rows(label, pruned(net, plan, sparsity), shape, batches, repeats, Path(tmp), use_ort)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
