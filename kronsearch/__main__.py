"""The `kronsearch` command (and `python -m kronsearch`): Ctrl-C at any moment is one line and exit 130; SIGTERM
(`timeout`, systemd, kill) is handled as Ctrl-C is, and is one line and exit 143.

Ctrl-C is answered before the command line is even imported (torch takes seconds to import): the first
one stops the command as kronsearch.cli describes (saving what finished); a second one (or a SIGTERM), while the
first is still being cleaned up after, stops the process at once. SIGTERM raises kronsearch.errors.Terminated, a
KeyboardInterrupt, so every clean-up of a Ctrl-C runs for it too (interrupted trials are marked and re-queued).

A Ctrl-C that lands while Python runs a weakref callback or a finalizer (importlib's module locks have
one, so every import is such a moment) raises its KeyboardInterrupt there, and Python only prints it
("Exception ignored in ...") and goes on. That lost interrupt is caught by sys.unraisablehook and
delivered again to the main thread a moment later, where it stops the command like any other.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
from types import FrameType

from kronsearch.errors import Terminated  # light: no torch

EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
_interrupts = 0
_redelivered = False


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT raises KeyboardInterrupt, SIGTERM Terminated; a second signal while stopping exits at once."""
    global _interrupts, _redelivered
    stop = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    if _redelivered:  # the same signal, lost in a callback once, not a second one
        _redelivered = False
        raise stop
    _interrupts += 1
    if _interrupts > 1:
        name = "terminated" if signum == signal.SIGTERM else "interrupted"
        os.write(2, f"error: {name} again while stopping; stopped at once (re-run the same command to resume)\n"
                 .encode())
        os._exit(EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED)
    raise stop


def _redeliver_lost_interrupt(unraisable: sys.UnraisableHookArgs) -> None:
    """Hand a KeyboardInterrupt that a callback swallowed back to the main thread; print anything else."""
    global _redelivered
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        _redelivered = True  # from another thread, a moment later: here it would be lost in this hook again
        signum = signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT
        timer = threading.Timer(0.05, _thread.interrupt_main, (signum,))
        timer.daemon = True
        timer.start()
        return
    sys.__unraisablehook__(unraisable)


def install_interrupt_handling() -> None:
    """Make Ctrl-C raise KeyboardInterrupt (SIGTERM: Terminated) in the main thread, even one that first lands in a
    callback."""
    signal.signal(signal.SIGINT, _on_interrupt)
    signal.signal(signal.SIGTERM, _on_interrupt)
    sys.unraisablehook = _redeliver_lost_interrupt


def main() -> None:
    """Console-script entry point."""
    install_interrupt_handling()
    try:
        from kronsearch.cli import main as cli

        cli()
    except Terminated:  # before the command line's own handling began, or after it ended
        sys.stderr.write("error: terminated (SIGTERM)\n")
        sys.exit(EXIT_TERMINATED)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
