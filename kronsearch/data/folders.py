"""File-based datasets: where their folders are looked for, and which reader each uses.

Data folders are looked up in ``root`` if given, else under ``$KRONSEARCH_DATA`` and
``/usr/share/datasets`` (where Debian's ``dataset-fashion-mnist`` package installs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kronsearch.data.cifar import CIFAR10_TRAIN, read_cifar10, read_cifar100
from kronsearch.data.idx import IDX_FILES, IDX_SUFFIXES, read_idx_dataset
from kronsearch.data.splits import Arrays, DatasetError, DatasetNotFoundError, check_name, locate

ENV_VAR = "KRONSEARCH_DATA"
SYSTEM_DATA_DIR = Path("/usr/share/datasets")


def find_root(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder holding ``name``'s files, or raise DatasetNotFoundError.

    With ``root``: ``root`` itself, ``root/raw`` (IDX datasets) and the dataset's usual
    subfolders under ``root`` (e.g. ``fashion-mnist``, torchvision's ``FashionMNIST/raw``,
    ``cifar-10-batches-py``). Without: those subfolders under ``$KRONSEARCH_DATA`` and
    ``/usr/share/datasets``.
    """
    check_name(name)
    if name not in FOLDERS:
        raise DatasetError(f"dataset {name!r} has no data folder (it is built in); datasets "
                           f"read from folders: {', '.join(FOLDERS)}")
    spec = FOLDERS[name]
    candidates = candidate_dirs(spec, root)
    for folder in candidates:
        if all(locate(folder, file, spec.suffixes).is_file() for file in spec.files):
            return folder
    looked = "\n".join(f"  - {folder}" for folder in candidates)
    wanted = ", ".join(file + ("[.gz]" if ".gz" in spec.suffixes else "") for file in spec.files)
    raise DatasetNotFoundError(
        f"dataset {name!r} not found. Looked for {wanted} in:\n{looked}\n"
        f"To get it: {spec.how_to_get}, then set data.root in the space file to that folder "
        f"(root= in kronsearch.data.load_dataset) or put it at ${ENV_VAR}/{name}. "
        f"Nothing is ever downloaded automatically."
    )


@dataclass(frozen=True)
class FolderSpec:
    """Where a file-based dataset lives, which files it needs, and how to read them."""

    files: tuple[str, ...]  # required file names
    suffixes: tuple[str, ...]  # each file may exist as name + suffix, tried in this order
    direct: tuple[str, ...]  # folders under an explicit root that may hold the files
    subdirs: tuple[str, ...]  # folders under any data root (explicit, $KRONSEARCH_DATA, system)
    input_shape: tuple[int, int, int]
    num_classes: int
    how_to_get: str
    read: Callable[[Path], Arrays]


def candidate_dirs(spec: FolderSpec, root: str | os.PathLike[str] | None) -> list[Path]:
    """Folders to look in, in order; see :func:`find_root`."""
    if root is not None:
        base = Path(root).expanduser()
        return [base / sub if sub != "." else base for sub in (*spec.direct, *spec.subdirs)]
    env = os.environ.get(ENV_VAR)
    bases = ([Path(env).expanduser()] if env else []) + [SYSTEM_DATA_DIR]
    return [base / sub for base in bases for sub in spec.subdirs]



_IDX_HOW_TO = ("download the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
               "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from {url} into a folder")
_CIFAR_HOW_TO = "download {url} and extract it (tar xzf) into a folder"

FOLDERS: dict[str, FolderSpec] = {
    "fashion-mnist": FolderSpec(
        files=IDX_FILES, suffixes=IDX_SUFFIXES, direct=(".", "raw"),
        subdirs=("fashion-mnist", "fashion-mnist/raw", "FashionMNIST/raw"), input_shape=(1, 28, 28), num_classes=10,
        how_to_get="apt-get install dataset-fashion-mnist (installs "
        "/usr/share/datasets/fashion-mnist, found without any root), or "
        + _IDX_HOW_TO.format(url="https://github.com/zalandoresearch/fashion-mnist"),
        read=read_idx_dataset),
    "mnist": FolderSpec(
        files=IDX_FILES, suffixes=IDX_SUFFIXES, direct=(".", "raw"),
        subdirs=("mnist", "mnist/raw", "MNIST/raw"), input_shape=(1, 28, 28), num_classes=10,
        how_to_get=_IDX_HOW_TO.format(url="http://yann.lecun.com/exdb/mnist/"),
        read=read_idx_dataset),
    "cifar10": FolderSpec(
        files=(*CIFAR10_TRAIN, "test_batch"), suffixes=("",), direct=(".",),
        subdirs=("cifar-10-batches-py", "cifar10", "cifar10/cifar-10-batches-py"),
        input_shape=(3, 32, 32), num_classes=10,
        how_to_get=_CIFAR_HOW_TO.format(url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
        read=read_cifar10),
    "cifar100": FolderSpec(
        files=("train", "test"), suffixes=("",), direct=(".",),
        subdirs=("cifar-100-python", "cifar100", "cifar100/cifar-100-python"),
        input_shape=(3, 32, 32), num_classes=100,
        how_to_get=_CIFAR_HOW_TO.format(url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
        read=read_cifar100),
}


# ---------------------------------------------------------------------------------------------
# synthetic
