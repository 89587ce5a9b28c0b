"""Writers of tiny dataset files in the standard formats (IDX, CIFAR pickles), for tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
             np.float32: 0x0D, np.float64: 0x0E}


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in .gz)."""
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[array.dtype.type], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_idx_dataset(folder: Path, *, gz: bool, n_train: int = 30, n_test: int = 10,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """Four MNIST-style IDX files of random 28x28 images; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        IDX_FILES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        IDX_FILES[1]: (np.arange(n_train) % 10).astype(np.uint8),
        IDX_FILES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        IDX_FILES[3]: (np.arange(n_test) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), array)
    return arrays


def cifar_pickle(batch: dict, style: str) -> bytes:
    """Pickle a CIFAR batch. "numpy1" mimics the real files: numpy.core names, no framing."""
    if style == "numpy1":
        return pickle.dumps(batch, protocol=3).replace(b"numpy._core.", b"numpy.core.")
    return pickle.dumps(batch, protocol=int(style))


def cifar_batch(labels: list[int], label_key: bytes, seed: int) -> dict:
    """A batch dict like the real ones (bytes keys), with (N, 3072) uint8 rows."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    return {b"batch_label": b"fixture", label_key: labels, b"data": images,
            b"filenames": [b"img%d.png" % i for i in range(len(labels))]}


def write_cifar10(folder: Path, style: str = "4", per_batch: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        labels = [(i + j) % 10 for j in range(per_batch)]
        (folder / f"data_batch_{i}").write_bytes(cifar_pickle(cifar_batch(labels, b"labels", i), style))
    (folder / "test_batch").write_bytes(cifar_pickle(cifar_batch([7, 8, 9], b"labels", 0), style))


def write_cifar100(folder: Path, style: str = "4") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, labels in (("train", [0, 42, 99, 5, 17, 63]), ("test", [99, 1])):
        batch = cifar_batch(labels, b"fine_labels", len(labels))
        batch[b"coarse_labels"] = [label // 5 for label in labels]
        (folder / name).write_bytes(cifar_pickle(batch, style))
