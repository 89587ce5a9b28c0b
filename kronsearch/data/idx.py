"""IDX files (MNIST, Fashion-MNIST), gzipped or raw."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from kronsearch.data.splits import Arrays, DatasetError, check_images_labels, locate

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_SUFFIXES = ("", ".gz")  # raw preferred over gzipped when both exist


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (gzipped if its name ends in ``.gz``) into an array of its dims.

    Layout: 2 zero bytes, a dtype code, the number of dims, one big-endian uint32 per dim,
    then the big-endian data. Anything else raises DatasetError naming the file.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt gzip data ({exc})") from exc
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'none'})")
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: truncated or corrupt IDX data: dims {dims} need {expected} "
                           f"bytes, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def read_idx_dataset(folder: Path) -> Arrays:
    """The four MNIST-style IDX files in ``folder`` as (N, 1, H, W) images and labels."""
    train_x, train_y, test_x, test_y = (
        read_idx(locate(folder, name, IDX_SUFFIXES)) for name in IDX_FILES)
    check_images_labels(folder, "train", train_x, train_y, num_classes=10, image_ndim=3)
    check_images_labels(folder, "t10k", test_x, test_y, num_classes=10, image_ndim=3)
    return Arrays(train_x[:, None], train_y, test_x[:, None], test_y)

