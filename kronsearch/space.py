"""Search space files: YAML -> a validated `Space`, checked whole before any training.

Every problem is a SpaceError naming the file, the key path and what is allowed. A file looks like
search_spaces/vit.yaml; the sections are name, seed, data, model, train, search, backend, space.

Space files may come from anywhere, so reading one is bounded (kronsearch.layers.yamlfile: size, UTF-8,
no aliases, nesting depth, no key given twice); numbers are finite and within limits (MAX_EPOCHS,
MAX_TRIALS, MAX_RANK, MAX_CANDIDATES blocks per list, MAX_MODEL_PARAMS, MAX_LINEAR_LAYERS,
MAX_SYNTHETIC_VALUES); the model's size is computed before it is built, and it is then built on the
meta device, so nothing big is allocated or built before training. train.device must exist here
(cpu, cuda, cuda:N below the visible GPU count, auto; on Ray, the worker's GPUs are checked there).
`name` is used in file names and may only hold letters, digits, '.', '_' and '-' (no path
separators, no leading '.'). `data.root`, when given, must be an existing folder: relative paths are
relative to the space file, '~' is expanded; any folder may be named (it is the user's data), and it
is only ever read, by parsers that accept nothing but the dataset formats (IDX headers are checked,
CIFAR pickles go through a restricted unpickler).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
import reprlib
from fnmatch import fnmatchcase
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kronsearch.data import SYNTHETIC_DEFAULTS, DATASETS, DatasetError, dataset_shape, find_root
from kronsearch.layers.blocks import MAX_RANK, Block, format_block, parse_block, valid_blocks
from kronsearch.layers.compute import COMPUTE_MODES
from kronsearch.layers.errors import BadInput
from kronsearch.layers.yamlfile import read_yaml_file
from kronsearch.models import MODELS, ModelError, build_model, model_size
from kronsearch.record import STRATEGIES
from kronsearch.trainer import OPTIMIZERS, SCHEDULES, TrainConfig

MAX_EPOCHS = 10_000
MAX_CANDIDATES = 32  # per layer: every candidate is a full KronLinear in the one-round model
MAX_TRIALS = 100_000
MAX_MODEL_PARAMS = 250_000_000  # the dense model: 1 GB of float32, 4 GB with gradients and Adam states
MAX_LINEAR_LAYERS = 1024  # ViT-large has 97; each is a module (and up to 32 candidates) to build
MAX_SYNTHETIC_VALUES = 500_000_000  # (n_train + n_test) * in_features of the synthetic dataset (2 GB)
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
METRICS = {  # objective metric -> the only sensible direction
    "val_accuracy": "maximize", "train_macs": "minimize", "train_params": "minimize",
    "inference_nonzeros": "minimize", "final_macs": "minimize", "final_params": "minimize",
}
SAMPLERS = ("tpe", "random", "nsga2")
PRUNERS = ("median", "hyperband", "none")
BACKENDS = ("local", "ray")
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("lambda1", "lambda2", "seed", "progress"))


class SpaceError(BadInput):
    """A space file that cannot be run; the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class FloatRange:
    """A lambda range; low == high means a fixed value."""

    low: float
    high: float
    log: bool = True


@dataclass
class Space:
    """A validated search space file. `layers` maps each decomposed layer to (out, in)."""

    name: str
    seed: int
    data: dict
    model: dict
    train: dict
    search: dict
    backend: dict
    blocks: dict[str, list[Block]]  # glob -> candidate blocks; a global list is {"*": [...]}
    ranks: list[int]
    lambda1: FloatRange
    lambda2: FloatRange
    layers: dict[str, tuple[int, int]]
    input_shape: tuple[int, int, int]
    num_classes: int
    path: str = ""
    sha256: str = ""
    raw: dict = field(default_factory=dict)

    def layer_blocks(self, layer: str) -> list[Block]:
        """The candidate blocks of a decomposed layer that divide it (first matching glob wins)."""
        shape = self.layers[layer]
        for glob, blocks in self.blocks.items():
            if fnmatchcase(layer, glob):
                return [b for b in blocks if b in valid_blocks(*shape)]
        return []

    def train_config(self, **overrides: Any) -> TrainConfig:
        return TrainConfig(**{**self.train, "seed": self.seed, **overrides})


def read_yaml(path: str | os.PathLike) -> tuple[dict, bytes]:
    """Parse a space file safely (see kronsearch.layers.yamlfile): bounded, UTF-8, no aliases or repeated keys,
    a mapping at the top."""
    raw, data = read_yaml_file(path, "space file", SpaceError)
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: the top level must be a mapping with keys name, data, model, train, "
                         f"search, space (and optionally seed, backend)")
    return raw, data


def _clip(text: str, limit: int) -> str:
    """Hostile files have huge keys and values: messages show their start."""
    return text if len(text) <= limit else text[:limit] + "..."


class _Checker:
    """Reads one file's sections, failing with the file and key path on the first problem."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> SpaceError:
        return SpaceError(f"{self.path}: {_clip(key, 200)}: {_clip(problem, 2000)}")

    def section(self, raw: Any, key: str, allowed: Mapping[str, Any]) -> dict:
        """A mapping with only `allowed` keys, defaults filled in (a default of ... is required)."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise self.fail(key, f"must be a mapping, got {type(raw).__name__}")
        unknown = sorted(set(map(str, raw)) - set(allowed))
        if unknown:
            raise self.fail(f"{key}.{unknown[0]}", f"unknown key; allowed: {', '.join(allowed)}")
        missing = [k for k, v in allowed.items() if v is ... and k not in raw]
        if missing:
            raise self.fail(f"{key}.{missing[0]}", "required")
        return {k: copy.deepcopy(raw.get(k, default)) for k, default in allowed.items()}

    def typed(self, value: Any, key: str, kind: type, what: str, ok: Callable[[Any], bool] = lambda v: True) -> Any:
        """value if it is a `kind` (ints accepted as floats, bools only as bools) and passes `ok`."""
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind) or not ok(value):
            raise self.fail(key, f"must be {what}, got {_SHORT.repr(value)}")
        return value

    def integer(self, value: Any, key: str, low: int, high: int) -> int:
        return self.typed(value, key, int, f"an integer in [{low}, {high}]", lambda v: low <= v <= high)

    def choice(self, value: Any, key: str, allowed: tuple) -> str:
        if value not in allowed:
            raise self.fail(key, f"must be one of {', '.join(map(str, allowed))}, got {_SHORT.repr(value)}")
        return value

    def float_range(self, raw: Any, key: str) -> FloatRange:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            raw = {"low": raw, "high": raw}
        spec = self.section(raw, key, {"low": ..., "high": ..., "log": True})
        low = self.typed(spec["low"], f"{key}.low", float, "a finite number", math.isfinite)
        high = self.typed(spec["high"], f"{key}.high", float, "a finite number", math.isfinite)
        log = self.typed(spec["log"], f"{key}.log", bool, "true or false")
        if log and low <= 0:
            raise self.fail(f"{key}.low", f"must be > 0 on a log scale, got {low}")
        if low < 0 or high < low:
            raise self.fail(key, f"needs 0 <= low <= high, got low={low}, high={high}")
        return FloatRange(low, high, log)

    def block_list(self, raw: Any, key: str) -> list[Block]:
        if not isinstance(raw, list) or not raw:
            raise self.fail(key, "must be a non-empty list of blocks like '4x4' or [4, 4]")
        if len(raw) > MAX_CANDIDATES:
            raise self.fail(key, f"{len(raw)} candidate blocks; at most {MAX_CANDIDATES} are allowed")
        blocks = []
        for i, item in enumerate(raw):
            try:
                block = parse_block(item)
            except (ValueError, TypeError) as err:
                raise self.fail(f"{key}[{i}]", str(err)) from None
            if min(block) < 1:
                raise self.fail(f"{key}[{i}]", f"block sides must be >= 1, got {_SHORT.repr(item)}")
            blocks.append(block)
        return list(dict.fromkeys(blocks))


def load_space(path: str | os.PathLike, **overrides: Any) -> Space:
    """Read and validate a space file. overrides: trials, strategy, device, backend, address."""
    raw, data = read_yaml(path)
    space = parse_space(raw, str(path), overrides)
    space.sha256 = hashlib.sha256(data).hexdigest()
    return space


def parse_space(raw: dict, path: str = "<space>", overrides: Mapping[str, Any] | None = None) -> Space:
    """Validate a parsed space mapping (see load_space)."""
    c = _Checker(path)
    top = c.section(raw, "(top level)", {"name": ..., "seed": 0, "data": ..., "model": ..., "train": {},
                                        "search": {}, "backend": {}, "space": ...})
    name = c.typed(top["name"], "name", str, "a name of letters, digits, '.', '_' or '-'",
                   lambda v: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v) is not None)
    seed = c.integer(top["seed"], "seed", 0, 2**31 - 1)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}

    data = c.section(top["data"], "data", {"name": ..., "root": None, "val_fraction": 0.1, "limit": None,
                                           "options": {}})
    c.choice(data["name"], "data.name", DATASETS)
    c.typed(data["val_fraction"], "data.val_fraction", float, "a number in (0, 0.5]", lambda v: 0 < v <= 0.5)
    if data["limit"] is not None:
        c.integer(data["limit"], "data.limit", 10, 10**8)
    if data["root"] is not None:
        root = Path(c.typed(data["root"], "data.root", str, "a folder path")).expanduser()
        root = root if root.is_absolute() else (Path(path).parent / root).resolve()
        if not root.is_dir():
            raise c.fail("data.root", f"{root} is {'a file' if root.exists() else 'missing'}; it must be an "
                                      f"existing folder (relative paths are relative to the space file)")
        data["root"] = str(root)
    c.section(data["options"], "data.options", dict.fromkeys(data["options"] or {}, None))
    try:
        input_shape, num_classes = dataset_shape(data["name"], **(data["options"] or {}))
        if data["name"] not in ("digits", "synthetic"):
            find_root(data["name"], data["root"])
    except (DatasetError, FileNotFoundError, TypeError) as err:
        raise c.fail("data", str(err)) from None
    if data["name"] == "synthetic":
        sizes = {**SYNTHETIC_DEFAULTS, **(data["options"] or {})}
        values = (sizes["n_train"] + sizes["n_test"]) * math.prod(input_shape)
        if values > MAX_SYNTHETIC_VALUES:
            raise c.fail("data.options", f"(n_train + n_test) * in_features = {values:,}; at most "
                                         f"{MAX_SYNTHETIC_VALUES:,} values are allowed")

    model = c.section(top["model"], "model", {"name": ..., "options": {}, "include": ["*"], "exclude": []})
    c.choice(model["name"], "model.name", MODELS)
    for key in ("include", "exclude"):
        c.typed(model[key], f"model.{key}", list, "a list of glob patterns on layer names",
                lambda v: all(isinstance(g, str) for g in v))
    _check_model_size(c, model["name"], input_shape, num_classes, model["options"] or {})
    try:
        with torch.device("meta"):  # shapes only: allocates nothing
            net = build_model(model["name"], input_shape, num_classes, **(model["options"] or {}))
    except (ModelError, TypeError) as err:
        raise c.fail("model.options", str(err)) from None
    layers = {
        n: (m.out_features, m.in_features) for n, m in net.named_modules()
        if isinstance(m, nn.Linear) and any(fnmatchcase(n, g) for g in model["include"])
        and not any(fnmatchcase(n, g) for g in model["exclude"])
    }
    if not layers:
        linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        raise c.fail("model.include", f"matches no nn.Linear layer; the model's layers: {', '.join(linears)}")

    train = c.section(top["train"], "train", {k: getattr(TrainConfig, k) for k in TRAIN_KEYS})
    c.integer(train["epochs"], "train.epochs", 1, MAX_EPOCHS)
    c.integer(train["finetune_epochs"], "train.finetune_epochs", 0, MAX_EPOCHS)
    c.integer(train["batch_size"], "train.batch_size", 1, 1_000_000)
    c.choice(train["optimizer"], "train.optimizer", OPTIMIZERS)
    c.choice(train["schedule"], "train.schedule", SCHEDULES)
    c.choice(train["compute"], "train.compute", COMPUTE_MODES)
    for key in ("lr", "s_lr_scale"):
        train[key] = c.typed(train[key], f"train.{key}", float, "a number > 0", lambda v: 0 < v < 1e6)
    for key in ("weight_decay", "momentum", "warmup_epochs", "threshold"):
        train[key] = c.typed(train[key], f"train.{key}", float, "a number >= 0", lambda v: 0 <= v < 1e6)
    if train["threads"] is not None:
        c.integer(train["threads"], "train.threads", 1, 1024)
    if train["select_epochs"] is not None:
        train["select_epochs"] = c.typed(train["select_epochs"], "train.select_epochs", float,
                                         "a number of epochs > 0 and <= train.epochs (or null: a quarter of them)",
                                         lambda v: 0 < v <= train["epochs"])
    if train["max_grad_norm"] is not None:
        train["max_grad_norm"] = c.typed(train["max_grad_norm"], "train.max_grad_norm", float, "a number > 0",
                                         lambda v: v > 0)
    if "device" in overrides:
        train["device"] = overrides["device"]
    c.typed(train["device"], "train.device", str, "auto, cpu, cuda or cuda:N",
            lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None)
    try:
        TrainConfig(**train)
    except ValueError as err:
        raise c.fail("train", str(err)) from None

    search = c.section(top["search"], "search", {
        "strategy": "one_round", "trials": 10, "objectives": [{"metric": "val_accuracy"}], "sampler": "tpe",
        "pruner": "median", "timeout": None, "per_layer_blocks": False, "one_round_trials": None,
        "save_weights": True})
    for key in ("strategy", "trials"):
        if key in overrides:
            search[key] = overrides[key]
    c.choice(search["strategy"], "search.strategy", STRATEGIES)
    c.integer(search["trials"], "search.trials", 1, MAX_TRIALS)
    c.choice(search["sampler"], "search.sampler", SAMPLERS)
    c.choice(search["pruner"], "search.pruner", PRUNERS)
    if search["timeout"] is not None:
        search["timeout"] = c.typed(search["timeout"], "search.timeout", float, "seconds > 0", lambda v: v > 0)
    for key in ("per_layer_blocks", "save_weights"):
        c.typed(search[key], f"search.{key}", bool, "true or false")
    if search["one_round_trials"] is not None:
        c.integer(search["one_round_trials"], "search.one_round_trials", 1, search["trials"])
    search["objectives"] = _objectives(c, search["objectives"])

    backend = c.section(top["backend"], "backend", {"name": "local", "address": None, "resources_per_trial": None,
                                                    "max_concurrent": 1, "max_retries": 1})
    for key in ("backend", "address"):
        if key in overrides:
            backend["name" if key == "backend" else key] = overrides[key]
    c.choice(backend["name"], "backend.name", BACKENDS)
    if backend["address"] is not None:
        c.typed(backend["address"], "backend.address", str, "null, 'auto' or 'ray://host:port'")
    c.integer(backend["max_concurrent"], "backend.max_concurrent", 1, 10_000)
    c.integer(backend["max_retries"], "backend.max_retries", 0, 100)
    if backend["name"] == "local":  # a Ray trial sees only its own GPUs (checked in backends.ray)
        _check_device_exists(c, train["device"])
    resources = c.section(backend["resources_per_trial"], "backend.resources_per_trial", {"cpu": 1, "gpu": 0})
    for key, value in resources.items():
        resources[key] = c.typed(value, f"backend.resources_per_trial.{key}", float, "a number >= 0",
                                 lambda v: 0 <= v <= 1024)
    backend["resources_per_trial"] = resources

    space = c.section(top["space"], "space", {"blocks": ..., "ranks": [1], "lambda1": ..., "lambda2": ...})
    if isinstance(space["blocks"], dict):
        if not space["blocks"]:
            raise c.fail("space.blocks", "an empty mapping; give a list of blocks or {layer glob: [blocks]}")
        blocks = {str(g): c.block_list(v, f"space.blocks.{g}") for g, v in space["blocks"].items()}
    else:
        blocks = {"*": c.block_list(space["blocks"], "space.blocks")}
    ranks = space["ranks"]
    if not isinstance(ranks, list) or not ranks:
        raise c.fail("space.ranks", "must be a non-empty list of integers >= 1")
    ranks = sorted({c.integer(r, f"space.ranks[{i}]", 1, MAX_RANK) for i, r in enumerate(ranks)})
    result = Space(
        name=name, seed=seed, data=data, model=model, train=train, search=search, backend=backend,
        blocks=blocks, ranks=ranks, lambda1=c.float_range(space["lambda1"], "space.lambda1"),
        lambda2=c.float_range(space["lambda2"], "space.lambda2"), layers=layers,
        input_shape=tuple(input_shape), num_classes=num_classes, path=path, raw=raw,
    )
    _check_blocks_fit(c, result)
    return result


def _check_device_exists(c: _Checker, device: str) -> None:
    """cuda and cuda:N only when torch sees that GPU here."""
    if not device.startswith("cuda"):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        allowed = ", ".join(["auto", "cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(count)] if count else []))
        raise c.fail("train.device", f"{device!r} does not exist: torch sees {count} CUDA device"
                                     f"{'' if count == 1 else 's'} here; allowed: {allowed}")


def _check_model_size(c: _Checker, name: str, input_shape: tuple, num_classes: int, options: dict) -> None:
    """Refuse a model too big to train (or even to build) by arithmetic, before building anything."""
    size = model_size(name, input_shape, num_classes, **options)
    if size is None:
        return  # malformed options: build_model names the problem
    params, linears = size
    if params > MAX_MODEL_PARAMS:
        raise c.fail("model.options", f"the model has {params:,} parameters; at most {MAX_MODEL_PARAMS:,} "
                                      f"are allowed")
    if linears > MAX_LINEAR_LAYERS:
        raise c.fail("model.options", f"the model has {linears:,} nn.Linear layers; at most {MAX_LINEAR_LAYERS:,} "
                                      f"are allowed")


def _objectives(c: _Checker, raw: Any) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise c.fail("search.objectives", "must be a non-empty list of {metric, direction}")
    objectives = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"metric": item}
        spec = c.section(item, f"search.objectives[{i}]", {"metric": ..., "direction": None})
        metric = c.choice(spec["metric"], f"search.objectives[{i}].metric", tuple(METRICS))
        direction = spec["direction"] or METRICS[metric]
        if direction != METRICS[metric]:
            raise c.fail(f"search.objectives[{i}].direction", f"{metric} can only be {METRICS[metric]}d")
        objectives.append({"metric": metric, "direction": direction})
    if objectives[0]["metric"] != "val_accuracy":
        raise c.fail("search.objectives[0]", "the first objective must be val_accuracy")
    if len({o["metric"] for o in objectives}) != len(objectives):
        raise c.fail("search.objectives", "lists a metric twice")
    return objectives


def _check_blocks_fit(c: _Checker, space: Space) -> None:
    """Every block must divide some decomposed layer; every decomposed layer must get a candidate."""
    for glob, blocks in space.blocks.items():
        matched = {n: s for n, s in space.layers.items() if fnmatchcase(n, glob)}
        key = "space.blocks" if glob == "*" else f"space.blocks.{glob}"
        if not matched:
            raise c.fail(key, f"matches no decomposed layer; decomposed layers: {', '.join(space.layers)}")
        for block in blocks:
            if not any(block in valid_blocks(*shape) for shape in matched.values()):
                shapes = ", ".join(f"{n} {o}x{i}" for n, (o, i) in matched.items())
                raise c.fail(key, f"block {format_block(block)} divides no decomposed layer ({shapes})")
        if len(blocks) * len(matched) > MAX_CANDIDATES * 1000:
            raise c.fail(key, f"{len(blocks)} blocks x {len(matched)} layers is too many candidate layers")
    if space.search["strategy"] != "per_pattern" and not any(space.layer_blocks(n) for n in space.layers):
        raise c.fail("space.blocks", "no candidate block divides any decomposed layer")
