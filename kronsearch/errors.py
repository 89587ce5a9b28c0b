"""The error hierarchy (defined in kronsearch.layers.errors, the core every module may import):

- KronsearchError
  - BadInput (a ValueError; CLI exit 2): SpaceError, ModelError, DatasetError, StudyNotFound,
    and bad blocks, plans, pattern and weight files
  - RunFailure (a RuntimeError; CLI exit 1): StorageError, TrainingDiverged, TrialFailed,
    ExportError, DatasetNotFoundError
"""

from kronsearch.layers.errors import BadInput, KronsearchError, RunFailure

__all__ = ["BadInput", "KronsearchError", "RunFailure"]
