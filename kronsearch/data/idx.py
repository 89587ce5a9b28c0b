"""IDX files (MNIST, Fashion-MNIST), gzipped or raw."""

from __future__ import annotations

import gzip
import io
import math
import zlib
from pathlib import Path

import numpy as np

from kronsearch.data.splits import Arrays, DatasetError, check_images_labels, locate

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_SUFFIXES = ("", ".gz")  # raw preferred over gzipped when both exist


MAX_IDX_BYTES = 1 << 30
"""The data one IDX file may claim in its header (1 GiB): EMNIST's largest file (byclass, 697,932 28x28 images)
holds 547 MB, MNIST's 47 MB. Checked before the body is read, so a gzip bomb is never decompressed."""
CHUNK_BYTES = 1 << 20  # the body is decompressed (or read) this much at a time into its array's buffer


def idx_header(path: Path, file: io.BufferedIOBase) -> tuple[tuple[int, ...], np.dtype]:
    """(dims, dtype) from the header at the start of `file`, its claimed size checked against MAX_IDX_BYTES.

    Layout: 2 zero bytes, a dtype code, the number of dims, one big-endian uint32 per dim, then the
    big-endian data. Anything else raises DatasetError naming the file."""
    magic = file.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {magic.hex() or 'none'})")
    ndim = magic[3]
    raw_dims = file.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    claimed = math.prod(dims) * dtype.itemsize
    if claimed > MAX_IDX_BYTES:
        raise DatasetError(f"{path}: its header claims dims {dims} of {dtype.name}, {claimed:,} bytes of data; an "
                           f"IDX file may hold at most {MAX_IDX_BYTES:,} bytes")
    return dims, dtype


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (gzipped if its name ends in ``.gz``) into an array of its dims.

    The header is read first (idx_header: its claimed size bounded), then exactly that many bytes of body,
    CHUNK_BYTES at a time; a body shorter or longer than the header says raises DatasetError."""
    try:
        with _open(path) as file:
            dims, dtype = idx_header(path, file)
            expected = math.prod(dims) * dtype.itemsize
            body, found = bytearray(expected), 0
            view = memoryview(body)
            while found < expected and (count := file.readinto(view[found:found + CHUNK_BYTES])):
                found += count
            more = found == expected and len(file.read(1)) > 0
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt gzip data ({exc})") from exc
    if found != expected or more:
        raise DatasetError(f"{path}: truncated or corrupt IDX data: dims {dims} need {expected} "
                           f"bytes, found {'more' if more else found}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def read_idx_dims(path: Path) -> tuple[int, ...]:
    """The dims an IDX file's header gives (idx_header), its body unread."""
    try:
        with _open(path) as file:
            return idx_header(path, file)[0]
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt gzip data ({exc})") from exc


def read_idx_dataset(folder: Path) -> Arrays:
    """The four MNIST-style IDX files in ``folder`` as (N, 1, H, W) images and labels.

    Every header is read before any body: images and labels whose counts differ are refused unread."""
    paths = [locate(folder, name, IDX_SUFFIXES) for name in IDX_FILES]
    for images, labels in (paths[:2], paths[2:]):
        counts = [dims[0] if dims else 0 for dims in (read_idx_dims(images), read_idx_dims(labels))]
        if counts[0] != counts[1]:
            raise DatasetError(f"{folder}: by their headers {images.name} holds {counts[0]:,} images and "
                               f"{labels.name} {counts[1]:,} labels: they do not match")
    train_x, train_y, test_x, test_y = (read_idx(path) for path in paths)
    check_images_labels(folder, "train", train_x, train_y, num_classes=10, image_ndim=3)
    check_images_labels(folder, "t10k", test_x, test_y, num_classes=10, image_ndim=3)
    return Arrays(train_x[:, None], train_y, test_x[:, None], test_y)

