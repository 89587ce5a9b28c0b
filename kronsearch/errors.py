"""The error hierarchy (defined in kronsearch.layers.errors, the core every module may import):

- KronsearchError
  - BadInput (a ValueError; CLI exit 2): SpaceError, ModelError, DatasetError, StudyNotFound,
    and bad blocks, plans, pattern and weight files
  - RunFailure (a RuntimeError; CLI exit 1): StorageError, TrainingDiverged, TrialFailed,
    ExportError, DatasetNotFoundError
    - UserCodeExit: a user's Dataset or model called sys.exit (see user_code_exits)
- Terminated (a KeyboardInterrupt; CLI exit 143): SIGTERM, handled as Ctrl-C (kronsearch.__main__, Ray)
"""

from collections.abc import Iterator
from contextlib import contextmanager

from kronsearch.layers.errors import BadInput, KronsearchError, RunFailure

__all__ = ["BadInput", "KronsearchError", "RUN_INTERRUPTED", "RunFailure", "STOPPED_BY_CTRL_C", "STOPPED_BY_SIGTERM",
           "Terminated", "UserCodeExit", "user_code_exits"]

RUN_INTERRUPTED = "interrupted; completed trials are saved; re-run the same command to resume"  # after Ctrl-C, SIGTERM
STOPPED_BY_SIGTERM, STOPPED_BY_CTRL_C = "stopped by SIGTERM", "stopped by Ctrl-C (SIGINT)"  # a trial's `interrupted`


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C (trials interrupted and re-queued, sessions stopped); `kronsearch run` then exits
    143."""


class UserCodeExit(RunFailure):
    """A user's Dataset or model raised SystemExit (or another BaseException that is not Ctrl-C) while kronsearch
    ran it. Uncaught, `sys.exit(0)` in a Dataset's __getitem__ ended `kronsearch run` with exit 0 and no line,
    and left its trial RUNNING; as this error the trial stops as for any other error in the user's code."""


@contextmanager
def user_code_exits(what: str) -> Iterator[None]:
    """Run the user's code of `what` (e.g. "the trial's data or model code"): a SystemExit, or any BaseException
    that is neither an Exception nor Ctrl-C/SIGTERM, becomes UserCodeExit naming it."""
    try:
        yield
    except (Exception, KeyboardInterrupt, GeneratorExit):
        raise
    except SystemExit as err:
        raise UserCodeExit(f"{what} called sys.exit({err.code!r}); raise an exception instead to fail a "
                           f"trial") from None
    except BaseException as err:  # noqa: BLE001 - a user's own BaseException subclass
        raise UserCodeExit(f"{what} raised {type(err).__name__} (a BaseException that is not an Exception): "
                           f"{err}") from None
