"""Where kronsearch's output goes, and why it never stops a run.

Progress is a side channel: `kronsearch run ... 2>&1 | head -1` closes the pipe after one line, and the
next progress line raised BrokenPipeError inside the training loop, which stopped the run with exit 1 and
no line. A stream whose reader is gone now drops the rest of its output (the descriptor is pointed at
/dev/null, so Python's flush at exit does not fail either) and the work goes on; its exit code says
whether the work was done. A COLUMNS that no text fits in (COLUMNS=0 made rich print every line as
nothing) is ignored: the terminal's width, or 80 columns, is used instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TextIO

from rich.console import Console

COLUMNS_RANGE = (20, 100_000)  # a COLUMNS outside this is ignored


def usable_columns() -> bool:
    """Whether COLUMNS is unset or a width text fits in (COLUMNS_RANGE)."""
    columns = os.environ.get("COLUMNS")
    return columns is None or (columns.strip().isdigit() and COLUMNS_RANGE[0] <= int(columns) <= COLUMNS_RANGE[1])


def ignore_absurd_columns() -> None:
    """Drop a COLUMNS no text fits in from the environment, for every console of this process (and its children)."""
    if not usable_columns():
        del os.environ["COLUMNS"]


def drop_output(stream: TextIO) -> None:
    """Point `stream`'s descriptor at /dev/null: its reader is gone, and what is still buffered goes nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no descriptor (a test's capture): nothing is flushed at exit
        pass


class ReaderSafeStream:
    """A text stream over `stream()` (looked up at each write, so a redirected sys.stderr is followed) that
    drops its output once its reader is gone instead of raising BrokenPipeError."""

    def __init__(self, stream: Callable[[], TextIO]) -> None:
        self.stream, self.gone = stream, False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.stream().write(text)
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream().flush()
            except BrokenPipeError:
                self._reader_gone()

    def _reader_gone(self) -> None:
        self.gone = True
        drop_output(self.stream())

    def isatty(self) -> bool:
        return not self.gone and self.stream().isatty()

    def fileno(self) -> int:
        return self.stream().fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream(), "encoding", None) or "utf-8"


def progress_console(quiet: bool = False) -> Console:
    """The console of a run's progress lines: stderr, lines never wrapped, dropped once stderr's reader is gone,
    80 columns wide when COLUMNS is absurd."""
    return Console(file=ReaderSafeStream(lambda: sys.stderr), quiet=quiet, soft_wrap=True,  # type: ignore[arg-type]
                   width=None if usable_columns() else 80)
