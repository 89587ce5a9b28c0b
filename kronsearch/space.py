"""Search space files: YAML -> a validated `Space`, checked whole before any training.

Every problem is a SpaceError naming the file, the key path and what is allowed. A file looks like
search_spaces/vit.yaml (kronsearch/spaces/vit.yaml in the package); the sections are name, seed, data, model,
train, search, backend, space.

Space files may come from anywhere, so reading one is bounded (kronsearch.layers.yamlfile: size, UTF-8,
no aliases, nesting depth, no key given twice); numbers are finite and within limits (MAX_EPOCHS,
MAX_TRIALS, MAX_RANK, MAX_CANDIDATES blocks per list, models.MAX_MODEL_PARAMS and MAX_LINEAR_LAYERS,
MAX_SYNTHETIC_VALUES); the model's size is computed before it is built, and it is then built on the
meta device, so nothing big is allocated or built before training. train.device must exist here
(cpu, cuda, cuda:N below the visible GPU count, auto; on Ray, the worker's GPUs are checked there).
`name` is used in file names and may only hold letters, digits, '.', '_' and '-' (no path
separators, no leading '.', no trailing '.db': the trial folders studies/a.db/ of a search 'a.db' would be
the storage file of search 'a'). `data.root`, when given, must be an existing folder: relative paths are
relative to the space file, '~' is expanded; any folder may be named (it is the user's data), and it
is only ever read, by parsers that accept nothing but the dataset formats (IDX headers are checked,
CIFAR pickles go through a restricted unpickler).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from kronsearch.bundled import find_space
from kronsearch.data import SYNTHETIC_DEFAULTS, dataset_shape, find_root
from kronsearch.layers.blocks import MAX_KRON_PARAMS, MAX_RANK, Block, format_block, kron_params, valid_blocks
from kronsearch.layers.errors import BadInput
from kronsearch.layers.kronify import matching_linears
from kronsearch.layers.yamlfile import read_yaml_file
from kronsearch.models import ModelError, build_model
from kronsearch.references import (
    TIMM_PREFIX,
    FactoryFailed,
    build_configured_model,
    factory_data,
    load_checkpoint,
    resolve,
)
from kronsearch.schema import (
    BACKEND,
    DATA,
    MAX_CANDIDATES,
    MODEL,
    RESOURCES,
    SEARCH,
    SPACE,
    TOP,
    TOP_LEVEL,
    TRAIN,
    Checker,
    FloatRange,
    SpaceError,
)
from kronsearch.trainer import TrainConfig

MAX_SYNTHETIC_VALUES = 500_000_000  # (n_train + n_test) * in_features of the synthetic dataset (2 GB)


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
        """What a trial trains with: the train table, the seed and search.tolerance (the contest's pick)."""
        return TrainConfig(**{**self.train, "seed": self.seed, "tolerance": self.search["tolerance"], **overrides})


def read_yaml(path: str | os.PathLike) -> tuple[dict, bytes]:
    """Parse a space file safely (see kronsearch.layers.yamlfile): bounded, UTF-8, no aliases or repeated keys,
    a mapping at the top."""
    raw, data = read_yaml_file(path, "space file", SpaceError)
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: the top level must be a mapping with keys name, data, model, train, "
                         f"search, space (and optionally seed, backend)")
    return raw, data


def load_space(path: str | os.PathLike, **overrides: Any) -> Space:
    """Read and validate a space file, or a bundled space by name (kronsearch.bundled.find_space).
    overrides: trials, strategy, device, backend, address."""
    path = find_space(path)
    raw, data = read_yaml(path)
    space = parse_space(raw, str(path), overrides)
    space.sha256 = hashlib.sha256(data).hexdigest()
    return space


def _with(raw: Any, **overrides: Any) -> Any:
    """A section with the command line's overrides on top (None: not given), before it is checked."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given or not (raw is None or isinstance(raw, dict)):
        return raw  # a section that is not a mapping fails as it is
    return {**(raw or {}), **given}


def parse_space(raw: dict, path: str = "<space>", overrides: Mapping[str, Any] | None = None) -> Space:
    """Validate a parsed space mapping (see load_space): the schema's tables, then what they cannot say."""
    c = Checker(path)
    top = c.section(raw, TOP_LEVEL, TOP)
    cli = dict(overrides or {})

    data = c.section(top["data"], "data", DATA)
    _one_of(c, "data", data, "a dataset name (one of the built-in datasets)")
    given = top["data"] if isinstance(top["data"], dict) else {}
    for key in ("root", "val_fraction", "limit", "test_limit"):
        if data["factory"] is not None and given.get(key) is not None:
            raise c.fail(f"data.{key}", "does not apply to a data factory, which makes its own splits; pass what it "
                                        "needs in data.options")
    if data["root"] is not None:
        root = Path(data["root"]).expanduser()
        root = root if root.is_absolute() else (Path(path).parent / root).resolve()
        if not root.is_dir():
            raise c.fail("data.root", f"{root} is {'a file' if root.exists() else 'missing'}; it must be an "
                                      f"existing folder (relative paths are relative to the space file)")
        data["root"] = str(root)
    c.keys(data["options"], "data.options")
    try:
        if data["factory"] is not None:
            splits = factory_data(data["factory"], data["options"] or {})
            input_shape, num_classes = splits.input_shape, splits.num_classes
        else:
            input_shape, num_classes = dataset_shape(data["name"], **(data["options"] or {}))
            if data["name"] not in ("digits", "synthetic"):
                find_root(data["name"], data["root"])
    except (BadInput, FileNotFoundError, TypeError) as err:  # DatasetError, or a factory's problem
        raise c.fail("data.factory" if data["factory"] else "data", str(err)) from None
    if data["name"] == "synthetic":
        sizes = {**SYNTHETIC_DEFAULTS, **(data["options"] or {})}
        values = (sizes["n_train"] + sizes["n_test"]) * math.prod(input_shape)
        if values > MAX_SYNTHETIC_VALUES:
            raise c.fail("data.options", f"(n_train + n_test) * in_features = {values:,}; at most "
                                         f"{MAX_SYNTHETIC_VALUES:,} values are allowed")

    model = c.section(top["model"], "model", MODEL)
    _one_of(c, "model", model, "a built-in model name or 'timm:<model name>'")
    layers = _decomposed_layers(c, model, input_shape, num_classes, Path(path).parent)

    train = c.section(_with(top["train"], device=cli.get("device")), "train", TRAIN)
    if train["select_epochs"] is not None:
        train["select_epochs"] = c.typed(train["select_epochs"], "train.select_epochs", float,
                                         "a number of epochs > 0 and <= train.epochs (or null: a quarter of them)",
                                         lambda v: 0 < v <= train["epochs"])
    try:
        TrainConfig(**train)
    except ValueError as err:
        raise c.fail("train", str(err)) from None

    search = c.section(_with(top["search"], strategy=cli.get("strategy"), trials=cli.get("trials")), "search", SEARCH)
    if search["one_round_trials"] is not None:
        c.integer(search["one_round_trials"], "search.one_round_trials", 1, search["trials"])
    search["objectives"] = c.objectives(search["objectives"])
    if search["artifacts"] is not None:  # relative to the space file, as data.root
        artifacts = Path(search["artifacts"]).expanduser()
        search["artifacts"] = str(artifacts if artifacts.is_absolute() else (Path(path).parent / artifacts).resolve())

    backend = c.section(_with(top["backend"], name=cli.get("backend"), address=cli.get("address")), "backend", BACKEND)
    if backend["name"] == "local":  # a Ray trial sees only its own GPUs (checked in backends.ray)
        _check_device_exists(c, train["device"])
    for i, reference in enumerate(backend["callbacks"]):
        try:
            resolve(reference, f"backend.callbacks[{i}]")
        except BadInput as err:
            raise c.fail(f"backend.callbacks[{i}]", str(err)) from None
    backend["resources_per_trial"] = c.section(backend["resources_per_trial"], "backend.resources_per_trial",
                                               RESOURCES)

    space = c.section(top["space"], "space", SPACE)
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
        name=top["name"], seed=top["seed"], data=data, model=model, train=train, search=search, backend=backend,
        blocks=blocks, ranks=ranks, lambda2=c.float_range(space["lambda2"], "space.lambda2"), layers=layers,
        input_shape=cast(tuple[int, int, int], tuple(input_shape)), num_classes=num_classes, path=path, raw=raw,
    )
    _check_blocks_fit(c, result)
    _check_kron_size(c, result)
    return result


def _one_of(c: Checker, section: str, values: dict, name_is: str) -> None:
    """A section names its source once: `name` (built in) or `factory` (the user's code)."""
    if (values["name"] is None) == (values["factory"] is None):
        raise c.fail(section, f"give exactly one of name ({name_is}) or factory ('package.module:function')")


def _decomposed_layers(c: Checker, model: dict, input_shape: tuple, num_classes: int,
                       folder: Path) -> dict[str, tuple[int, int]]:
    """layer -> (out, in) of the nn.Linear layers model.include/exclude select.

    A built-in model is built on the meta device (shapes only: nothing is allocated) once its size
    is known to be reasonable; a timm or factory model on the meta device too, or on the CPU if its
    code cannot run there. A checkpoint (relative to the space file) is loaded into a CPU build, so
    one for another architecture is refused here.
    """
    key = "model.factory" if model["factory"] else "model.name" if model["name"].startswith(TIMM_PREFIX) else None
    if key is None:
        try:  # build_model refuses a model too big to train by arithmetic (models.check_model_size) first
            with torch.device("meta"):
                net = build_model(model["name"], input_shape, num_classes, **(model["options"] or {}))
        except (ModelError, TypeError) as err:
            raise c.fail("model.options", str(err)) from None
    else:
        try:
            try:
                with torch.device("meta"):
                    net = build_configured_model(model, input_shape, num_classes)
            except FactoryFailed:
                net = build_configured_model(model, input_shape, num_classes)  # its code needs real tensors
        except BadInput as err:
            raise c.fail(key, str(err)) from None
    if model["checkpoint"] is not None:
        checkpoint = Path(model["checkpoint"]).expanduser()
        model["checkpoint"] = str(checkpoint if checkpoint.is_absolute() else (folder / checkpoint).resolve())
        try:
            load_checkpoint(build_configured_model(model, input_shape, num_classes), model["checkpoint"])
        except BadInput as err:
            raise c.fail("model.checkpoint", str(err)) from None
    layers = {n: (m.out_features, m.in_features)
              for n, m in matching_linears(net, model["include"], model["exclude"]).items()}
    if not layers:
        linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        raise c.fail("model.include", f"matches no nn.Linear layer; the model's layers: {', '.join(linears)}")
    return layers


def _check_device_exists(c: Checker, device: str) -> None:
    """cuda and cuda:N only when torch sees that GPU here."""
    if not device.startswith("cuda"):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        allowed = ", ".join(["auto", "cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(count)] if count else []))
        raise c.fail("train.device", f"{device!r} does not exist: torch sees {count} CUDA device"
                                     f"{'' if count == 1 else 's'} here; allowed: {allowed}")


def kron_size(space: Space, rank: int) -> tuple[int, str]:
    """(the most trainable parameters a trial's Kronecker layers can have at `rank`: every candidate of a layer
    in a one-round model, its largest in a per-pattern one; the largest layer's share, in words)."""
    every_candidate = space.search["strategy"] != "per_pattern"
    total, largest = 0, (0, "")
    for name, (out, inp) in space.layers.items():
        sizes = {b: kron_params(out, inp, b, rank) for b in space.layer_blocks(name)}
        if sizes:
            size = sum(sizes.values()) if every_candidate else max(sizes.values())
            total += size
            shown = list(sizes) if every_candidate else [max(sizes, key=sizes.__getitem__)]
            blocks = ", ".join(format_block(b) for b in shown)
            largest = max(largest, (size, f"{name} {out}x{inp} at {blocks}: {size:,}"))
    return total, largest[1]


def _check_kron_size(c: Checker, space: Space) -> None:
    """The Kronecker layers at the largest of space.ranks within MAX_KRON_PARAMS, counted before anything is built;
    the message says up to which rank they fit."""
    rank = space.ranks[-1]
    total, largest = kron_size(space, rank)
    if total <= MAX_KRON_PARAMS:
        return
    low, high = 0, rank  # kron_size grows with the rank: the largest rank that fits, by bisection
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if kron_size(space, mid)[0] <= MAX_KRON_PARAMS else (low, mid - 1)
    fits = f"ranks up to {low} fit" if low else "no rank fits: use larger blocks or fewer candidates (space.blocks)"
    raise c.fail("space.ranks", f"rank {rank} gives the Kronecker layers {total:,} trainable parameters (largest: "
                                f"{largest}); at most {MAX_KRON_PARAMS:,} are allowed: {fits}")


def _check_blocks_fit(c: Checker, space: Space) -> None:
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
