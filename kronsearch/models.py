"""Model zoo: small PyTorch classifiers whose ``nn.Linear`` layers have stable names.

Every model takes images of shape ``(batch, C, H, W)`` and returns logits of shape
``(batch, num_classes)``. Linear layers are later swapped for Kronecker-factored modules
by name glob (``fnmatch`` on ``model.named_modules()``), so:

* every ``nn.Linear`` has a stable, meaningful name (timm's naming for the ViT);
* forward passes only *call* Linear modules and never read their ``.weight``, because a
  replacement module need not have one.

Linear names per model:

* ``linear``: ``fc``
* ``mlp``: ``layers.0`` ... ``layers.{n-1}``, ``head``
* ``lenet5``: ``fc1``, ``fc2``, ``fc3`` (convolutions ``conv1``, ``conv2`` stay dense)
* ``vit``: ``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.proj``, ``blocks.{i}.mlp.fc1``,
  ``blocks.{i}.mlp.fc2``, ``head`` (patch embedding Conv2d ``patch_embed`` stays dense)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kronsearch.layers.errors import BadInput

MODELS: tuple[str, ...] = ("linear", "mlp", "lenet5", "vit")
MAX_MODEL_PARAMS = 250_000_000  # the dense model: 1 GB of float32, 4 GB with gradients and Adam states
MAX_LINEAR_LAYERS = 1024  # ViT-large has 97; each is a module (and up to 32 candidates) to build

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}

LENET5_MIN_SIDE = 12
"""Smallest image side LeNet-5 accepts: with padding 2 the conv stack maps 12 -> 1."""


class ModelError(BadInput):
    """Unknown model name, unknown option or an option value the model cannot use."""


# ----------------------------------------------------------------------------- validation


def _resolve_options(model: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``given`` over ``defaults``, rejecting option names the model does not know."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        allowed = ", ".join(sorted(defaults)) or "none"
        raise ModelError(f"unknown option(s) {unknown} for model {model!r}; allowed options: {allowed}")
    return {**defaults, **given}


def _positive_int(model: str, key: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1 (bools rejected), else raise ModelError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{model}: {key} must be a positive integer, got {value!r}")
    return value


def _check_shape(input_shape: Sequence[int], num_classes: int) -> tuple[int, int, int]:
    """Validate ``(C, H, W)`` and ``num_classes``; return the shape as a tuple of ints."""
    if len(input_shape) != 3:
        raise ModelError(f"input_shape must be (C, H, W), got {tuple(input_shape)!r}")
    c, h, w = (_positive_int("input_shape", dim, v) for dim, v in zip("CHW", input_shape))
    _positive_int("build_model", "num_classes", num_classes)
    return c, h, w


# ----------------------------------------------------------------------------- linear / mlp


class LinearClassifier(nn.Module):
    """Logistic regression on the flattened image: ``(B, C, H, W) -> (B, num_classes)``."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, num_classes)``."""
        return self.fc(self.flatten(x))


class MLP(nn.Module):
    """Fully connected net on the flattened image: Linear+activation per hidden width, then ``head``."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        self.flatten = nn.Flatten()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.act = ACTIVATIONS[activation]()
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, num_classes)``."""
        x = self.flatten(x)
        for layer in self.layers:
            x = self.act(layer(x))
        return self.head(x)


# ----------------------------------------------------------------------------- LeNet-5


class LeNet5(nn.Module):
    """LeNet-5 adapted to ``(C, H, W)``: two 5x5 conv+relu+maxpool stages, then fc1 -> fc2 -> fc3.

    ``conv1`` uses padding 2 when the smaller image side is below 32 (so 28x28 MNIST matches
    the classic 32x32 geometry), else none. The flattened size is measured by a dry forward
    of the conv stack on zeros, so any image with both sides >= ``LENET5_MIN_SIDE`` works.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, h, w = input_shape
        self.conv1 = nn.Conv2d(c, 6, kernel_size=5, padding=2 if min(h, w) < 32 else 0)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        with torch.no_grad():
            flat = self.features(torch.zeros(1, c, h, w)).shape[1]
        self.fc1 = nn.Linear(flat, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Conv stack: ``(B, C, H, W) -> (B, 16 * H' * W')``."""
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        return self.flatten(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, num_classes)``."""
        x = self.act(self.fc1(self.features(x)))
        x = self.act(self.fc2(x))
        return self.fc3(x)


# ----------------------------------------------------------------------------- ViT


class Attention(nn.Module):
    """Multi-head self-attention; q/k/v come from the single ``qkv`` Linear, output from ``proj``."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn_drop = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, dim) -> (B, N, dim)``."""
        b, n, d = x.shape
        # (B, N, 3*dim) -> (3, B, heads, N, head_dim)
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, n, d)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """Transformer feed-forward: ``fc1`` -> GELU -> ``fc2``, with dropout after each."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, dim) -> (B, N, dim)``."""
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, dim) -> (B, N, dim)``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT with a cls token: Conv2d ``patch_embed``, pre-norm ``blocks``, final ``norm``, ``head`` on cls.

    Initialisation follows timm: trunc-normal(std 0.02) Linear weights with zero bias,
    trunc-normal(0.02) position embedding, near-zero cls token.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        num_patches = (h // patch_size) * (w // patch_size)
        self.patch_embed = nn.Conv2d(c, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(_init_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, num_classes)``."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, num_patches, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def _init_linear(module: nn.Module) -> None:
    """timm-style init at construction time: trunc-normal(0.02) weight, zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------- builders


def _build_linear(shape: tuple[int, int, int], num_classes: int, options: Mapping[str, Any]) -> nn.Module:
    _resolve_options("linear", options, {})
    c, h, w = shape
    return LinearClassifier(c * h * w, num_classes)


def _build_mlp(shape: tuple[int, int, int], num_classes: int, options: Mapping[str, Any]) -> nn.Module:
    opts = _resolve_options("mlp", options, {"hidden": (256,), "activation": "relu"})
    hidden = opts["hidden"]
    if not isinstance(hidden, (list, tuple)):
        raise ModelError(f"mlp: hidden must be a list/tuple of positive widths, got {hidden!r}")
    widths = [_positive_int("mlp", "hidden width", v) for v in hidden]
    if opts["activation"] not in ACTIVATIONS:
        raise ModelError(f"mlp: unknown activation {opts['activation']!r}; allowed: {', '.join(ACTIVATIONS)}")
    c, h, w = shape
    return MLP(c * h * w, num_classes, widths, opts["activation"])


def _build_lenet5(shape: tuple[int, int, int], num_classes: int, options: Mapping[str, Any]) -> nn.Module:
    _resolve_options("lenet5", options, {})
    _, h, w = shape
    if min(h, w) < LENET5_MIN_SIDE:
        raise ModelError(
            f"lenet5 needs images of at least {LENET5_MIN_SIDE}x{LENET5_MIN_SIDE}, got {h}x{w}; "
            "use 'linear', 'mlp' or 'vit' for smaller inputs"
        )
    return LeNet5(shape, num_classes)


def _build_vit(shape: tuple[int, int, int], num_classes: int, options: Mapping[str, Any]) -> nn.Module:
    defaults = {"patch_size": 4, "dim": 192, "depth": 12, "heads": 3, "mlp_ratio": 4.0, "dropout": 0.0}
    opts = _resolve_options("vit", options, defaults)
    for key in ("patch_size", "dim", "depth", "heads"):
        _positive_int("vit", key, opts[key])
    _, h, w = shape
    patch, dim, heads = opts["patch_size"], opts["dim"], opts["heads"]
    if h % patch or w % patch:
        allowed = [p for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0]
        raise ModelError(f"vit: patch_size {patch} does not divide the {h}x{w} image; allowed patch sizes: {allowed}")
    if dim % heads:
        allowed = [n for n in range(1, dim + 1) if dim % n == 0]
        raise ModelError(f"vit: dim {dim} is not divisible by heads {heads}; allowed heads for dim {dim}: {allowed}")
    ratio, dropout = opts["mlp_ratio"], opts["dropout"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or int(dim * ratio) < 1:
        raise ModelError(f"vit: mlp_ratio must be a number with int(dim * mlp_ratio) >= 1, got {ratio!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ModelError(f"vit: dropout must be a number in [0, 1), got {dropout!r}")
    return VisionTransformer(shape, num_classes, patch, dim, opts["depth"], heads, float(ratio), float(dropout))


def model_size(name: str, input_shape: Sequence[int], num_classes: int, **options: Any) -> tuple[int, int] | None:
    """(parameters, nn.Linear layers) of build_model(name, input_shape, num_classes, **options), by
    arithmetic and without building anything; None when the options are not well-formed (build_model
    then says what is wrong). Lets a caller refuse an absurd model before the build would take minutes."""
    try:
        c, h, w = _check_shape(input_shape, num_classes)
    except ModelError:
        return None
    linear = lambda a, b: a * b + b  # noqa: E731 - weight and bias of nn.Linear(a, b)
    if name == "linear":
        return linear(c * h * w, num_classes), 1
    if name == "mlp":
        hidden = options.get("hidden", (256,))
        if not isinstance(hidden, (list, tuple)) or not all(isinstance(v, int) and v >= 1 for v in hidden):
            return None
        widths = [c * h * w, *hidden]
        return sum(linear(a, b) for a, b in zip(widths, widths[1:])) + linear(widths[-1], num_classes), len(widths)
    if name == "lenet5":
        pad = 2 if min(h, w) < 32 else 0
        side = [((((s + 2 * pad - 4) // 2) - 4) // 2) for s in (h, w)]
        if min(side) < 1:
            return None
        convs = c * 6 * 25 + 6 + 6 * 16 * 25 + 16
        return convs + linear(16 * side[0] * side[1], 120) + linear(120, 84) + linear(84, num_classes), 3
    if name == "vit":
        opts = {"patch_size": 4, "dim": 192, "depth": 12, "mlp_ratio": 4.0, **options}
        patch, dim, depth, ratio = (opts[k] for k in ("patch_size", "dim", "depth", "mlp_ratio"))
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (patch, dim, depth)) or \
                isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1e9:
            return None
        hidden, patches = int(dim * ratio), (h // patch) * (w // patch)
        block = 4 * dim + linear(dim, 3 * dim) + linear(dim, dim) + linear(dim, hidden) + linear(hidden, dim)
        embed = c * dim * patch * patch + dim + dim + (patches + 1) * dim
        return embed + depth * block + 2 * dim + linear(dim, num_classes), 4 * depth + 1
    return None


_BUILDERS: dict[str, Callable[[tuple[int, int, int], int, Mapping[str, Any]], nn.Module]] = {
    "linear": _build_linear,
    "mlp": _build_mlp,
    "lenet5": _build_lenet5,
    "vit": _build_vit,
}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, **options: Any) -> nn.Module:
    """Build model ``name`` for images of shape ``input_shape = (C, H, W)`` and ``num_classes`` outputs.

    ``options`` are model-specific (``mlp``: hidden, activation; ``vit``: patch_size, dim,
    depth, heads, mlp_ratio, dropout; ``linear`` and ``lenet5`` take none). Raises
    ModelError for an unknown name, unknown option or a value the model cannot use.
    """
    if name not in _BUILDERS:
        raise ModelError(f"unknown model {name!r}; allowed models: {', '.join(MODELS)}")
    shape = _check_shape(input_shape, num_classes)
    check_model_size(name, shape, num_classes, options)
    return _BUILDERS[name](shape, num_classes, options)


def check_model_size(name: str, input_shape: Sequence[int], num_classes: int, options: Mapping[str, Any]) -> None:
    """ModelError for a model over MAX_MODEL_PARAMS parameters or MAX_LINEAR_LAYERS nn.Linear layers, counted by
    arithmetic (model_size) before anything is allocated; every build_model call is bounded by it."""
    params, linears = model_size(name, input_shape, num_classes, **options) or (0, 0)
    if params > MAX_MODEL_PARAMS:
        raise ModelError(f"the model has {params:,} parameters; at most {MAX_MODEL_PARAMS:,} are allowed")
    if linears > MAX_LINEAR_LAYERS:
        raise ModelError(f"the model has {linears:,} nn.Linear layers; at most {MAX_LINEAR_LAYERS:,} are allowed")
