"""The error hierarchy (defined in kronsearch.layers.errors, the core every module may import):

- KronsearchError
  - BadInput (a ValueError; CLI exit 2): SpaceError, ModelError, DatasetError, StudyNotFound,
    and bad blocks, plans, pattern and weight files
  - RunFailure (a RuntimeError; CLI exit 1): StorageError, TrainingDiverged, TrialFailed,
    ExportError, DatasetNotFoundError
- Terminated (a KeyboardInterrupt; CLI exit 143): SIGTERM where a backend handles it as Ctrl-C (Ray)
"""

from kronsearch.layers.errors import BadInput, KronsearchError, RunFailure

__all__ = ["BadInput", "KronsearchError", "RunFailure", "Terminated"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C (trials interrupted and re-queued, sessions stopped) where a backend must clean
    up first (Ray); `kronsearch run` then exits 143."""
