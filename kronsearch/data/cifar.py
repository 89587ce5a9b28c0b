"""CIFAR-10/100 python-version pickle batches, read with an unpickler that only allows plain
containers and numpy arrays, so a crafted file cannot run code."""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kronsearch.data.splits import Arrays, DatasetError, check_images_labels


def _numpy_reconstructors() -> dict[tuple[str, str], Any]:
    """numpy's array-unpickling functions under both their numpy 1.x and 2.x module names.

    The functions are taken from numpy's own ``__reduce__`` output, so they are exactly the
    ones numpy pickles refer to, whichever numpy is installed.
    """
    reconstruct = np.empty(0).__reduce__()[0]  # protocol <= 4
    frombuffer = np.empty(1).__reduce_ex__(5)[0]  # protocol 5
    return {
        **{(f"numpy.{core}.multiarray", "_reconstruct"): reconstruct for core in ("core", "_core")},
        **{(f"numpy.{core}.numeric", "_frombuffer"): frombuffer for core in ("core", "_core")},
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    **{("builtins", t.__name__): t for t in (dict, list, bytes, str, int)},
    **_numpy_reconstructors(),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only plain containers and numpy arrays, never other globals."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def load_pickle(path: Path) -> Any:
    """Unpickle ``path`` (``encoding="bytes"``, as CIFAR needs) allowing only safe globals."""
    data = path.read_bytes()
    try:
        return _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any failure while unpickling untrusted bytes means a bad file
        allowed = ", ".join(f"{m}.{n}" for m, n in _SAFE_GLOBALS)
        raise DatasetError(f"{path}: unreadable or unsafe pickle ({exc}); only these globals "
                           f"are allowed: {allowed}") from exc


def _batch_field(path: Path, batch: Any, key: str) -> Any:
    """``batch[key]`` whether the pickle's keys are bytes (python 2 files) or str."""
    if isinstance(batch, dict):
        for k in (key.encode(), key):
            if k in batch:
                return batch[k]
    raise DatasetError(f"{path}: expected a dict with key {key!r}")


def _read_cifar_batches(folder: Path, names: Sequence[str], label_key: str,
                        num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate CIFAR pickle batches into (N, 3, 32, 32) uint8 images and labels."""
    images, labels = [], []
    for name in names:
        path = folder / name
        batch = load_pickle(path)
        data = np.asarray(_batch_field(path, batch, "data"))
        batch_labels = np.asarray(_batch_field(path, batch, label_key))
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetError(f"{path}: data must have shape (N, 3072), got {data.shape}")
        check_images_labels(folder, name, data, batch_labels, num_classes=num_classes,
                             image_ndim=2)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def read_cifar10(folder: Path) -> Arrays:
    return Arrays(*_read_cifar_batches(folder, CIFAR10_TRAIN, "labels", 10),
                   *_read_cifar_batches(folder, ("test_batch",), "labels", 10))


def read_cifar100(folder: Path) -> Arrays:
    return Arrays(*_read_cifar_batches(folder, ("train",), "fine_labels", 100),
                   *_read_cifar_batches(folder, ("test",), "fine_labels", 100))
