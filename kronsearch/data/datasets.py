"""The dataset registry: load_dataset and dataset_shape by name, and the bundled digits."""

from __future__ import annotations

import os
from typing import Any

from kronsearch.data.folders import FOLDERS, find_root
from kronsearch.data.splits import (
    FIXED_TEST_SEED,
    Arrays,
    DatasetError,
    DataSplits,
    check_name,
    check_split_args,
    make_splits,
    permutation,
)
from kronsearch.data.synthetic import synthetic_arrays, synthetic_options

DIGITS_TEST_FRACTION = 0.2


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    test_limit: int | None = None,
    **options: Any,
) -> DataSplits:
    """Load ``name`` as normalized train/val/test splits.

    ``root`` is the data folder for file-based datasets (ignored by ``digits`` and
    ``synthetic``). ``val_fraction`` of the training set becomes the validation split,
    chosen with ``seed``. ``limit`` keeps at most that many of the remaining training examples
    (validation is carved first, from the whole pool); ``test_limit`` keeps at most that many test
    examples (default: the whole test set). ``options``
    are only accepted by ``synthetic``: in_features=64, num_classes=16, block=(4, 4),
    sparsity=0.5, n_train=4000, n_test=1000, noise=0.0 (see :func:`synthetic_teacher`).
    """
    check_name(name)
    check_split_args(val_fraction, limit, test_limit)
    if name == "synthetic":
        teacher, arrays = synthetic_arrays(seed, **options)
        return make_splits(name, "synthetic", arrays, int(teacher.shape[0]), val_fraction, seed,
                            limit, test_limit=test_limit, normalize=False, teacher=teacher)
    if options:
        raise DatasetError(f"dataset {name!r} takes no options, got {sorted(options)}; "
                           "only 'synthetic' accepts options")
    if name == "digits":
        return make_splits(name, "scikit-learn bundled", digits_arrays(), 10, val_fraction,
                            seed, limit, test_limit=test_limit)
    spec = FOLDERS[name]
    folder = find_root(name, root)
    return make_splits(name, str(folder), spec.read(folder), spec.num_classes, val_fraction,
                        seed, limit, test_limit=test_limit)


def dataset_shape(name: str, **options: Any) -> tuple[tuple[int, int, int], int]:
    """(input_shape (C, H, W), num_classes) of a dataset, without reading it."""
    check_name(name)
    if name == "synthetic":
        opts = synthetic_options(options)
        return (1, 1, opts["in_features"]), opts["num_classes"]
    if name == "digits":
        return (1, 8, 8), 10
    return FOLDERS[name].input_shape, FOLDERS[name].num_classes


def digits_arrays() -> Arrays:
    """scikit-learn digits with a fixed 20% test split (seed 0, whatever the run's seed)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images[:, None], digits.target
    order = permutation(len(labels), FIXED_TEST_SEED).numpy()
    n_test = round(DIGITS_TEST_FRACTION * len(labels))
    test, train = order[:n_test], order[n_test:]
    return Arrays(images[train], labels[train], images[test], labels[test])


# ---------------------------------------------------------------------------------------------
# Folder-based datasets
