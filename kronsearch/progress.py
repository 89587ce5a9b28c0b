"""Plain progress lines for a trial's epochs, for output that is not a terminal (logs stay readable),
and for trials on Ray workers (from their epoch reports, on any output).

One line per epoch: the trial, epoch / epochs, the phase, the latest validation accuracy, the
candidates still racing (one_round), the time so far and an estimate of the trial's rest and, when
trials follow it, of the study's. On a terminal the trainer's live bar carries the same for local
trials (BarStatus); `kronsearch run --quiet` turns both off.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from rich.console import Console

from kronsearch import record
from kronsearch.trainer import EpochReport, TrainConfig


def planned_epochs(config: TrainConfig, racing: bool) -> int:
    """The epochs a trial runs at most: those of the trainer's phases (the race at its cap, when one_round)."""
    return sum(epochs for _, epochs in config.phases(racing))


def live_summary(live: dict[str, list[str]]) -> str:
    """'2x2 on 8 layers, 4x4 on 5': the candidates still racing, counted over the layers."""
    counts = Counter(block for blocks in live.values() for block in blocks).most_common()
    return ", ".join(f"{b} on {n}{' layers' if i == 0 else ''}" for i, (b, n) in enumerate(counts))


@dataclass(frozen=True)
class StudyClock:
    """What the study has left besides this trial: `later` trials still to run after it, each taking `mean`
    seconds (the finished trials' mean; None before any finished: this trial's own projected length)."""

    later: int
    mean: float | None = None

    def left(self, trial_elapsed: float, trial_left: float) -> float:
        """Seconds until the study's last trial ends, from this trial's progress."""
        return trial_left + self.later * (self.mean if self.mean is not None else trial_elapsed + trial_left)

    @classmethod
    def of(cls, study: optuna.Study, number: int, target: int, kind: str | None) -> StudyClock:
        """The clock of trial `number` of a stage of `target` trials (of `kind`, None: any)."""
        done = record.finished(study, kind)
        seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done  # reused results took 0s
                   if t.datetime_start and t.datetime_complete and record.TrialRecord.of(t).duplicate_of is None]
        return cls(max(target - len(done) - 1, 0), sum(seconds) / len(seconds) if seconds else None)


def epoch_status(epoch: int, epochs: int, val_accuracy: float, racing: str, elapsed: float,
                 study: StudyClock | None = None) -> str:
    """'val 0.8123; racing 2x2 on 8 layers; 12s, about 18s left (study: about 3m)' after epoch `epoch` of `epochs`."""
    left = elapsed / max(epoch, 1) * max(epochs - epoch, 0)
    racing = f"; racing {racing}" if racing else ""
    whole = f" (study: about {fmt_duration(study.left(elapsed, left))})" if study is not None and study.later else ""
    return f"val {val_accuracy:.4f}{racing}; {elapsed:.0f}s, about {left:.0f}s left{whole}"


def fmt_duration(seconds: float) -> str:
    """45 -> '45s', 200 -> '3m20s', 4000 -> '1h07m'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def epoch_line(number: int, epoch: int, epochs: int, phase: str, val_accuracy: float, racing: str,
               elapsed: float, study: StudyClock | None = None) -> str:
    """'trial 3 epoch 2/5 (select): val 0.8123; racing 2x2 on 8 layers; 12s, about 18s left', then the study's
    time left when trials follow this one."""
    return f"trial {number} epoch {epoch}/{epochs} ({phase}): " + epoch_status(epoch, epochs, val_accuracy, racing,
                                                                              elapsed, study)


def racing_summary(report: EpochReport) -> str:
    """The candidates still racing after this epoch ('' once every layer chose)."""
    return live_summary(report.live_candidates) if report.phase == "select" else ""


class EpochLines:
    """An on_epoch callback printing one plain line per epoch of trial `number` to `console`, then calling
    `then` (the pruning check, which may stop the trial)."""

    def __init__(self, console: Console, number: int, epochs: int,
                 then: Callable[[EpochReport], None] | None = None, study: StudyClock | None = None) -> None:
        self.console, self.number, self.epochs, self.then, self.study = console, number, epochs, then, study
        self.start = time.monotonic()

    def __call__(self, report: EpochReport) -> None:
        self.console.print(epoch_line(self.number, report.epoch, self.epochs, report.phase, report.val_accuracy,
                                      racing_summary(report), time.monotonic() - self.start, self.study),
                           highlight=False)
        if self.then is not None:
            self.then(report)


class BarStatus:
    """The terminal bar's text after each epoch of trial `number` (trainer.train's bar_status): what EpochLines
    prints, on the bar's line; the bar itself says the trial, the epoch x/N and the phase (`label`)."""

    def __init__(self, number: int, epochs: int, study: StudyClock | None = None) -> None:
        self.label, self.epochs, self.study = f"trial {number} ", epochs, study
        self.start = time.monotonic()

    def __call__(self, report: EpochReport) -> str:
        return epoch_status(report.epoch, self.epochs, report.val_accuracy, racing_summary(report),
                            time.monotonic() - self.start, self.study)
