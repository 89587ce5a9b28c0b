"""`kronsearch init`: a starting space file for one's own model (or a built-in one), every key commented.

The model is built once (as `--dry-run` does, on the meta device when it can) to list its nn.Linear layers
in the file and to offer only candidate blocks that divide them; the text is then validated as a space
file before it is written, so `kronsearch run FILE --dry-run` accepts it as it is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from kronsearch.data import DATASETS
from kronsearch.layers.blocks import Block, format_block, valid_blocks
from kronsearch.models import MODELS
from kronsearch.schema import SpaceError
from kronsearch.space import parse_space

PREFERRED_BLOCKS: list[Block] = [(2, 2), (4, 4), (8, 8)]
PROBE_LAMBDA2 = {"low": 0.00001, "high": 0.001, "log": True}


def _is_reference(text: str) -> bool:
    return re.fullmatch(r"[\w.]+:[\w.]+", text) is not None


def source_lines(section: str, given: str | None, default: str, names: str) -> list[str]:
    """A data or model section's first lines: `factory:` for 'pkg.module:function', else `name:`."""
    value = given or default
    if _is_reference(value):
        what = ("returns {train, val, test (torch Datasets), input_shape, num_classes}" if section == "data" else
                "called as factory(input_shape=(C, H, W), num_classes=N, **options); returns an nn.Module")
        return [f"  factory: {value!r}  # {what}",
                f"  # name: {default}  # or a built-in instead of factory: {names}"]
    return [f"  name: {value!r}  # built in: {names}",
            "  # factory: 'mypkg.module:function'  # or your own code instead of name"]


def choose_blocks(layers: dict[str, tuple[int, int]]) -> list[Block]:
    """2x2, 4x4 and 8x8 where they divide some layer; else the three smallest blocks that do (not 1x1)."""
    fitting = {b for shape in layers.values() for b in valid_blocks(*shape)} - {(1, 1)}
    chosen = [b for b in PREFERRED_BLOCKS if b in fitting]
    if len(chosen) < 2:
        chosen += sorted(fitting - set(chosen), key=lambda b: (b[0] * b[1], b))[:3 - len(chosen)]
    return sorted(chosen, key=lambda b: (b[0] * b[1], b)) or [(1, 1)]


def starting_space(path: str | os.PathLike, model: str | None = None, data: str | None = None) -> str:
    """The text of a starting space file for `model` ('pkg.module:function', a built-in name or 'timm:<name>';
    default mlp) on `data` ('pkg.module:function' or a built-in dataset; default digits). SpaceError when the
    model or data cannot be reached or built, naming the key."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).stem).lstrip("._-")[:100] or "my-search"
    data_lines = source_lines("data", data, "digits", " | ".join(DATASETS))
    model_lines = source_lines("model", model, "mlp", " | ".join(MODELS) + " | 'timm:<name>'")
    probe = yaml.safe_load("\n".join(["data:", *data_lines, "model:", *model_lines]))
    if probe["model"].get("name") == "mlp":
        probe["model"]["options"] = {"hidden": [64]}
    raw = {"name": name, **probe, "space": {"blocks": ["1x1"], "ranks": [1], "lambda2": PROBE_LAMBDA2}}
    layers = parse_space(raw, str(path)).layers  # builds the model: a bad reference fails here, naming its key
    blocks = choose_blocks(layers)
    listed = [f"#   {layer}: {out}x{inp}" for layer, (out, inp) in layers.items()]
    text = TEMPLATE.format(
        name=name, data="\n".join(data_lines), model="\n".join(model_lines),
        options="{hidden: [64]}" if probe["model"].get("name") == "mlp" else "{}",
        layers="\n".join(listed), blocks=", ".join(f'"{format_block(b)}"' for b in blocks))
    parse_space(yaml.safe_load(text), str(path))  # what --dry-run will check first
    return text


def write_starting_space(path: str | os.PathLike, model: str | None = None, data: str | None = None,
                         overwrite: bool = False) -> Path:
    """Write starting_space(...) to `path`; an existing file is kept unless `overwrite` (SpaceError)."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise SpaceError(f"{target} exists; pass --force to overwrite it, or name another file")
    text = starting_space(target, model, data)
    target.write_text(text, encoding="utf-8")
    return target


TEMPLATE = """\
# A starting search space, written by `kronsearch init`. Check it with `kronsearch run THIS_FILE --dry-run`
# (it prints the layers, candidates and costs), edit, then `kronsearch run THIS_FILE`.
# Keys shown commented out are optional, at their defaults.
name: {name}  # the search's name (letters, digits, '.', '_', '-'): studies/<name>.db, `kronsearch show <name>`
seed: 0  # seeds the data split, the models' initialization and the sampler
data:
{data}
  options: {{}}  # keyword arguments for the data factory (or the synthetic dataset's sizes)
  # root: null  # built-in datasets: the folder of their files (default: $KRONSEARCH_DATA/<name>)
  # val_fraction: 0.1  # built-in datasets: the share of the training pool held out for validation
  # limit: null  # built-in datasets: at most this many training examples
  # test_limit: null  # built-in datasets: at most this many test examples
model:
{model}
  options: {options}  # keyword arguments for the model (its factory, or the built-in model)
  include: ["*"]  # globs (fnmatch) of the nn.Linear layers to decompose; this model's nn.Linear layers:
{layers}
  exclude: []  # globs of layers to keep dense (often the classifier head)
  # checkpoint: null  # dense weights to start from (.safetensors, or .pt read weights_only)
  # init: random  # random | dense: each decomposed layer starts as its nearest Kronecker sum
train:
  epochs: 10  # the training of each trial's model (one_round: of the race's winner, after the race)
  # select_epochs: null  # one_round's race before `epochs` (default: a quarter of epochs)
  # race_cap: 2.0  # one_round: while the evidence cannot separate candidates, the race extends up to this x
  # race_fallback: cheapest  # cheapest | most_accurate: what the race keeps at its cap, still undecided
  # finetune_epochs: 0  # extra epochs of the final model under a fresh optimizer and schedule
  batch_size: 128  # examples per step
  optimizer: adamw  # adam | adamw | sgd
  lr: 0.001  # the learning rate (cosine schedule to 0 by default)
  weight_decay: 0.0  # on weights and factors; never on S
  # s_lr_scale: 10.0  # S's learning rate is lr times this
  # momentum: 0.9  # sgd only
  # schedule: cosine  # cosine | constant
  # warmup_epochs: 0.0
  # max_grad_norm: null  # gradient clipping (null: none)
  # threshold: 0.0  # |S| at or below this counts as a pruned block
  # device: auto  # auto | cpu | cuda | cuda:N
  # compute: auto  # auto | factored | merged: how Kronecker layers run while training
  # workers: 0  # DataLoader worker processes (data factories)
  # threads: null  # torch CPU threads (null: torch's default); 1 is fastest for small models
search:
  strategy: one_round  # one_round | per_pattern | hybrid
  trials: 8  # trials to run (`kronsearch run --trials N` overrides)
  objectives:  # val_accuracy first; then any of train_macs, train_params, inference_nonzeros, final_macs, final_params
    - {{metric: val_accuracy, direction: maximize}}
  sampler: tpe  # tpe | random | nsga2
  pruner: median  # median | hyperband | none
  tolerance: 0.5  # accuracy points: the pick is the cheapest trial within this of the best val accuracy
  # timeout: null  # seconds from the run's start after which no trial starts
  # per_layer_blocks: false  # per_pattern: one block per layer instead of one for all
  # one_round_trials: null  # hybrid: one_round trials before per_pattern (default: a third of trials)
  # races: per_rank  # per_rank | once | per_trial: which one_round trials race; the others train a race's plans
  # save_weights: true  # each trial's weights under studies/ (needed by `kronsearch export --weights`)
  # artifacts: null  # the trial folders' root, a folder every machine reaches (`--artifacts PATH` overrides)
backend:
  name: local  # local | ray
  # address: null  # ray: null (a local cluster), 'auto' or 'ray://host:port'
  # resources_per_trial: {{cpu: 1, gpu: 0}}  # ray
  # max_concurrent: 1  # ray: trials at a time
  # max_retries: 1  # ray: restarts of a trial whose worker died
  # keep_session: false  # ray: keep Ray's session logs and Tune's trial folders
  # heartbeat: 60  # seconds between a running trial's heartbeats (null: none)
  # callbacks: []  # ray: 'package.module:function' references returning ray.tune.Callback objects
space:
  blocks: [{blocks}]  # candidate blocks (rows x columns) that divide the layers; or per layer: {{"glob": [...]}}
  ranks: [1, 2]  # Kronecker ranks to try
  lambda2: {{low: 0.00001, high: 0.001, log: true}}  # the l1 weight on S (block sparsity); low == high: fixed
"""
