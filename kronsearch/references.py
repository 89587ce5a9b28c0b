"""Models and data by reference: timm models by name, Python factories, dense checkpoints.

A space file's model is a built-in name (kronsearch.models), ``timm:<model name>`` (passed to
``timm.create_model``, never downloading), or ``factory: package.module:function``, any importable
callable called as ``function(input_shape=(C, H, W), num_classes=N, **options)`` that returns an
nn.Module. Its data is a built-in dataset or ``factory: package.module:function`` called with the
options and returning a mapping (or an object) with ``train``, ``val`` and ``test`` (any torch
Datasets of (image, label) pairs), ``input_shape`` and ``num_classes``. A checkpoint (safetensors,
or ``.pt`` read with ``weights_only=True``) loads dense weights before the model is kronified.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file
from torch import nn

from kronsearch.data import DataSplits
from kronsearch.layers.errors import BadInput
from kronsearch.models import MODELS, ModelError, build_model

TIMM_PREFIX = "timm:"


class FactoryFailed(ModelError):
    """The user's model factory raised; the message names it and its error."""


def resolve(reference: str, what: str) -> Callable[..., Any]:
    """'package.module:function' -> the callable; BadInput naming the module and the error otherwise."""
    module_name, sep, attribute = str(reference).partition(":")
    if not sep or not module_name or not attribute:
        raise BadInput(f"{what} must be 'package.module:function', got {reference!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # as `python -m` does: the folder kronsearch runs in holds the user's modules
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - any failure to import (sys.exit too) is the reference's
        raise BadInput(f"{what} {reference!r}: cannot import module {module_name!r}: {type(err).__name__}: {err} "
                       f"(it must be installed, or importable from the folder kronsearch runs in)") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise BadInput(f"{what} {reference!r}: module {module_name!r} has no {attribute!r}; its callables: "
                           f"{', '.join(public[:20]) or 'none'}")
        target = getattr(target, part)
    if not callable(target):
        raise BadInput(f"{what} {reference!r}: {attribute!r} is a {type(target).__name__}, not a callable")
    return target


def call_user_code(reference: str, what: str, error: type[BadInput] = BadInput, /, **kwargs: Any) -> Any:
    """resolve(reference, what) called with kwargs. Anything the user's code raises, sys.exit included, is `error`
    naming the key and the reference; only Ctrl-C goes through."""
    function = resolve(reference, what)
    try:
        return function(**kwargs)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - the user's code
        raise error(f"{what} {reference!r} failed: {type(err).__name__}: {err}") from None


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:
        if "timm" not in str(err):
            raise BadInput(_TIMM_BROKEN.format(err=f"{type(err).__name__}: {err}")) from None
        raise BadInput("timm models need timm: docs/own-model.md (\"Your own model and data\") gives the install "
                       "command that keeps your torch") from None
    except Exception as err:  # noqa: BLE001 - e.g. a torchvision built for another torch fails as it loads its ops
        raise BadInput(_TIMM_BROKEN.format(err=f"{type(err).__name__}: {err}")) from None
    return timm


_TIMM_BROKEN = ("timm is installed but cannot be imported ({err}); its torchvision probably does not match your "
                "torch (PyPI's Linux torchvision is a CUDA build: on a CPU torch, install torchvision's CPU wheel "
                "from https://download.pytorch.org/whl/cpu), see docs/own-model.md (\"Your own model and data\")")


def create_timm(name: str, input_shape: tuple[int, int, int], num_classes: int,
                options: Mapping[str, Any]) -> nn.Module:
    """timm.create_model(name, num_classes, in_chans=C, plus options); never downloads weights."""
    timm = _timm()
    if options.get("pretrained"):
        raise ModelError(f"timm:{name}: pretrained weights would be downloaded; set pretrained false and give "
                         f"local weights as model.checkpoint")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ModelError(f"unknown timm model {name!r}" + (f"; close names: {', '.join(close)}" if close else
                                                           "; see timm.list_models()"))
    kwargs = {"in_chans": input_shape[0], **options, "num_classes": num_classes, "pretrained": False}
    try:
        return timm.create_model(name, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise ModelError(f"timm:{name} with options {dict(options)}: {type(err).__name__}: {err}") from None


def build_configured_model(model: Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The model a space's (or an exported pattern's) model section describes: built-in, timm or factory."""
    options = dict(model.get("options") or {})
    if model.get("factory"):
        net = call_user_code(model["factory"], "model.factory", FactoryFailed,
                             **{**options, "input_shape": tuple(input_shape), "num_classes": num_classes})
        if not isinstance(net, nn.Module):
            raise ModelError(f"model.factory {model['factory']!r} returned a {type(net).__name__}, not an nn.Module")
        return net
    name = model.get("name")
    shape = cast(tuple[int, int, int], tuple(input_shape))  # a tuple even where the caller passed a list
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        return create_timm(name[len(TIMM_PREFIX):], shape, num_classes, options)
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}, 'timm:<model name>', "
                         f"or factory: 'package.module:function'")
    return build_model(name, shape, num_classes, **options)


def read_state_dict(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a .pt/.pth state dict read with weights_only=True (no pickled code)."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".pt", ".pth"):
        raise BadInput(f"{path}: {what} must be a .safetensors or .pt file")
    if not path.is_file():
        raise BadInput(f"{path}: {what} file does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt or non-weights file
        raise BadInput(f"{path}: {what} cannot be read: {type(err).__name__}: {err}") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInput(f"{path}: {what} is not a state dict of tensors")
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:  # NaN/inf would only surface later, as a failed SVD (init: dense) or NaN outputs
        raise BadInput(f"{path}: {what} holds NaN or infinite values in {', '.join(broken[:5])}; only finite weights "
                       f"are allowed")
    return dict(state)


def load_checkpoint(net: nn.Module, path: str | os.PathLike) -> None:
    """Load dense weights into `net` before it is kronified; BadInput when they are for another architecture."""
    state = read_state_dict(path, "model.checkpoint")
    mismatch = state_mismatch(net, state)
    if mismatch:
        raise BadInput(f"model.checkpoint: {path} does not fit this model (another architecture or options?): "
                       f"{mismatch}")
    net.load_state_dict(state)


def state_mismatch(net: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """What keeps `state` from loading into `net`: its missing, unexpected, mis-shaped tensors, and integer tensors
    for floating ones or the reverse, which load_state_dict would cast silently ("" if none)."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    kinds = [f"{k} {state[k].dtype} vs {own[k].dtype}" for k in own
             if k in state and state[k].is_floating_point() != own[k].is_floating_point()]
    parts = [f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}" if missing else "",
             f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}" if unexpected else "",
             f"shape mismatch {'; '.join(shapes[:3])}" if shapes else "",
             f"dtype mismatch {'; '.join(kinds[:3])}" if kinds else ""]
    return "; ".join(p for p in parts if p)


def factory_data(reference: str, options: Mapping[str, Any]) -> DataSplits:
    """The data factory's DataSplits, made once per process for each (reference, options)."""
    return _factory_data(reference, json.dumps(dict(options), sort_keys=True, default=str))


@functools.lru_cache(maxsize=4)
def _factory_data(reference: str, options: str) -> DataSplits:
    return load_factory_data(reference, json.loads(options))


def load_factory_data(reference: str, options: Mapping[str, Any]) -> DataSplits:
    """DataSplits from a data factory (see the module doc); BadInput naming what is missing."""
    made = call_user_code(reference, "data.factory", BadInput, **dict(options))

    def get(key: str) -> Any:
        return made.get(key) if isinstance(made, Mapping) else getattr(made, key, None)

    missing = [k for k in ("train", "val", "test", "input_shape", "num_classes") if get(k) is None]
    if missing:
        raise BadInput(f"data.factory {reference!r} returned no {', '.join(missing)}; it must return train, val, "
                       f"test (torch Datasets), input_shape (C, H, W) and num_classes")
    shape = tuple(int(v) for v in get("input_shape"))
    if len(shape) != 3:
        raise BadInput(f"data.factory {reference!r}: input_shape must be (C, H, W), got {get('input_shape')!r}")
    for split in ("train", "val", "test"):
        if not hasattr(get(split), "__getitem__") or not hasattr(get(split), "__len__") or len(get(split)) == 0:
            raise BadInput(f"data.factory {reference!r}: {split} must be a non-empty torch Dataset")
    return DataSplits(get("train"), get("val"), get("test"), int(get("num_classes")), shape, reference,
                      f"factory {reference}")
