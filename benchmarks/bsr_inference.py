"""Inference time of an exported model run from its `--bsr` file (BSRLinear) against the same model dense.

    python benchmarks/bsr_inference.py            # MLP 784-1024-1024-10, 8x8 blocks, batch 1 and 256, 1 thread
    python benchmarks/bsr_inference.py --smoke    # a small MLP and a few repetitions: checks the script runs

The model is an MLP on 28x28 inputs (Fashion-MNIST shapes) whose hidden layers are kronified at 8x8
rank 1; a fraction of each layer's S entries (the block sparsity the l1 penalty reaches) is set to
exactly 0. It goes through the export files: the pattern file, model.safetensors and the BSR file
(kronsearch.loading.model_bsr_tensors, what `kronsearch export --bsr` writes), read back with
`kronsearch.load_model` with and without `bsr=`. The dense model is the same network with plain
nn.Linear layers holding the merged weights. All three compute the same function (the BSR model drops
only the exactly-zero blocks).

Timing: forward passes under torch.inference_mode on one CPU thread; after a warm-up, `--repeats`
rounds in which each model runs once, in an order rotated from round to round. The table gives the
median time per forward and the median of the per-round ratios to the dense model, so slow drifts of
a shared machine cancel. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file
from torch import nn

from kronsearch import KronLinear, kronify, load_model
from kronsearch.loading import model_bsr_tensors
from kronsearch.models import build_model


def exported_files(folder: Path, hidden: list[int], block: int, sparsity: float) -> tuple[Path, Path, Path]:
    """best.yaml, best.safetensors and best.bsr.safetensors of a kronified MLP with `sparsity` of S zero."""
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10, hidden=hidden)
    layers = [f"layers.{i}" for i in range(len(hidden))]
    plan = {name: {"block": f"{block}x{block}", "rank": 1} for name in layers}
    kronify(model, plan)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, KronLinear):
                module.s.mul_((torch.rand_like(module.s) >= sparsity).float())
    pattern = folder / "best.yaml"
    pattern.write_text(yaml.safe_dump({"layers": plan, "model": {"name": "mlp", "options": {"hidden": hidden}},
                                       "data": {"input_shape": [1, 28, 28], "num_classes": 10}}))
    weights = folder / "best.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    tensors, header = model_bsr_tensors(model, threshold=0.0)
    bsr = folder / "best.bsr.safetensors"
    bsr.write_bytes(safetensors_bytes(tensors, header))
    return pattern, weights, bsr


def dense_twin(kron_model: nn.Module, hidden: list[int]) -> nn.Module:
    """The same MLP with nn.Linear layers holding each KronLinear's merged weight."""
    dense = build_model("mlp", (1, 28, 28), 10, hidden=hidden)
    state = dict(kron_model.state_dict())
    for name, module in kron_model.named_modules():
        if isinstance(module, KronLinear):
            for key in [k for k in state if k.startswith(f"{name}.")]:
                del state[key]
            state[f"{name}.weight"] = module.materialize().detach()
            state[f"{name}.bias"] = module.bias.detach()
    dense.load_state_dict(state)
    return dense.eval()


def time_models(models: dict[str, nn.Module], x: torch.Tensor, repeats: int) -> dict[str, tuple[float, float]]:
    """{name: (median ms per forward, median per-round ratio to "dense")}."""
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(3):
                model(x)
        for round_ in range(repeats):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                start = time.perf_counter()
                models[name](x)
                times[name].append(time.perf_counter() - start)
    return {n: (1e3 * statistics.median(times[n]),
                statistics.median(t / d for t, d in zip(times[n], times["dense"]))) for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small model, few repetitions")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    hidden, repeats = ([64, 64], 3) if args.smoke else ([1024, 1024], args.repeats)
    print(f"load average before: {os.getloadavg()[0]:.2f}; torch {torch.__version__}, 1 thread")
    print(f"MLP 784-{'-'.join(map(str, hidden))}-10, hidden layers 8x8 rank 1, head dense\n")
    print("| block sparsity | batch | dense ms | KronLinear ms | BSRLinear ms | Kron / dense | BSR / dense |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for sparsity in (0.5, 0.75, 0.9):
            folder = Path(tmp) / f"s{sparsity}"
            folder.mkdir()
            pattern, weights, bsr = exported_files(folder, hidden, 8, sparsity)
            kron = load_model(pattern, weights)
            models = {"dense": dense_twin(kron, hidden), "kron": kron, "bsr": load_model(pattern, weights, bsr=bsr)}
            for batch in (1, 256):
                x = torch.randn(batch, 1, 28, 28)
                result = time_models(models, x, repeats)
                print(f"| {sparsity:.0%} | {batch} | {result['dense'][0]:.3f} | {result['kron'][0]:.3f} | "
                      f"{result['bsr'][0]:.3f} | {result['kron'][1]:.2f} | {result['bsr'][1]:.2f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
