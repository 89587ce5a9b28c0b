"""Datasets as normalized train/val/test tensors, from local files only (never a download).

``load_dataset(name, root)`` returns a :class:`DataSplits` whose splits are
``TensorDataset(images, labels)`` with images ``float32 (N, C, H, W)`` and labels
``int64 (N,)``.

* ``digits``: scikit-learn's bundled 8x8 digits. It has no official test split, so a fixed
  20% test set is split off with seed 0 (independent of ``seed``): the test set never changes.
* ``fashion-mnist`` / ``mnist``: the four standard IDX files, gzipped or raw.
* ``cifar10`` / ``cifar100``: the python-version pickle batches, read with an unpickler that
  only allows plain containers and numpy arrays, so a crafted file cannot run code.
* ``synthetic``: a teacher-student task whose teacher ``W = (S * A) ⊗ B`` has planted
  block sparsity (see :func:`_synthetic_teacher`).

Splits: the validation split is carved from the training set with ``seed``; the test set is
the dataset's own and is only for final reporting. Images are normalized per channel to
zero mean and unit variance with statistics of the (final) training split only, so nothing
about val/test leaks into training. Synthetic features are already standard normal and are
kept as generated, so ``labels == argmax(x @ teacher.T)`` holds on the returned tensors.

Data folders are looked up in ``root`` if given, else under ``$KRONSEARCH_DATA`` and
``/usr/share/datasets`` (where Debian's ``dataset-fashion-mnist`` package installs).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from kronsearch.layers.blocks import divisors

DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "synthetic")
ENV_VAR = "KRONSEARCH_DATA"
SYSTEM_DATA_DIR = Path("/usr/share/datasets")
DIGITS_TEST_FRACTION = 0.2
FIXED_TEST_SEED = 0


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the folders looked at."""


class DatasetError(ValueError):
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
class _Arrays:
    """A dataset as loaded: images (N, C, H, W) of any numeric dtype, integer labels (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


# ---------------------------------------------------------------------------------------------
# Public entry points


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    **options: Any,
) -> DataSplits:
    """Load ``name`` as normalized train/val/test splits.

    ``root`` is the data folder for file-based datasets (ignored by ``digits`` and
    ``synthetic``). ``val_fraction`` of the training set becomes the validation split,
    chosen with ``seed``. ``limit`` keeps at most that many training examples and at most
    ``max(1, limit // 5)`` validation and test examples, for tiny smoke runs. ``options``
    are only accepted by ``synthetic``: in_features=64, num_classes=16, block=(4, 4),
    sparsity=0.5, n_train=4000, n_test=1000, noise=0.0 (see :func:`_synthetic_teacher`).
    """
    _check_name(name)
    _check_split_args(val_fraction, limit)
    if name == "synthetic":
        teacher, arrays = _synthetic_arrays(seed, **options)
        return _make_splits(name, "synthetic", arrays, int(teacher.shape[0]), val_fraction, seed,
                            limit, normalize=False, teacher=teacher)
    if options:
        raise DatasetError(f"dataset {name!r} takes no options, got {sorted(options)}; "
                           "only 'synthetic' accepts options")
    if name == "digits":
        return _make_splits(name, "scikit-learn bundled", _digits_arrays(), 10, val_fraction,
                            seed, limit)
    spec = _FOLDERS[name]
    folder = find_root(name, root)
    return _make_splits(name, str(folder), spec.read(folder), spec.num_classes, val_fraction,
                        seed, limit)


def dataset_shape(name: str, **options: Any) -> tuple[tuple[int, int, int], int]:
    """(input_shape (C, H, W), num_classes) of a dataset, without reading it."""
    _check_name(name)
    if name == "synthetic":
        opts = _synthetic_options(options)
        return (1, 1, opts["in_features"]), opts["num_classes"]
    if name == "digits":
        return (1, 8, 8), 10
    return _FOLDERS[name].input_shape, _FOLDERS[name].num_classes


def find_root(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder holding ``name``'s files, or raise DatasetNotFoundError.

    With ``root``: ``root`` itself, ``root/raw`` (IDX datasets) and the dataset's usual
    subfolders under ``root`` (e.g. ``fashion-mnist``, torchvision's ``FashionMNIST/raw``,
    ``cifar-10-batches-py``). Without: those subfolders under ``$KRONSEARCH_DATA`` and
    ``/usr/share/datasets``.
    """
    _check_name(name)
    if name not in _FOLDERS:
        raise DatasetError(f"dataset {name!r} has no data folder (it is built in); datasets "
                           f"read from folders: {', '.join(_FOLDERS)}")
    spec = _FOLDERS[name]
    candidates = _candidate_dirs(spec, root)
    for folder in candidates:
        if all(_locate(folder, file, spec.suffixes).is_file() for file in spec.files):
            return folder
    looked = "\n".join(f"  - {folder}" for folder in candidates)
    wanted = ", ".join(file + ("[.gz]" if ".gz" in spec.suffixes else "") for file in spec.files)
    raise DatasetNotFoundError(
        f"dataset {name!r} not found. Looked for {wanted} in:\n{looked}\n"
        f"To get it: {spec.how_to_get}, then set data.root in the space file to that folder "
        f"(root= in kronsearch.data.load_dataset) or put it at ${ENV_VAR}/{name}. "
        f"Nothing is ever downloaded automatically."
    )


# ---------------------------------------------------------------------------------------------
# Argument checks and splitting


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def _check_split_args(val_fraction: float, limit: int | None) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"limit must be a positive integer or None, got {limit!r}")


def _permutation(n: int, seed: int) -> torch.Tensor:
    """A deterministic permutation of ``range(n)`` for ``seed``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _make_splits(
    name: str,
    source: str,
    arrays: _Arrays,
    num_classes: int,
    val_fraction: float,
    seed: int,
    limit: int | None,
    *,
    normalize: bool = True,
    teacher: torch.Tensor | None = None,
) -> DataSplits:
    """Carve val from train with ``seed``, apply ``limit``, normalize, wrap as DataSplits.

    The test subset under ``limit`` uses a fixed seed so every run is scored on the same
    examples.
    """
    train_x, train_y = _as_tensors(arrays.train_images, arrays.train_labels)
    test_x, test_y = _as_tensors(arrays.test_images, arrays.test_labels)
    n = len(train_y)
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    n_test = len(test_y)
    if limit is not None:
        small = max(1, limit // 5)
        n_val, n_test = min(n_val, small), min(n_test, small)
    if n - n_val < 1:
        raise DatasetError(f"val_fraction={val_fraction} leaves no training examples out of {n}")
    order = _permutation(n, seed)
    val_idx, train_idx = order[:n_val], order[n_val:][:limit]
    test_idx = _permutation(len(test_y), FIXED_TEST_SEED)[:n_test]
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
# digits


def _digits_arrays() -> _Arrays:
    """scikit-learn digits with a fixed 20% test split (seed 0, whatever the run's seed)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images[:, None], digits.target
    order = _permutation(len(labels), FIXED_TEST_SEED).numpy()
    n_test = round(DIGITS_TEST_FRACTION * len(labels))
    test, train = order[:n_test], order[n_test:]
    return _Arrays(images[train], labels[train], images[test], labels[test])


# ---------------------------------------------------------------------------------------------
# Folder-based datasets


@dataclass(frozen=True)
class _FolderSpec:
    """Where a file-based dataset lives, which files it needs, and how to read them."""

    files: tuple[str, ...]  # required file names
    suffixes: tuple[str, ...]  # each file may exist as name + suffix, tried in this order
    direct: tuple[str, ...]  # folders under an explicit root that may hold the files
    subdirs: tuple[str, ...]  # folders under any data root (explicit, $KRONSEARCH_DATA, system)
    input_shape: tuple[int, int, int]
    num_classes: int
    how_to_get: str
    read: Callable[[Path], _Arrays]


def _candidate_dirs(spec: _FolderSpec, root: str | os.PathLike[str] | None) -> list[Path]:
    """Folders to look in, in order; see :func:`find_root`."""
    if root is not None:
        base = Path(root).expanduser()
        return [base / sub if sub != "." else base for sub in (*spec.direct, *spec.subdirs)]
    env = os.environ.get(ENV_VAR)
    bases = ([Path(env).expanduser()] if env else []) + [SYSTEM_DATA_DIR]
    return [base / sub for base in bases for sub in spec.subdirs]


def _locate(folder: Path, name: str, suffixes: Sequence[str]) -> Path:
    """``folder/name+suffix`` for the first suffix whose file exists, else ``folder/name``."""
    paths = [folder / (name + suffix) for suffix in suffixes]
    return next((path for path in paths if path.is_file()), folder / name)


# IDX (MNIST, Fashion-MNIST) ------------------------------------------------------------------

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_SUFFIXES = ("", ".gz")  # raw preferred over gzipped when both exist


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


def _read_idx_dataset(folder: Path) -> _Arrays:
    """The four MNIST-style IDX files in ``folder`` as (N, 1, H, W) images and labels."""
    train_x, train_y, test_x, test_y = (
        read_idx(_locate(folder, name, _IDX_SUFFIXES)) for name in _IDX_FILES)
    _check_images_labels(folder, "train", train_x, train_y, num_classes=10, image_ndim=3)
    _check_images_labels(folder, "t10k", test_x, test_y, num_classes=10, image_ndim=3)
    return _Arrays(train_x[:, None], train_y, test_x[:, None], test_y)


def _check_images_labels(folder: Path, part: str, images: np.ndarray, labels: np.ndarray, *,
                         num_classes: int, image_ndim: int) -> None:
    """Raise DatasetError unless images have ``image_ndim`` dims and match valid labels."""
    where = f"{folder}: {part}"
    if images.ndim != image_ndim or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{where} images of shape {images.shape} do not match labels of "
                           f"shape {labels.shape}")
    if len(labels) and not (labels.min() >= 0 and labels.max() < num_classes):
        raise DatasetError(f"{where} labels must be in [0, {num_classes}), found "
                           f"[{labels.min()}, {labels.max()}]")


# CIFAR python pickles -------------------------------------------------------------------------


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
        _check_images_labels(folder, name, data, batch_labels, num_classes=num_classes,
                             image_ndim=2)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def _read_cifar10(folder: Path) -> _Arrays:
    return _Arrays(*_read_cifar_batches(folder, _CIFAR10_TRAIN, "labels", 10),
                   *_read_cifar_batches(folder, ("test_batch",), "labels", 10))


def _read_cifar100(folder: Path) -> _Arrays:
    return _Arrays(*_read_cifar_batches(folder, ("train",), "fine_labels", 100),
                   *_read_cifar_batches(folder, ("test",), "fine_labels", 100))


_IDX_HOW_TO = ("download the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
               "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from {url} into a folder")
_CIFAR_HOW_TO = "download {url} and extract it (tar xzf) into a folder"

_FOLDERS: dict[str, _FolderSpec] = {
    "fashion-mnist": _FolderSpec(
        files=_IDX_FILES, suffixes=_IDX_SUFFIXES, direct=(".", "raw"),
        subdirs=("fashion-mnist", "fashion-mnist/raw", "FashionMNIST/raw"), input_shape=(1, 28, 28), num_classes=10,
        how_to_get="apt-get install dataset-fashion-mnist (installs "
        "/usr/share/datasets/fashion-mnist, found without any root), or "
        + _IDX_HOW_TO.format(url="https://github.com/zalandoresearch/fashion-mnist"),
        read=_read_idx_dataset),
    "mnist": _FolderSpec(
        files=_IDX_FILES, suffixes=_IDX_SUFFIXES, direct=(".", "raw"),
        subdirs=("mnist", "mnist/raw", "MNIST/raw"), input_shape=(1, 28, 28), num_classes=10,
        how_to_get=_IDX_HOW_TO.format(url="http://yann.lecun.com/exdb/mnist/"),
        read=_read_idx_dataset),
    "cifar10": _FolderSpec(
        files=(*_CIFAR10_TRAIN, "test_batch"), suffixes=("",), direct=(".",),
        subdirs=("cifar-10-batches-py", "cifar10", "cifar10/cifar-10-batches-py"),
        input_shape=(3, 32, 32), num_classes=10,
        how_to_get=_CIFAR_HOW_TO.format(url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
        read=_read_cifar10),
    "cifar100": _FolderSpec(
        files=("train", "test"), suffixes=("",), direct=(".",),
        subdirs=("cifar-100-python", "cifar100", "cifar100/cifar-100-python"),
        input_shape=(3, 32, 32), num_classes=100,
        how_to_get=_CIFAR_HOW_TO.format(url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
        read=_read_cifar100),
}


# ---------------------------------------------------------------------------------------------
# synthetic


_SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "in_features": 64, "num_classes": 16, "block": (4, 4), "sparsity": 0.5,
    "n_train": 4000, "n_test": 1000, "noise": 0.0,
}


def _synthetic_teacher(num_classes: int, in_features: int, block: tuple[int, int],
                      sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """Teacher weight ``W = (S * A) ⊗ B`` of shape (num_classes, in_features).

    ``S`` is a 0/1 mask of shape (num_classes / h, in_features / w) with exactly
    ``round(sparsity * S.numel())`` zeros and at least one nonzero per row, ``A`` and the
    (h, w) block ``B`` are standard normal: ``W`` is zero exactly on the masked blocks.
    """
    h, w = block
    rows, cols = num_classes // h, in_features // w
    zeros = round(sparsity * rows * cols)
    if zeros > rows * (cols - 1):
        raise DatasetError(f"sparsity={sparsity} would zero a whole row of the {rows}x{cols} "
                           f"block grid; at most {rows * (cols - 1)} of {rows * cols} blocks "
                           "can be zero")
    keep = torch.randint(cols, (rows,), generator=generator)  # one guaranteed nonzero per row
    mask = torch.ones(rows, cols)
    others = (torch.arange(cols) != keep[:, None]).flatten().nonzero().squeeze(1)
    chosen = others[torch.randperm(len(others), generator=generator)[:zeros]]
    mask.view(-1)[chosen] = 0.0
    a = torch.randn(rows, cols, generator=generator)
    b = torch.randn(h, w, generator=generator)
    return torch.kron(mask * a, b)


def _synthetic_options(options: dict[str, Any]) -> dict[str, Any]:
    """Defaults merged with ``options``, validated; block divisibility errors list divisors."""
    unknown = set(options) - set(_SYNTHETIC_DEFAULTS)
    if unknown:
        raise DatasetError(f"unknown synthetic option(s) {sorted(unknown)}; allowed: "
                           f"{', '.join(_SYNTHETIC_DEFAULTS)}")
    opts = {**_SYNTHETIC_DEFAULTS, **options}
    for key in ("in_features", "num_classes", "n_train", "n_test"):
        if isinstance(opts[key], bool) or not isinstance(opts[key], int) or opts[key] < 1:
            raise DatasetError(f"synthetic {key} must be a positive integer, got {opts[key]!r}")
    block = opts["block"]
    if (not isinstance(block, Sequence) or len(block) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in block)):
        raise DatasetError(f"synthetic block must be two positive integers (h, w), got {block!r}")
    opts["block"] = h, w = tuple(block)
    n, m = opts["num_classes"], opts["in_features"]
    if n % h or m % w:
        raise DatasetError(
            f"block {(h, w)} must divide (num_classes, in_features) = {(n, m)}; allowed block "
            f"heights: {divisors(n)}, allowed block widths: {divisors(m)}")
    if not 0.0 <= opts["sparsity"] < 1.0:
        raise DatasetError(f"synthetic sparsity must be in [0, 1), got {opts['sparsity']!r}")
    if not opts["noise"] >= 0.0:
        raise DatasetError(f"synthetic noise must be >= 0, got {opts['noise']!r}")
    return opts


def _synthetic_arrays(seed: int, **options: Any) -> tuple[torch.Tensor, _Arrays]:
    """Teacher and data: x ~ N(0, I) of shape (N, 1, 1, in_features), y = argmax(W x + noise).

    Everything is drawn from one generator seeded with ``seed``.
    """
    opts = _synthetic_options(options)
    generator = torch.Generator().manual_seed(seed)
    teacher = _synthetic_teacher(opts["num_classes"], opts["in_features"], opts["block"],
                                opts["sparsity"], generator)
    n = opts["n_train"] + opts["n_test"]
    x = torch.randn(n, opts["in_features"], generator=generator)
    logits = x @ teacher.T
    if opts["noise"] > 0:
        logits = logits + opts["noise"] * torch.randn(logits.shape, generator=generator)
    images, labels = x.reshape(n, 1, 1, -1).numpy(), logits.argmax(dim=1).numpy()
    cut = opts["n_train"]
    return teacher, _Arrays(images[:cut], labels[:cut], images[cut:], labels[cut:])
