"""How a Kronecker layer computes y = x W^T + b, and which way it picks: factored or merged.

W is a sum of terms C ⊗ B (one per candidate block of a PatternSelectLinear, one for a KronLinear),
each term with factors C = S ⊙ A (r, m1, n1) and blocks B (r, h, w). The paths, for N input rows:

- "order1", "order2": `kron_matmul` per term, never building W (PAPER.md section 1's two orders).
  Cheap in MACs, but a small block turns it into products with an inner size of h or w (2-4), which
  are memory-bound: at 2x2 blocks a ViT-tiny layer took 7-9x as long as nn.Linear.
- "factored": every term in its own order (`KronLinear.order`, the one with fewer MACs).
- "merged": W is built once per call (`kron_weight`, r*m*n multiply-adds per term, all terms summed
  into one W), then one GEMM as nn.Linear does; backward is one GEMM for dx, one for dW, and dW
  projected onto each term's C and B (r*m*n), with W rebuilt rather than saved (`merged_linear`).
  So K candidates cost one GEMM plus K builds, not K factored products. Parameters, gradients and
  optimizer state stay the factors; saved for backward are x (as nn.Linear) and the factors.
  ViT-tiny training step (docs/benchmarks/speed.md table 5, 1 thread, two runs): 0.99-1.07x the dense step
  for one block and 1.11-1.12x for three candidates, peak memory 1.00-1.01x (1.03x) dense; the
  factored path took 0.45x (16x16) to 7.5x (2x2) and 10.3x (three candidates), at 1.25x (1.80x)
  the memory: it saves its intermediate product for backward.

`compute` modes, per layer or as the process default (`set_default_compute`): "factored", "merged",
or "auto". "auto" times the paths once per key (layer shape and blocks, rows rounded to a power of 2,
dtype, device, whether autograd records) on random inputs of that shape, forward and, when autograd
records, backward into x and the factors, and keeps the fastest for the rest of the process (as
cudnn.benchmark does); `compute_choices()` shows what it chose. A one-layer KronLinear chooses among
order1, order2 and merged, a PatternSelectLinear between factored and merged. Why time instead of a
cost model: the crossover moves with the GEMM library, the thread count and the block, and on this
machine the MAC counts did not predict it (at 8x8 blocks the factored path took 0.79-1.01x
nn.Linear's time across ViT-tiny's layers, merged about 1.0x; at 16x16 factored 0.33-0.47x).
Being timed, "auto" may pick differently in two processes, whose results then differ by float
rounding; pin "factored" or "merged" for bitwise reproducibility across processes. The timing uses
its own random generator and does not touch the global one. On CUDA the same timing runs, with the
device synchronized around each call; no GPU was available to measure it, so no CUDA-specific rule
is coded.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from kronsearch.layers.errors import BadInput
from kronsearch.layers.kron_ops import kron_matmul, merged_linear

log = logging.getLogger("kronsearch")

COMPUTE_MODES = ("auto", "factored", "merged")
PATHS = ("factored", "order1", "order2", "merged")
TIMED_ROUNDS = 7
"""Interleaved timing rounds per path after one warm-up each; each path's fastest round decides.

The minimum, not the median: other processes only ever add time, and on the shared 2-core machine
a median of 5 once picked order 2 for a 3072x768 16x16 layer that ran 1.4x slower than order 1."""

Term = tuple[Tensor, Tensor, int]
"""(factors C (r, m1, n1), blocks B (r, h, w), the term's factored order 1 or 2)."""

_default_compute = "factored"
"""Factored until set otherwise: bit-for-bit the results, MAC counts (kronsearch.layers.costs, checked against
torch's FlopCounterMode) and cross-process reproducibility the project had before the other paths."""
_choices: dict[tuple, str] = {}


def check_compute(compute: str | None) -> str | None:
    """`compute` if it is a mode or None (follow the process default); else BadInput naming the modes."""
    if compute is not None and compute not in COMPUTE_MODES:
        raise BadInput(f"compute must be one of {', '.join(map(repr, COMPUTE_MODES))} (or None for the "
                         f"default set by set_default_compute), got {compute!r}")
    return compute


def set_default_compute(compute: str) -> None:
    """The mode of every layer whose own `compute` is None ("factored" when the process starts)."""
    global _default_compute
    if compute is None:
        raise BadInput(f"the default compute must be one of {', '.join(map(repr, COMPUTE_MODES))}, got None")
    _default_compute = check_compute(compute) or compute  # check_compute returns a mode it accepts


def default_compute() -> str:
    """The process-wide compute mode."""
    return _default_compute


@contextmanager
def default_compute_as(compute: str) -> Iterator[None]:
    """Within the block the process default is `compute`; the previous default is restored after."""
    previous = _default_compute
    set_default_compute(compute)
    try:
        yield
    finally:
        set_default_compute(previous)


def compute_choices() -> dict[tuple, str]:
    """What "auto" chose so far: {(in_features, term shapes, rows bucket, dtype, device, grad): path}."""
    return dict(_choices)


def kron_linear(x: Tensor, terms: Sequence[Term], bias: Tensor | None, path: str) -> Tensor:
    """x (N, n) -> (N, m) = x (sum of the terms' C ⊗ B)^T + bias, along `path` (one of PATHS)."""
    if path not in PATHS:
        raise BadInput(f"path must be one of {', '.join(map(repr, PATHS))}, got {path!r}")
    if path == "merged":
        return merged_linear(x, [(factors, blocks) for factors, blocks, _ in terms], bias)
    fixed = {"order1": 1, "order2": 2}.get(path)
    y = None
    for factors, blocks, order in terms:
        part = kron_matmul(x, factors, blocks, fixed or order)
        y = part if y is None else y + part
    assert y is not None, "kron_forward needs at least one term"
    return y if bias is None else y + bias


def kron_forward(x: Tensor, terms: Sequence[Term], bias: Tensor | None, compute: str | None) -> Tensor:
    """(..., n) -> (..., m): the layer's mode (None: the process default), "auto" resolved by timing."""
    mode = check_compute(compute) or _default_compute
    rows = x.reshape(-1, x.shape[-1])
    path = choose_path(rows, terms) if mode == "auto" else mode
    y = kron_linear(rows, terms, bias, path)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def candidate_paths(terms: Sequence[Term]) -> tuple[str, ...]:
    """What "auto" compares: both orders and merged for one term, factored and merged for several."""
    return ("order1", "order2", "merged") if len(terms) == 1 else ("factored", "merged")


def rows_bucket(rows: int) -> int:
    """Rows rounded to the nearest power of 2 (at least 1): calls within ~1.4x share a timing."""
    return 1 << max(0, round(math.log2(max(rows, 1))))


def choose_path(x: Tensor, terms: Sequence[Term]) -> str:
    """The fastest of `candidate_paths` for x (N, n) and these terms' shapes, timed once per key."""
    grad = torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for f, b, _ in terms for t in (f, b)))
    shapes = tuple((tuple(f.shape), tuple(b.shape), order) for f, b, order in terms)
    key = (x.shape[1], shapes, rows_bucket(x.shape[0]), x.dtype, str(x.device), grad)
    if key not in _choices:
        times = time_paths(rows_bucket(x.shape[0]), x.shape[1], terms, x.dtype, x.device, grad)
        _choices[key] = min(times, key=lambda path: times[path])
        log.debug("compute auto %s: %s -> %s", key,
                  ", ".join(f"{p} {t * 1e3:.3f} ms" for p, t in times.items()), _choices[key])
    return _choices[key]


def time_paths(rows: int, in_features: int, terms: Sequence[Term], dtype: torch.dtype, device: torch.device,
               grad: bool) -> dict[str, float]:
    """Fastest seconds per call of each candidate path on random data of these shapes.

    With `grad`, a call is forward plus backward into x and every C and B (as in training).
    """
    generator = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator).to(device, dtype).requires_grad_(grad)

    x = rand(rows, in_features)
    fake = [(rand(*f.shape), rand(*b.shape), order) for f, b, order in terms]
    leaves = [x] + [t for f, b, _ in fake for t in (f, b)]
    out_features = terms[0][0].shape[1] * terms[0][1].shape[1]
    grad_out = rand(rows, out_features).detach()
    sync = torch.cuda.synchronize if x.device.type == "cuda" else lambda: None

    def once(path: str) -> float:
        sync()
        start = time.perf_counter()
        with torch.set_grad_enabled(grad):
            y = kron_linear(x, fake, None, path)
            if grad:
                torch.autograd.grad(y, leaves, grad_out)
        sync()
        return time.perf_counter() - start

    return fastest_seconds({path: functools.partial(once, path) for path in candidate_paths(terms)})


def fastest_seconds(calls: dict[str, Callable[[], float]]) -> dict[str, float]:
    """{name: fastest of TIMED_ROUNDS rounds} for calls that return their own seconds, after one warm-up each.

    The rounds interleave the calls in a rotated order, so a shared machine's slow drifts hit all alike."""
    names = list(calls)
    for name in names:
        calls[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(TIMED_ROUNDS):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            samples[name].append(calls[name]())
    return {name: min(s) for name, s in samples.items()}
