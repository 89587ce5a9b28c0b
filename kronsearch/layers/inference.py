"""Inference forms of a trained KronLinear that skip its pruned blocks, and `for_inference(model)`.

W = sum_i (S ⊙ A_i) ⊗ B_i is (m1*h, n1*w); C_i = S ⊙ A_i is zero on the pruned blocks. Viewing a batch
of N rows as X (n1, N*w) (block-column q's slices of all rows side by side), the output blocks are
Y (m1, N*h) = C applied to X, then B applied to every (h or w)-slice. As one GEMM over the whole batch
(not the N small products of the training path, `kron_ops.kron_matmul`) this is fast on a CPU, and
it lets the pruned blocks drop out. The paths:

- "factored": C dense, only the block-rows and block-columns that keep a block (the others are
  gathered away), one GEMM for C and one for B, in the order with fewer MACs. Exportable.
- "sparse": the same with C in CSR form, so the C product costs (kept blocks) * r * N * (w or h)
  multiply-adds. Not exportable (torch.export and ONNX take no sparse tensors).
- "merged": W built once (pruned blocks zero), one nn.Linear GEMM: for nearly dense layers.
- "product": the training path's product (`kron_ops.kron_matmul`, N small products broadcasting C),
  pruned blocks computed as zeros; at 16x16 blocks it was as fast as "factored". Not exportable (its
  size test on the batch is a data-dependent branch for torch.export).

`for_inference` times the paths on random rows of each layer's shape at each batch size asked for
(with compute.py's timing, `fastest_seconds`) and keeps, per layer, the path whose worst ratio to the
fastest path of a batch size is smallest. The module's forward uses only torch operations, so
`torch.export.export` of it gives a program that runs (and saves, `torch.export.save`) without
kronsearch. Measured: docs/benchmarks/speed.md table 12, `benchmarks/inference.py`.
"""

from __future__ import annotations

import copy
import functools
import time
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kronsearch.layers.blocks import kron_macs
from kronsearch.layers.compute import fastest_seconds
from kronsearch.layers.errors import BadInput
from kronsearch.layers.kron_linear import DEFAULT_THRESHOLD, KronLinear
from kronsearch.layers.kron_ops import cheaper_order, kron_matmul
from kronsearch.layers.pattern_select import PatternSelectLinear

INFERENCE_PATHS = ("factored", "sparse", "merged", "product")
EXPORTABLE_PATHS = ("factored", "merged")
DEFAULT_BATCH_SIZES = (1, 32, 256)


class KronInference(nn.Module):
    """Inference-only exact form of a KronLinear along one path: (..., in_features) -> (..., out_features).

    Blocks with |S| <= threshold are dropped (as `KronLinear.block_mask`); the rest compute what the
    KronLinear computes, up to float rounding. Holds buffers only: no gradients, no training.
    `macs`: its multiply-adds per input row (bias adds excluded), counted as layers.blocks.kron_macs does.
    """

    # buffers, by path, typed for the checker (nn.Module.__getattr__ says Tensor | Module)
    bias: Tensor | None
    weight: Tensor  # merged
    factors: Tensor  # product
    blocks: Tensor  # product
    c: Tensor  # factored, sparse
    b: Tensor
    rows: Tensor | None
    cols: Tensor | None

    def __init__(self, layer: KronLinear, path: str, threshold: float = DEFAULT_THRESHOLD) -> None:
        super().__init__()
        if path not in INFERENCE_PATHS:
            raise BadInput(f"path must be one of {', '.join(map(repr, INFERENCE_PATHS))}, got {path!r}")
        if path == "sparse" and not sparse_supports(layer.s.dtype, layer.s.device):
            raise BadInput(f"path 'sparse' has no {layer.s.dtype} kernel on {layer.s.device.type} in this torch "
                           f"(sparse CSR products); use 'factored', 'merged' or 'product', or path='auto'")
        self.path = path
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.grid, self.block = layer.grid, layer.block
        with torch.no_grad():
            mask = layer.block_mask(threshold)
            factors = layer.factors().detach() * mask  # (r, m1, n1), pruned blocks exactly 0
            blocks = layer.b.detach().clone()  # (r, h, w)
            self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
            if path == "merged":
                self.register_buffer("weight", torch.einsum("ipq,iab->paqb", factors, blocks)
                                     .reshape(self.out_features, self.in_features).contiguous())
                self.macs = self.out_features * self.in_features
                return
            if path == "product":
                self.register_buffer("factors", factors.contiguous())
                self.register_buffer("blocks", blocks)
                self.order = cheaper_order(*self.grid, *self.block, layer.rank)
                self.macs = kron_macs(self.out_features, self.in_features, self.block, layer.rank)
                return
            rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
            factors = factors[:, rows][:, :, cols]  # (r, m1k, n1k)
            (rank, m1k, n1k), (_, h, w) = factors.shape, blocks.shape
            self.order = 1 if n1k * rank * h * (w + m1k) <= m1k * rank * w * (n1k + h) else 2
            if self.order == 1:  # B first: Z (n1k*r, N*h), then C (m1k, n1k*r)
                c, b = factors.permute(1, 2, 0).reshape(m1k, n1k * rank), blocks.reshape(rank * h, w)
            else:  # C first: Z (m1k*r, N*w) with C (m1k*r, n1k), then B (h, r*w)
                c, b = factors.transpose(0, 1).reshape(m1k * rank, n1k), blocks.transpose(0, 1).reshape(h, rank * w)
            with warnings.catch_warnings():  # torch: "Sparse CSR tensor support is in beta state"
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                self.register_buffer("c", c.to_sparse_csr() if path == "sparse" else c.contiguous())
            self.register_buffer("b", b.contiguous())
            self.register_buffer("rows", None if len(rows) == self.grid[0] else rows)
            self.register_buffer("cols", None if len(cols) == self.grid[1] else cols)
            self.rank, self.kept_rows = rank, len(rows)
            c_macs = (int(mask.sum()) if path == "sparse" else m1k * n1k) * rank * (h if self.order == 1 else w)
            self.macs = c_macs + (n1k if self.order == 1 else m1k) * rank * h * w

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)."""
        if x.shape[-1] != self.in_features:
            raise BadInput(f"expected input (..., {self.in_features}), got {tuple(x.shape)}")
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        if self.path == "merged":
            return F.linear(x, self.weight, self.bias).reshape(*lead, self.out_features)
        if self.path == "product":
            y = kron_matmul(x, self.factors, self.blocks, self.order)
            return (y if self.bias is None else y + self.bias).reshape(*lead, self.out_features)
        (m1, n1), (h, w), n = self.grid, self.block, x.shape[0]
        blocks_in = x.reshape(n, n1, w)
        if self.cols is not None:
            blocks_in = blocks_in.index_select(1, self.cols)
        kept_in = blocks_in.shape[1]
        if self.order == 1:
            z = F.linear(blocks_in.reshape(n * kept_in, w), self.b)  # (N*n1k, r*h)
            z = z.reshape(n, kept_in * self.rank, h).transpose(0, 1).reshape(kept_in * self.rank, n * h)
            y = (self.c @ z).reshape(self.kept_rows, n, h)
        else:
            z = self.c @ blocks_in.transpose(0, 1).reshape(kept_in, n * w)  # (m1k*r, N*w)
            z = z.reshape(self.kept_rows, self.rank, n, w).transpose(1, 2).reshape(self.kept_rows * n, self.rank * w)
            y = F.linear(z, self.b).reshape(self.kept_rows, n, h)
        if self.rows is not None:
            y = x.new_zeros(m1, n, h).index_copy(0, self.rows, y)
        y = y.transpose(0, 1).reshape(n, self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"block={self.block[0]}x{self.block[1]}, path={self.path!r}")


@functools.cache
def sparse_supports(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether torch has a sparse CSR x dense product for `dtype` on `device` (on CPU: float32 and float64,
    not bfloat16 or float16), tried once on a 2x2 product."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        try:
            torch.eye(2, dtype=dtype, device=device).to_sparse_csr() @ torch.ones(2, 1, dtype=dtype, device=device)
        except (NotImplementedError, RuntimeError):
            return False
    return True


def time_inference_paths(layer: KronLinear, batch_sizes: Sequence[int], paths: Sequence[str],
                         threshold: float = DEFAULT_THRESHOLD) -> dict[int, dict[str, float]]:
    """{batch: {path: fastest seconds per forward}} of `layer`'s inference forms on random rows."""
    forms = {path: KronInference(layer, path, threshold) for path in paths}
    generator = torch.Generator().manual_seed(0)
    p = layer.s
    sync = torch.cuda.synchronize if p.device.type == "cuda" else lambda: None

    def once(form: KronInference, x: Tensor) -> float:
        sync()
        start = time.perf_counter()
        form(x)
        sync()
        return time.perf_counter() - start

    result = {}
    with torch.inference_mode():
        for batch in batch_sizes:
            x = torch.randn(batch, layer.in_features, generator=generator).to(p.device, p.dtype)
            result[batch] = fastest_seconds({path: functools.partial(once, form, x) for path, form in forms.items()})
    return result


def choose_inference_path(times: dict[int, dict[str, float]]) -> str:
    """The path whose worst ratio to the fastest path of a batch size is smallest (ties: first listed)."""
    paths = list(next(iter(times.values())))
    return min(paths, key=lambda path: max(t[path] / min(t.values()) for t in times.values()))


def for_inference(model: nn.Module, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, *, exportable: bool = False,
                  path: str = "auto", threshold: float = DEFAULT_THRESHOLD) -> nn.Module:
    """A copy of `model` in eval mode with every KronLinear replaced by its fastest KronInference form.

    path "auto" times the candidate paths per layer at `batch_sizes`, rows per call of the layer (samples
    times tokens for a transformer's layers); "factored",
    "sparse" or "merged" pins one. exportable: only paths that torch.export and ONNX take (no "sparse").
    "auto" leaves out the paths torch has no kernel for in the layer's dtype (sparse_supports: no bfloat16
    or float16 CSR product on CPU).
    The chosen path and timings of each layer are in the returned module's `inference_choices`
    ({layer: (path, {batch: {path: seconds}})}). The model itself is not changed.
    """
    allowed = EXPORTABLE_PATHS if exportable else INFERENCE_PATHS
    if path != "auto" and path not in allowed:
        raise BadInput(f"path must be 'auto' or one of {', '.join(map(repr, allowed))}"
                       f"{' (exportable=True)' if exportable else ''}, got {path!r}")
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise BadInput(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    if any(isinstance(m, PatternSelectLinear) for m in model.modules()):
        raise BadInput("the model still has PatternSelectLinear layers; call finalize_model(model) first")
    model = copy.deepcopy(model).eval()
    choices = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, KronLinear):
            paths = [p for p in allowed if p != "sparse" or sparse_supports(module.s.dtype, module.s.device)]
            times = {} if path != "auto" else time_inference_paths(module, batch_sizes, paths, threshold)
            chosen = path if path != "auto" else choose_inference_path(times)
            form = KronInference(module, chosen, threshold)
            if name:
                model.set_submodule(name, form)
            else:  # the model is one KronLinear
                model = form
            choices[name] = (chosen, times)
    model.inference_choices = choices  # type: ignore[assignment]  # a plain attribute, not a submodule
    return model
