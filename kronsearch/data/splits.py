"""What every dataset shares: the names, the errors, DataSplits, and carving val/test with a seed.

Splits: the validation split is carved from the whole training pool with ``seed``; ``limit`` then
caps the training examples only, and ``test_limit`` the test set (whole by default), which is the
dataset's own and is only for final reporting. Images are normalized per channel to
zero mean and unit variance with statistics of the (final) training split only, so nothing
about val/test leaks into training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from kronsearch.layers.errors import BadInput, RunFailure

DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "synthetic")
FIXED_TEST_SEED = 0


class DatasetNotFoundError(RunFailure, FileNotFoundError):
    """A dataset's files are in none of the folders looked at."""


class DatasetError(BadInput):
    """Unknown dataset, bad arguments, or corrupt/unsafe files."""


@dataclass
class DataSplits:
    """Train/val/test splits of one dataset, each ``TensorDataset(images, labels)``."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str
    source: str
    teacher: torch.Tensor | None = None  # synthetic only: (num_classes, in_features)


@dataclass(frozen=True)
class Arrays:
    """A dataset as loaded: images (N, C, H, W) of any numeric dtype, integer labels (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray



def check_name(name: str) -> None:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def check_split_args(val_fraction: float, limit: int | None, test_limit: int | None = None) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    for key, value in (("limit", limit), ("test_limit", test_limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DatasetError(f"{key} must be a positive integer or None, got {value!r}")


def permutation(n: int, seed: int) -> torch.Tensor:
    """A deterministic permutation of ``range(n)`` for ``seed``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def make_splits(
    name: str,
    source: str,
    arrays: Arrays,
    num_classes: int,
    val_fraction: float,
    seed: int,
    limit: int | None,
    *,
    test_limit: int | None = None,
    normalize: bool = True,
    teacher: torch.Tensor | None = None,
) -> DataSplits:
    """Carve val (``val_fraction`` of the whole training pool) with ``seed``, keep at most ``limit``
    of the rest for training and at most ``test_limit`` test examples, normalize, wrap as DataSplits.

    The test subset under ``test_limit`` uses a fixed seed so every run is scored on the same
    examples.
    """
    train_x, train_y = _as_tensors(arrays.train_images, arrays.train_labels)
    test_x, test_y = _as_tensors(arrays.test_images, arrays.test_labels)
    n = len(train_y)
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    n_test = len(test_y) if test_limit is None else min(len(test_y), test_limit)
    if n - n_val < 1:
        raise DatasetError(f"val_fraction={val_fraction} leaves no training examples out of {n}")
    order = permutation(n, seed)
    val_idx, train_idx = order[:n_val], order[n_val:][:limit]
    test_idx = permutation(len(test_y), FIXED_TEST_SEED)[:n_test]
    splits = [(train_x[train_idx], train_y[train_idx]), (train_x[val_idx], train_y[val_idx]),
              (test_x[test_idx], test_y[test_idx])]
    if normalize:
        mean, std = _channel_stats(splits[0][0])
        splits = [((x - mean) / std, y) for x, y in splits]
    train, val, test = (TensorDataset(x.contiguous(), y) for x, y in splits)
    c, h, w = train_x.shape[1:]
    return DataSplits(train, val, test, num_classes, (c, h, w), name, source, teacher)


def _as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Writable float32 images and int64 labels (copies: loaded arrays may be read-only)."""
    return (torch.from_numpy(np.array(images, dtype=np.float32)),
            torch.from_numpy(np.array(labels, dtype=np.int64)))


def _channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of (N, C, H, W) images, shaped (1, C, 1, 1) for broadcasting."""
    std, mean = torch.std_mean(images, dim=(0, 2, 3), correction=0, keepdim=True)
    return mean, std.clamp_min(1e-6)  # a constant channel is centred, not blown up


# ---------------------------------------------------------------------------------------------


def check_images_labels(folder: Path, part: str, images: np.ndarray, labels: np.ndarray, *,
                         num_classes: int, image_ndim: int) -> None:
    """Raise DatasetError unless images have ``image_ndim`` dims and match valid (integer, in range) labels."""
    where = f"{folder}: {part}"
    if images.ndim != image_ndim or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{where} images of shape {images.shape} do not match labels of "
                           f"shape {labels.shape}")
    if labels.dtype.kind not in "iu":  # converting float labels to class indices would truncate them silently
        raise DatasetError(f"{where} labels are {labels.dtype.name}; they must be integer class indices")
    if len(labels) and not (labels.min() >= 0 and labels.max() < num_classes):
        raise DatasetError(f"{where} labels must be in [0, {num_classes}), found "
                           f"[{labels.min()}, {labels.max()}]")


# CIFAR python pickles -------------------------------------------------------------------------


def locate(folder: Path, name: str, suffixes: Sequence[str]) -> Path:
    """``folder/name+suffix`` for the first suffix whose file exists, else ``folder/name``."""
    paths = [folder / (name + suffix) for suffix in suffixes]
    return next((path for path in paths if path.is_file()), folder / name)
