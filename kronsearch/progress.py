"""Plain progress lines for a trial's epochs, for output that is not a terminal (logs stay readable),
and for trials on Ray workers (from their epoch reports, on any output).

One line per epoch: the trial, epoch / epochs, the phase, the latest validation accuracy, the
candidates still racing (one_round), the time so far and an estimate of the rest. On a terminal
the trainer's live bar shows the same for local trials; `kronsearch run --quiet` turns both off.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable

from rich.console import Console

from kronsearch.trainer import EpochReport, TrainConfig


def planned_epochs(config: TrainConfig, racing: bool) -> int:
    """The epochs a trial runs at most: the race (one_round), the training and the fine-tuning."""
    return (math.ceil(config.selection_epochs) if racing else 0) + config.epochs + config.finetune_epochs


def live_summary(live: dict[str, list[str]]) -> str:
    """'2x2 on 8 layers, 4x4 on 5': the candidates still racing, counted over the layers."""
    counts = Counter(block for blocks in live.values() for block in blocks).most_common()
    return ", ".join(f"{b} on {n}{' layers' if i == 0 else ''}" for i, (b, n) in enumerate(counts))


def epoch_line(number: int, epoch: int, epochs: int, phase: str, val_accuracy: float, racing: str,
               elapsed: float) -> str:
    """'trial 3 epoch 2/5 (select): val 0.8123; racing 2x2 on 8 layers; 12s, about 18s left'."""
    left = elapsed / max(epoch, 1) * max(epochs - epoch, 0)
    racing = f"; racing {racing}" if racing else ""
    return (f"trial {number} epoch {epoch}/{epochs} ({phase}): val {val_accuracy:.4f}{racing}; {elapsed:.0f}s, "
            f"about {left:.0f}s left")


def racing_summary(report: EpochReport) -> str:
    """The candidates still racing after this epoch ('' once every layer chose)."""
    return live_summary(report.live_candidates) if report.phase == "select" else ""


class EpochLines:
    """An on_epoch callback printing one plain line per epoch of trial `number` to `console`, then calling
    `then` (the pruning check, which may stop the trial)."""

    def __init__(self, console: Console, number: int, epochs: int,
                 then: Callable[[EpochReport], None] | None = None) -> None:
        self.console, self.number, self.epochs, self.then = console, number, epochs, then
        self.start = time.monotonic()

    def __call__(self, report: EpochReport) -> None:
        self.console.print(epoch_line(self.number, report.epoch, self.epochs, report.phase, report.val_accuracy,
                                      racing_summary(report), time.monotonic() - self.start), highlight=False)
        if self.then is not None:
            self.then(report)
