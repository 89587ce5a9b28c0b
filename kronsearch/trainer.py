"""The trainer: one training function for dense, Kronecker and pattern-selection models.

train(model, data, config, callback) trains and measures one model. With PatternSelectLinear layers a race of
`select_epochs` comes first (kronsearch/selection.py, driven by kronsearch/one_round.py's hooks, as in a user's own
loop): each step trains one candidate per layer, and each layer keeps what the evidence decides
(kronsearch/evidence.py; the race extends itself up to `race_cap`). The winner then trains `epochs` under the same
optimizer state and a fresh schedule, from the race's weights; `finetune_epochs` optionally adds epochs of the final
model. Returns the metrics the search optimizes."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from kronsearch.data import DataSplits
from kronsearch.data.batches import Batches
from kronsearch.layers.blocks import format_block
from kronsearch.layers.compute import COMPUTE_MODES, default_compute_as
from kronsearch.layers.costs import area_weighted, model_cost
from kronsearch.layers.errors import BadInput, RunFailure
from kronsearch.layers.kron_linear import DEFAULT_THRESHOLD, KronLinear
from kronsearch.layers.kronify import model_plan
from kronsearch.layers.pattern_select import PatternSelectLinear, finalize_model, l1_penalty
from kronsearch.one_round import OneRound
from kronsearch.record import DEFAULT_TOLERANCE
from kronsearch.selection import RACE_CAP, RACE_FALLBACKS, Race, prox_l1_, s_parameters

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """How to train. lambda2 weighs the l1 penalty on every S; tolerance decides the one round's race."""

    epochs: int = 10  # the training of the model (with candidates: of the race's winner, after the race)
    finetune_epochs: int = 0  # optional extra epochs of the final model, fresh optimizer and schedule
    select_epochs: float | None = None  # the race before `epochs` (candidates only); None: a quarter of `epochs`
    race_cap: float = RACE_CAP  # undecided, the race extends up to race_cap x select_epochs (kronsearch/evidence.py)
    race_fallback: str = RACE_FALLBACKS[0]  # what the race keeps at its cap, undecided (selection.RACE_FALLBACKS)
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 1e-3
    s_lr_scale: float = 10.0  # S lives on an O(1) scale and must reach 0 within the run; Adam moves ~lr per step
    weight_decay: float = 0.0  # on weights and factors A, B; never on S (its l1 is its regularizer), biases, norms
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"  # per step, to 0 at the end of each phase
    warmup_epochs: float = 0.0
    lambda2: float = 0.0
    # accuracy points: the contest keeps the cheapest candidate whose estimated accuracy is within this of
    # the best candidate's (0: the most accurate); a space file sets it with search.tolerance
    tolerance: float = DEFAULT_TOLERANCE
    max_grad_norm: float | None = None  # None: no clipping
    threshold: float = DEFAULT_THRESHOLD  # |S| <= threshold counts as a pruned block
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    # how the Kronecker layers run while training (kronsearch/layers/compute.py): "auto" times the
    # factored and merged paths once per layer shape and keeps the faster (the one round's candidates
    # then cost one GEMM); "factored" is bit-for-bit reproducible across processes
    compute: str = "auto"
    workers: int = 0  # DataLoader worker processes for datasets that are not in-memory tensors (data factories)
    threads: int | None = None  # torch CPU threads (process-wide); None: torch's default; small models run fastest on 1
    progress: bool = True

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1, "finetune_epochs": self.finetune_epochs >= 0,
            "batch_size": self.batch_size >= 1, "lr": self.lr > 0, "s_lr_scale": self.s_lr_scale > 0,
            "weight_decay": self.weight_decay >= 0, "lambda2": self.lambda2 >= 0,
            "tolerance": 0 <= self.tolerance <= 100,
            "warmup_epochs": 0 <= self.warmup_epochs <= self.epochs, "threshold": self.threshold >= 0,
            "select_epochs": self.select_epochs is None or 0 < self.select_epochs <= self.epochs,
            "race_cap": self.race_cap >= 1, "race_fallback": self.race_fallback in RACE_FALLBACKS,
            # a negative max norm would flip every gradient's sign in clip_grad_norm_ (gradient ascent)
            "max_grad_norm": self.max_grad_norm is None or self.max_grad_norm > 0,
            "threads": self.threads is None or self.threads >= 1,
            "optimizer": self.optimizer in OPTIMIZERS, "schedule": self.schedule in SCHEDULES,
            "compute": self.compute in COMPUTE_MODES,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise BadInput(f"invalid train settings: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)} "
                             f"(optimizer in {OPTIMIZERS}, schedule in {SCHEDULES}, compute in {COMPUTE_MODES}, "
                             f"counts and rates positive, warmup_epochs <= epochs, 0 < select_epochs <= epochs, "
                             f"race_cap >= 1, race_fallback in {RACE_FALLBACKS}, max_grad_norm None or > 0)")

    @property
    def selection_epochs(self) -> float:
        """The race's length in epochs (`select_epochs`, else a quarter of `epochs`)."""
        return self.select_epochs if self.select_epochs is not None else self.epochs / 4

    def phases(self, racing: bool) -> list[tuple[str, int]]:
        """(phase, epochs at most): the race at its cap when `racing`, the training, the fine-tuning if any."""
        race = [("select", math.ceil(self.selection_epochs * self.race_cap))] if racing else []
        return race + [("train", self.epochs)] + ([("finetune", self.finetune_epochs)] if self.finetune_epochs else [])


@dataclass
class EpochReport:
    """What the trainer knows after one epoch; handed to the callback."""

    epoch: int  # 1-based, counting across phases
    phase: str  # "select" while some layer's contest runs, "train" otherwise, "finetune"
    train_loss: float  # task loss, mean over the epoch
    penalty: float  # the regularization term (l1_penalty + regularizer), mean over the epoch
    val_accuracy: float  # of the model that will be kept: while selecting, each layer's leader alone
    block_sparsity: float  # overall, over the Kronecker layers
    candidate_norms: dict[str, dict[str, float]]  # layer -> live candidate block -> ||W_k||_F
    live_candidates: dict[str, list[str]]  # layer -> candidates still in the layer at the epoch's end
    leaders: dict[str, str]  # layer -> the candidate it keeps (while racing: the cheapest within tolerance so far)
    lr: float
    seconds: float
    train_macs_total: int  # forward MACs over every sample of the epochs so far (what a pruned trial spent)
    final: bool = False  # the run's last epoch: its cost is spent, so a pruner has nothing left to save


@dataclass
class TrainResult:
    """Metrics of a finished training. `model` is the trained (and finalized) model."""

    val_accuracy: float
    test_accuracy: float
    block_sparsity: float
    layer_sparsity: dict[str, float]
    train_params: int  # trainable parameters while training (the selection phase, candidates included)
    train_macs: int  # forward MACs per training sample, averaged over the run (a race step runs one
    # candidate per layer; the race's checks are included): train_macs_total / samples trained
    train_macs_total: int  # forward MACs over every sample of every epoch, as the live set shrank
    final_params: int
    final_macs: int
    inference_nonzeros: int  # weight entries after merging, dense layers counted as dense
    selected: dict[str, str]  # layer -> winning block (pattern selection only)
    decisions: dict[str, dict]  # layer -> {block, step, epoch (fractional), by, estimates, pace}: Race.records
    plan: dict[str, dict]  # layer -> {block, rank} of the final model
    wall_time: float
    history: list[EpochReport] = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False)

    def metrics(self) -> dict:
        """Everything but the model, as plain JSON-able values."""
        out = asdict(self)
        out.pop("model")
        return out


class TrainingDiverged(RunFailure):
    """The loss became NaN or infinite; the message says when."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so model init and training repeat exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when torch sees a GPU (Ray sets CUDA_VISIBLE_DEVICES per trial), else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device {device!r} asked for, but torch sees no CUDA device")
    return resolved


def kron_layers(model: nn.Module) -> dict[str, KronLinear]:
    """Top-level KronLinear layers (not the candidates inside a PatternSelectLinear)."""
    inside = {f"{n}.branches." for n, m in model.named_modules() if isinstance(m, PatternSelectLinear)}
    return {n: m for n, m in model.named_modules()
            if isinstance(m, KronLinear) and not any(n.startswith(p) for p in inside)}


def candidate_norms(model: nn.Module) -> dict[str, dict[str, float]]:
    """layer -> candidate block -> ||W_k||_F, for every PatternSelectLinear."""
    return {n: m.weight_norms() for n, m in model.named_modules() if isinstance(m, PatternSelectLinear)}


def block_sparsity(model: nn.Module, threshold: float) -> tuple[float, dict[str, float]]:
    """(overall, per layer) fraction of pruned blocks; the overall one is weighted by layer area."""
    layers = {n: m.block_sparsity(threshold) for n, m in kron_layers(model).items()}
    return area_weighted(layers, {n: m.in_features * m.out_features for n, m in kron_layers(model).items()}), layers


@torch.no_grad()
def accuracy(model: nn.Module, batches: Batches) -> float:
    """Top-1 accuracy in [0, 1] over a split."""
    model.eval()
    correct = sum((model(images).argmax(-1) == labels).sum().item() for images, labels in batches.ordered())
    model.train()
    return correct / max(len(batches), 1)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Three groups: S (scaled lr, no decay), weights and factors (decay), biases and norms (no decay)."""
    s_params = {id(m.s) for m in model.modules() if isinstance(m, KronLinear)}
    groups: dict[str, list] = {"s": [], "decay": [], "no_decay": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        key = "s" if id(p) in s_params else "decay" if p.ndim >= 2 else "no_decay"
        groups[key].append(p)
    param_groups = [
        {"params": groups["s"], "lr": config.lr * config.s_lr_scale, "weight_decay": 0.0},
        {"params": groups["decay"], "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": groups["no_decay"], "lr": config.lr, "weight_decay": 0.0},
    ]
    param_groups = [g for g in param_groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adam":
        # torch's Adam adds weight decay to the gradient (l2); AdamW decouples it.
        return torch.optim.Adam(param_groups, lr=config.lr)
    return torch.optim.AdamW(param_groups, lr=config.lr)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over `warmup` steps, then constant or cosine down to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def train(
    model: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    callback: Callable[[EpochReport], None] | None = None,
    *,
    regularizer: Callable[[nn.Module], Tensor] | None = None,
    after_step: Callable[[int, int], None] | None = None,
    bar_label: str = "",
    bar_status: Callable[[EpochReport], str] | None = None,
) -> TrainResult:
    """Train `model` on `data` and measure it. The callback may raise (e.g. optuna.TrialPruned) to stop.

    Models with PatternSelectLinear layers first race their candidates ("select" epochs: `select_epochs`, extended
    up to `race_cap` times while undecided; the last may be partial), then train the winners for `epochs` and end as
    them (finalized); `finetune_epochs` then trains the final model afresh. lambda2 is a proximal step on every S
    (exact zeros). Raises TrainingDiverged on a non-finite loss; the test split is evaluated once, at the end.

    Hooks (used by kronsearch.baselines): `regularizer(model)` is added to the loss of every step; `after_step(step,
    total_steps)` runs after every optimizer step (step is 1-based within the phase; its gradients are in `.grad`).

    With config.progress, a live bar per phase says '<bar_label>epoch x/N <phase>', the phase's steps and time left,
    and after each epoch `bar_status(report)` (default: its loss and val accuracy).
    """
    start = time.perf_counter()
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    model.to(device).train()
    generator = torch.Generator().manual_seed(config.seed)
    train_batches, val = (Batches(split, config.batch_size, device, config.workers) for split in (data.train, data.val))
    select_layers = [n for n, m in model.named_modules() if isinstance(m, PatternSelectLinear)]
    train_params = model_cost(model, data.input_shape, config.threshold).total.params  # candidates included
    steps_per_epoch = math.ceil(len(train_batches) / config.batch_size)
    history: list[EpochReport] = []
    phases = config.phases(racing=bool(select_layers))  # the race at its cap: it may extend itself
    planned, status = sum(epochs for _, epochs in phases), ""  # planned: at most (a race may end within an epoch)
    macs_total = trained = 0
    selection: Race | None = None
    one_round: OneRound | None = None  # the race's hooks on the optimizer (prox, race steps, routing)
    optimizer: torch.optim.Optimizer | None = None
    with default_compute_as(config.compute), Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"), disable=not config.progress, transient=True) as bar:
        for phase, epochs in phases:
            if phase != "train" or optimizer is None:  # the winner trains on with its moments from the race
                optimizer = make_optimizer(model, config)
            if phase == "select":  # the schedule is constant: its length is the race's budget, not its cap
                total_steps = round(config.selection_epochs * steps_per_epoch)
                selection = Race(model, optimizer, total_steps, config.tolerance, val, config.seed, config.batch_size,
                                 extend=config.race_cap, fallback=config.race_fallback)
                one_round = OneRound.around(selection, config.lambda2)
            else:
                total_steps = epochs * steps_per_epoch
            sample_macs = model_cost(model, data.input_shape, config.threshold).total.macs
            # warm-up once, in the first phase; the race runs at the full rate after it, the training decays
            warmup = round(config.warmup_epochs * steps_per_epoch) if phase == phases[0][0] else 0
            shape = "constant" if phase == "select" else config.schedule
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer, partial(lr_factor, total=total_steps, warmup=warmup, schedule=shape))
            s_params = s_parameters(model)
            bar_total = selection.cap_steps if selection is not None and phase == "select" else total_steps
            task = bar.add_task(f"{bar_label}epoch {len(history) + 1}/{planned} {phase}", total=bar_total,
                                status=status)  # the last epoch's, until this phase's first ends
            for index in range(epochs):
                if selection is not None and phase == "select" and selection.done:
                    break
                bar.update(task, description=f"{bar_label}epoch {len(history) + 1}/{planned} {phase}")
                epoch_start = time.perf_counter()
                task_sum, penalty_sum, seen = 0.0, 0.0, 0
                for step, (images, labels) in enumerate(train_batches.shuffled(generator)):
                    if phase == "select" and selection is not None and selection.done:
                        break  # the race is over within this epoch: the training starts afresh
                    racing = selection if selection is not None and not selection.done else None
                    loss = F.cross_entropy(model(images), labels)  # while racing, routed by one_round's hooks
                    # what this step's forward cost: while racing, the candidates that ran
                    macs_total += (racing.routed_macs(data.input_shape) if racing else sample_macs) * len(labels)
                    extra = regularizer(model) if regularizer is not None else loss.new_zeros(())
                    total = loss + extra
                    if not torch.isfinite(total):
                        raise TrainingDiverged(
                            f"non-finite loss ({loss.item()} + regularizer {extra.item()}) in {phase} epoch "
                            f"{len(history) + 1}, step {step + 1}")
                    optimizer.zero_grad(set_to_none=True)
                    total.backward()
                    if config.max_grad_norm:
                        nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    evaluated = selection.eval_macs if selection is not None else 0
                    optimizer.step()  # with the race's optimizer, one_round's hooks: the prox, the race's step
                    # a train() inside torch.autocast would otherwise run every step on the low-precision
                    # copies autocast cached of the weights at the first forward (measured: bf16 digits ViT 42%)
                    torch.clear_autocast_cache()
                    if one_round is None or optimizer is not one_round.optimizer:
                        prox_l1_(optimizer, s_params, config.lambda2)
                    elif racing:  # the phase after the race counts its model's MACs afresh (sample_macs)
                        macs_total += racing.eval_macs - evaluated  # the race's own validation passes
                    schedule.step()
                    if after_step is not None:
                        after_step(schedule.last_epoch, total_steps)
                    with torch.no_grad():
                        penalty = l1_penalty(model, config.lambda2) + extra
                    task_sum += loss.item() * len(labels)
                    penalty_sum += penalty.item() * len(labels)
                    seen += len(labels)
                    trained += len(labels)
                    bar.advance(task)
                report = epoch_report(model, selection if phase != "finetune" else None, config, len(history) + 1,
                                      phase, (task_sum / max(seen, 1), penalty_sum / max(seen, 1)),
                                      val, time.perf_counter() - epoch_start,
                                      config.lr * lr_factor(schedule.last_epoch, total_steps, warmup, shape),
                                      macs_total, final=(phase, epochs) == phases[-1] and index == epochs - 1)
                history.append(report)
                status = (bar_status(report) if bar_status is not None else
                          f"loss {report.train_loss:.3f} val {report.val_accuracy:.3f}")
                bar.update(task, status=status)
                if callback is not None:
                    callback(report)
            bar.remove_task(task)
            if phase == "select" and one_round is not None:
                one_round.finish()  # a no-op unless a batch count left the budget unreached
            elif phase == "train" and one_round is not None:  # set with the race
                one_round.close()
                finalize_model(model)
    decisions = selection_records(selection, steps_per_epoch) if selection is not None else {}
    final_cost = model_cost(model, data.input_shape, config.threshold).total
    overall, layers = block_sparsity(model, config.threshold)
    plan = model_plan(model)
    return TrainResult(
        val_accuracy=accuracy(model, val),
        test_accuracy=accuracy(model, Batches(data.test, config.batch_size, device, config.workers)),
        block_sparsity=overall, layer_sparsity=layers,
        train_params=train_params, train_macs=round(macs_total / max(trained, 1)), train_macs_total=macs_total,
        final_params=final_cost.params, final_macs=final_cost.macs, inference_nonzeros=final_cost.nonzeros,
        selected={name: format_block(plan[name].block) for name in select_layers},
        decisions=decisions,
        plan={name: p.to_dict() for name, p in plan.items()},
        wall_time=time.perf_counter() - start, history=history, model=model,
    )


def epoch_report(model: nn.Module, selection: Race | None, config: TrainConfig, epoch: int, phase: str,
                 losses: tuple[float, float], val: Batches, seconds: float, lr: float, macs_total: int,
                 final: bool = False) -> EpochReport:
    """Measure the model after an epoch. While a contest runs, validation uses each layer's leader
    alone, so the pruner compares the models trials will keep, not a sum of candidates."""
    if selection is not None and not selection.done:
        with selection.leaders_only():
            val_accuracy = accuracy(model, val)
    else:
        val_accuracy = accuracy(model, val)
    return EpochReport(
        epoch=epoch, phase=phase, train_loss=losses[0], penalty=losses[1], val_accuracy=val_accuracy,
        block_sparsity=block_sparsity(model, config.threshold)[0], candidate_norms=candidate_norms(model),
        live_candidates={n: list(m.branches) for n, m in model.named_modules() if isinstance(m, PatternSelectLinear)},
        leaders={n: selection.leader(n) for n in selection.layers} if selection is not None else {},
        lr=lr,  # the base lr; param group 0 may be S's, which runs at s_lr_scale times it
        seconds=seconds, train_macs_total=macs_total, final=final)


def selection_records(selection: Race, steps_per_epoch: int) -> dict[str, dict]:
    """layer -> {block, step, epoch, by, estimates, pace} of each layer's choice (Race.records), epoch being
    fractional: the step of the choice / steps per epoch."""
    return {name: {**record, "epoch": round(record["step"] / steps_per_epoch, 3)}
            for name, record in selection.records().items()}
