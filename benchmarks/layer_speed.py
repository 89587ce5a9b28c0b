"""Forward+backward speed of KronLinear (factored, merged, auto) against nn.Linear, next to their MAC ratio.

    python benchmarks/layer_speed.py                 # batch 256, float32, all cores
    python benchmarks/layer_speed.py --smoke         # a few repetitions, for CI

For every shape it times one training step of a layer (forward, then backward of a fixed output
gradient into the input and every parameter; gradients are reset to None as zero_grad does) and
prints a markdown table: time ratio = KronLinear / nn.Linear, MAC ratio = kron_macs / (in * out), for
each compute path of KronLinear (`compute=`: factored in the MAC-cheaper order, merged, and auto with
the path it chose; kronsearch/layers/compute.py).

Timing: a warm-up, then `--repeats` pairs per path. Each pair runs both layers back to back, alternating
which goes first, and records the pair's time ratio; the table reports the median of those ratios
(and the median time of each layer). Pairing makes slow drifts of the machine (other processes,
clock changes) cancel in the ratio. A busy machine still skews it (a 2-thread step stalls whenever
another process holds a core, and the Kronecker step has more, smaller products than the dense
one), so the load average is printed before and after.

Why KronLinear is fast, and what was tried: the docstrings of kronsearch/layers/kron_ops.py and compute.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from kronsearch import KronLinear
from kronsearch.layers.blocks import format_block, kron_macs
from kronsearch.layers.compute import compute_choices

SHAPES = [  # (out, in, block (h, w), rank), nn.Linear's (out, in) orientation
    (1024, 1024, (32, 32), 2),
    (768, 192, (16, 16), 1),
    (192, 768, (16, 16), 1),
    (3072, 768, (16, 16), 1),
]


def step_time(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> float:
    """Seconds for one forward + backward of `layer` on `x`."""
    for p in layer.parameters():
        p.grad = None
    x.grad = None
    start = time.perf_counter()
    layer(x).backward(grad)
    return time.perf_counter() - start


def measure(out_features: int, in_features: int, block, rank: int, batch: int, repeats: int, warmup: int,
            compute: str = "factored") -> tuple[float, float, float]:
    """(median kron seconds, median dense seconds, median paired ratio) of KronLinear(compute=compute)."""
    kron = KronLinear(in_features, out_features, block, rank, compute=compute)
    dense = nn.Linear(in_features, out_features)
    x = torch.randn(batch, in_features, requires_grad=True)
    grad = torch.randn(batch, out_features)
    for _ in range(warmup):
        step_time(kron, x, grad)
        step_time(dense, x, grad)
    kron_times, dense_times, ratios = [], [], []
    for i in range(repeats):
        if i % 2:
            k, d = step_time(kron, x, grad), step_time(dense, x, grad)
        else:
            d, k = step_time(dense, x, grad), step_time(kron, x, grad)
        kron_times.append(k)
        dense_times.append(d)
        ratios.append(k / d)
    return statistics.median(kron_times), statistics.median(dense_times), statistics.median(ratios)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="input rows per step (default 256)")
    parser.add_argument("--repeats", type=int, default=200, help="timed pairs per shape (default 200)")
    parser.add_argument("--smoke", action="store_true", help="3 timed pairs, 1 warm-up: checks the script runs")
    args = parser.parse_args(argv)
    repeats, warmup = (3, 1) if args.smoke else (args.repeats, max(10, args.repeats // 10))
    torch.manual_seed(0)
    print(f"batch {args.batch}, float32, {torch.get_num_threads()} threads, median of {repeats} paired "
          f"forward+backward steps; load average before: {os.getloadavg()[0]:.2f}\n")
    print("| out x in | block | rank | factored ms | nn.Linear ms | factored time ratio | MAC ratio "
          "| merged time ratio | auto time ratio | auto's path |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for out_features, in_features, block, rank in SHAPES:
        shape = (out_features, in_features, block, rank, args.batch, repeats, warmup)
        kron_s, dense_s, ratio = measure(*shape, compute="factored")
        merged = measure(*shape, compute="merged")[2]
        auto = measure(*shape, compute="auto")[2]
        auto_path = list(compute_choices().values())[-1]  # this shape's, timed by the auto run just above
        mac_ratio = kron_macs(out_features, in_features, block, rank) / (out_features * in_features)
        print(f"| {out_features} x {in_features} | {format_block(block)} | {rank} | {kron_s * 1e3:.3f} | "
              f"{dense_s * 1e3:.3f} | {ratio:.3f} | {mac_ratio:.3f} | {merged:.3f} | {auto:.3f} | {auto_path} |",
              flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (other processes skew the ratios)")


if __name__ == "__main__":
    main()
