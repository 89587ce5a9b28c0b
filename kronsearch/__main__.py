"""The `kronsearch` command (and `python -m kronsearch`): Ctrl-C at any moment is one line and exit 130.

Ctrl-C is answered before the command line is even imported (torch takes seconds to import): the first
one stops the command as kronsearch.cli describes (saving what finished); a second one, while the first is
still being cleaned up after, stops the process at once.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130
_interrupts = 0


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    global _interrupts
    _interrupts += 1
    if _interrupts > 1:
        os.write(2, b"error: interrupted again while stopping; stopped at once (re-run the same command to resume)\n")
        os._exit(EXIT_INTERRUPTED)
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGINT, _on_interrupt)
    try:
        from kronsearch.cli import main as cli

        cli()
    except KeyboardInterrupt:  # before the command line's own handling began, or after it ended
        sys.stderr.write("error: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
