"""Tests for kronsearch.data: splits, IDX and CIFAR readers, safe unpickling, synthetic teacher."""

from __future__ import annotations

import builtins
import gzip
import os
import pickle
import struct
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from kronsearch import data
from kronsearch.data import DATASETS, DatasetError, DatasetNotFoundError, find_root, folders, idx, load_dataset
from tests.datafiles import (
    IDX_CODES,
    IDX_FILES,
    cifar_batch,
    write_cifar10,
    write_cifar100,
    write_idx,
    write_idx_dataset,
)

SMALL_SYNTHETIC = {"n_train": 200, "n_test": 50}


def all_labels(splits: data.DataSplits, *names: str) -> list[int]:
    return sorted(label for name in names for label in getattr(splits, name).tensors[1].tolist())


@pytest.fixture
def no_default_dirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    """Point $KRONSEARCH_DATA and the system folder at empty tmp folders; returns both."""
    env, system = tmp_path / "env", tmp_path / "system"
    monkeypatch.setenv("KRONSEARCH_DATA", str(env))
    monkeypatch.setattr(folders, "SYSTEM_DATA_DIR", system)
    return env, system


# ---------------------------------------------------------------------------------------------
# Names and arguments


def test_unknown_dataset_error_lists_allowed_names() -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("imagenet")
    assert "imagenet" in str(err.value)
    assert all(name in str(err.value) for name in DATASETS)


def test_options_are_rejected_for_datasets_without_options() -> None:
    with pytest.raises(DatasetError, match="sparsity"):
        load_dataset("digits", sparsity=0.5)


@pytest.mark.parametrize("kwargs", [{"val_fraction": 1.0}, {"val_fraction": -0.1},
                                    {"limit": 0}, {"limit": 2.5}])
def test_bad_split_arguments_raise_dataset_error(kwargs: dict) -> None:
    with pytest.raises(DatasetError, match=next(iter(kwargs))):
        load_dataset("digits", **kwargs)


def test_built_in_datasets_have_no_data_folder() -> None:
    with pytest.raises(DatasetError, match="no data folder"):
        find_root("digits")


# ---------------------------------------------------------------------------------------------
# digits and the shared split/normalize logic


def digits_pixels(splits: data.DataSplits) -> list[torch.Tensor]:
    """Undo normalization: raw digits pixels are the integers 0..16 and both ends occur."""
    xs = [split.tensors[0] for split in (splits.train, splits.val, splits.test)]
    lo, hi = min(x.min() for x in xs), max(x.max() for x in xs)
    return [((x - lo) * 16 / (hi - lo)).round() for x in xs]


def example_counts(images: torch.Tensor, labels: torch.Tensor) -> Counter:
    return Counter(zip(map(tuple, images.flatten(1).int().tolist()), labels.tolist(), strict=True))


def test_digits_has_expected_shapes_and_classes() -> None:
    splits = load_dataset("digits")
    assert (splits.input_shape, splits.num_classes, splits.source) == ((1, 8, 8), 10, "scikit-learn bundled")
    for split in (splits.train, splits.val, splits.test):
        images, labels = split.tensors
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.shape[1:] == (1, 8, 8) and len(images) == len(labels)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1294, 144, 359)


def test_digits_splits_partition_the_dataset() -> None:
    splits = load_dataset("digits")
    pixels = digits_pixels(splits)
    labels = [split.tensors[1] for split in (splits.train, splits.val, splits.test)]
    combined = example_counts(torch.cat(pixels), torch.cat(labels))
    digits = load_digits()
    assert combined == example_counts(torch.tensor(digits.images), torch.tensor(digits.target))


def test_digits_test_split_is_the_same_for_every_seed() -> None:
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=7)
    assert torch.equal(digits_pixels(a)[2], digits_pixels(b)[2])
    assert torch.equal(a.test.tensors[1], b.test.tensors[1])


def test_val_split_is_deterministic_under_a_seed() -> None:
    a, b = load_dataset("digits", seed=3), load_dataset("digits", seed=3)
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])
    assert torch.equal(a.val.tensors[1], b.val.tensors[1])


def test_val_split_changes_with_the_seed() -> None:
    a, b = load_dataset("digits", seed=3), load_dataset("digits", seed=4)
    assert not torch.equal(digits_pixels(a)[1], digits_pixels(b)[1])


def test_train_split_is_normalized_per_channel() -> None:
    images = load_dataset("digits").train.tensors[0]
    assert images.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert images.std(correction=0).item() == pytest.approx(1.0, abs=1e-4)


def test_val_and_test_are_normalized_with_training_statistics(tmp_path: Path) -> None:
    raw = write_idx_dataset(tmp_path, gz=False)
    splits = load_dataset("mnist", tmp_path, val_fraction=0.0)
    train = raw[IDX_FILES[0]].astype(np.float64)
    expected = (raw[IDX_FILES[2]] - train.mean()) / train.std()
    test_images = splits.test.tensors[0][:, 0].double().numpy()
    order = np.argsort(splits.test.tensors[1].numpy(), kind="stable")  # labels are 0..9 here
    np.testing.assert_allclose(test_images[order], expected[np.argsort(raw[IDX_FILES[3]])], atol=1e-4)


def test_limit_caps_the_training_examples_only_and_keeps_the_test_set() -> None:
    whole = load_dataset("digits")
    splits = load_dataset("digits", limit=20)
    assert len(splits.train) == 20
    assert len(splits.val) == len(whole.val) == round(0.1 * (len(whole.train) + len(whole.val)))
    assert len(splits.test) == len(whole.test) == 359  # the whole test set: accuracies are on all of it
    assert torch.equal(splits.val.tensors[1], whole.val.tensors[1])  # carved from the pool before the limit


def test_test_limit_caps_the_test_set_on_fixed_examples() -> None:
    splits = load_dataset("digits", test_limit=30, seed=1)
    assert (len(splits.test), len(load_dataset("digits", test_limit=30, seed=2).test)) == (30, 30)
    assert torch.equal(splits.test.tensors[1], load_dataset("digits", test_limit=30, seed=2).test.tensors[1])


@settings(max_examples=25, deadline=None)
@given(limit=st.integers(1, 300), val_fraction=st.floats(0.0, 0.9))
def test_limited_splits_are_never_empty_and_never_too_big(limit: int, val_fraction: float) -> None:
    splits = load_dataset("synthetic", val_fraction=val_fraction, limit=limit, **SMALL_SYNTHETIC)
    assert 1 <= len(splits.train) <= limit
    assert len(splits.val) == (max(1, round(val_fraction * 200)) if val_fraction > 0 else 0)
    assert len(splits.test) == 50


# ---------------------------------------------------------------------------------------------
# IDX (mnist, fashion-mnist)


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(0, 4), min_size=1, max_size=3),
       dtype=st.sampled_from(list(IDX_CODES)), gz=st.booleans())
def test_read_idx_reads_back_any_array(tmp_path_factory: pytest.TempPathFactory,
                                       shape: list[int], dtype: type, gz: bool) -> None:
    array = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    path = tmp_path_factory.mktemp("idx") / ("a.idx" + (".gz" if gz else ""))
    np.testing.assert_array_equal(idx.read_idx(write_idx(path, array)), array)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_idx_dataset_loads_gzipped_or_raw(tmp_path: Path, name: str, gz: bool) -> None:
    raw = write_idx_dataset(tmp_path, gz=gz)
    splits = load_dataset(name, tmp_path)
    assert (splits.input_shape, splits.num_classes, splits.source) == ((1, 28, 28), 10, str(tmp_path))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (27, 3, 10)
    assert all_labels(splits, "train", "val") == sorted(raw[IDX_FILES[1]].tolist())
    assert all_labels(splits, "test") == sorted(raw[IDX_FILES[3]].tolist())


@pytest.mark.parametrize("layout", ["raw", "FashionMNIST/raw", "fashion-mnist"])
def test_idx_root_may_hold_the_files_in_a_usual_subfolder(tmp_path: Path, layout: str) -> None:
    write_idx_dataset(tmp_path / layout, gz=True)
    assert find_root("fashion-mnist", tmp_path) == tmp_path / layout


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_truncated_idx_file_raises_dataset_error_naming_the_file(tmp_path: Path, gz: bool) -> None:
    write_idx_dataset(tmp_path, gz=gz)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte") as err:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(err.value)


def test_idx_file_with_bad_magic_number_is_rejected(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, gz=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x12\x34" + path.read_bytes()[2:])
    with pytest.raises(DatasetError, match="magic number"):
        load_dataset("mnist", tmp_path)


def test_idx_images_and_labels_of_different_lengths_are_rejected(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DatasetError, match="do not match"):
        load_dataset("mnist", tmp_path)


def test_dataset_is_found_under_kronsearch_data(no_default_dirs: tuple[Path, Path]) -> None:
    env, _ = no_default_dirs
    write_idx_dataset(env / "fashion-mnist", gz=True)
    assert find_root("fashion-mnist") == env / "fashion-mnist"
    assert load_dataset("fashion-mnist", limit=5).source == str(env / "fashion-mnist")


def test_dataset_is_found_in_the_system_folder(no_default_dirs: tuple[Path, Path]) -> None:
    _, system = no_default_dirs
    write_idx_dataset(system / "fashion-mnist", gz=True)
    assert find_root("fashion-mnist") == system / "fashion-mnist"


@pytest.mark.parametrize(("name", "hint"), [
    ("fashion-mnist", "apt-get install dataset-fashion-mnist"),
    ("mnist", "http://yann.lecun.com/exdb/mnist/"),
    ("cifar10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    ("cifar100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
])
def test_missing_dataset_error_lists_every_place_looked_and_how_to_get_it(
        no_default_dirs: tuple[Path, Path], name: str, hint: str) -> None:
    env, system = no_default_dirs
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset(name)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert name in message and hint in message and "KRONSEARCH_DATA" in message
    for subdir in folders.FOLDERS[name].subdirs:
        assert str(env / subdir) in message and str(system / subdir) in message


def test_missing_dataset_under_explicit_root_lists_the_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        find_root("mnist", tmp_path)
    assert f"- {tmp_path}\n" in str(err.value) and str(tmp_path / "MNIST" / "raw") in str(err.value)


# ---------------------------------------------------------------------------------------------
# CIFAR


@pytest.mark.parametrize("style", ["numpy1", "4", "5"])
def test_cifar10_batches_load_with_shapes_and_labels(tmp_path: Path, style: str) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py", style)
    splits = load_dataset("cifar10", tmp_path)
    assert (splits.input_shape, splits.num_classes) == ((3, 32, 32), 10)
    assert splits.source == str(tmp_path / "cifar-10-batches-py")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 2, 3)
    assert splits.train.tensors[0].shape == (18, 3, 32, 32)
    assert all_labels(splits, "train", "val") == sorted((i + j) % 10 for i in range(1, 6) for j in range(4))
    assert all_labels(splits, "test") == [7, 8, 9]


def test_cifar_root_may_be_the_extracted_folder_itself(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    assert find_root("cifar10", tmp_path) == tmp_path


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    write_cifar100(tmp_path / "cifar-100-python", "numpy1")
    splits = load_dataset("cifar100", tmp_path, val_fraction=0.0)
    assert (splits.input_shape, splits.num_classes) == ((3, 32, 32), 100)
    assert splits.train.tensors[0].shape == (6, 3, 32, 32)
    assert all_labels(splits, "train") == [0, 5, 17, 42, 63, 99]
    assert all_labels(splits, "test") == [1, 99]


def test_cifar_rows_are_read_as_channel_planes(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    batch = cifar_batch([1, 2, 3], b"fine_labels", 0)
    batch[b"data"][:, 1024:] = 128  # only the first (red) plane varies
    (tmp_path / "train").write_bytes(pickle.dumps(batch))
    images = load_dataset("cifar100", tmp_path, val_fraction=0.0).train.tensors[0]
    assert images[:, 0].std().item() > 0.5
    assert images[:, 1:].abs().max().item() == 0.0


def test_cifar_labels_out_of_range_are_rejected(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(cifar_batch([3, 10], b"labels", 0)))
    with pytest.raises(DatasetError, match=r"labels must be in \[0, 10\)"):
        load_dataset("cifar10", tmp_path)


class RunsShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsPythonCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload", [RunsShellCommand, RunsPythonCode])
def test_malicious_pickle_is_rejected_without_running(tmp_path: Path, payload: type) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": payload(marker)}
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch))
    with pytest.raises(DatasetError, match="not allowed") as err:
        load_dataset("cifar10", tmp_path)
    assert "data_batch_1" in str(err.value)
    assert not marker.exists()


def test_truncated_pickle_raises_dataset_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "data_batch_3"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


# ---------------------------------------------------------------------------------------------
# synthetic


def teacher_blocks(teacher: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """(rows, cols, h, w) view of the teacher's (h, w) blocks."""
    h, w = block
    rows, cols = teacher.shape[0] // h, teacher.shape[1] // w
    return teacher.reshape(rows, h, cols, w).permute(0, 2, 1, 3)


def test_synthetic_is_deterministic_under_a_seed() -> None:
    a, b = (load_dataset("synthetic", seed=5, **SMALL_SYNTHETIC) for _ in range(2))
    c = load_dataset("synthetic", seed=6, **SMALL_SYNTHETIC)
    assert torch.equal(a.teacher, b.teacher) and not torch.equal(a.teacher, c.teacher)
    for split in ("train", "val", "test"):
        for x, y in zip(getattr(a, split).tensors, getattr(b, split).tensors, strict=True):
            assert torch.equal(x, y)


def test_synthetic_has_expected_shapes() -> None:
    splits = load_dataset("synthetic", in_features=32, num_classes=8, block=(2, 4), **SMALL_SYNTHETIC)
    assert (splits.input_shape, splits.num_classes, splits.source) == ((1, 1, 32), 8, "synthetic")
    assert splits.teacher.shape == (8, 32)
    assert splits.train.tensors[0].shape == (180, 1, 1, 32)
    assert len(splits.test) == 50


@pytest.mark.parametrize(("block", "sparsity"), [((4, 4), 0.5), ((2, 8), 0.75), ((1, 1), 0.3), ((16, 4), 0.9)])
def test_synthetic_teacher_has_planted_zero_blocks(block: tuple[int, int], sparsity: float) -> None:
    splits = load_dataset("synthetic", block=block, sparsity=sparsity, **SMALL_SYNTHETIC)
    blocks = teacher_blocks(splits.teacher, block)
    zero = (blocks == 0).all(dim=(2, 3))
    assert int(zero.sum()) == round(sparsity * zero.numel())
    assert bool((blocks[~zero] != 0).all())  # every other block is fully dense
    assert bool((~zero).any(dim=1).all())  # every block row keeps a nonzero block


def test_synthetic_teacher_is_a_rank_one_kronecker_product() -> None:
    block = (4, 4)
    teacher = load_dataset("synthetic", block=block, **SMALL_SYNTHETIC).teacher
    rearranged = teacher_blocks(teacher, block).flatten(2).flatten(0, 1)  # one block per row
    assert torch.linalg.matrix_rank(rearranged).item() == 1


def test_synthetic_labels_are_teacher_argmax() -> None:
    splits = load_dataset("synthetic", **SMALL_SYNTHETIC)
    for split in (splits.train, splits.val, splits.test):
        images, labels = split.tensors
        assert torch.equal((images.flatten(1) @ splits.teacher.T).argmax(dim=1), labels)


def test_synthetic_noise_perturbs_labels() -> None:
    splits = load_dataset("synthetic", noise=5.0, **SMALL_SYNTHETIC)
    images, labels = splits.train.tensors
    assert not torch.equal((images.flatten(1) @ splits.teacher.T).argmax(dim=1), labels)


def test_synthetic_block_must_divide_the_shape() -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("synthetic", num_classes=16, in_features=64, block=(3, 4))
    assert "[1, 2, 4, 8, 16]" in str(err.value)
    assert "[1, 2, 4, 8, 16, 32, 64]" in str(err.value)


def test_synthetic_sparsity_must_leave_a_nonzero_block_per_row() -> None:
    with pytest.raises(DatasetError, match="sparsity"):
        load_dataset("synthetic", num_classes=4, in_features=8, block=(1, 4), sparsity=0.6)


def test_synthetic_unknown_option_lists_allowed_options() -> None:
    with pytest.raises(DatasetError, match="in_features.*num_classes.*block.*sparsity"):
        load_dataset("synthetic", width=3)


def idx_bomb(path: Path, images: int) -> Path:
    """A gzipped IDX images file whose header claims `images` 28x28 images, its body 16 MB of zeros (16 KB gzipped)."""
    header = struct.pack(">BBBBIII", 0, 0, 0x08, 3, images, 28, 28)
    with gzip.open(path, "wb") as file:
        file.write(header)
        for _ in range(16):
            file.write(bytes(1 << 20))
    return path


def test_an_idx_header_claiming_more_than_the_limit_is_refused_before_its_body_is_decompressed(tmp_path: Path) -> None:
    path = idx_bomb(tmp_path / "train-images-idx3-ubyte.gz", 2_000_000)
    with mock.patch.object(gzip.GzipFile, "readinto", side_effect=AssertionError("the body was read")):
        with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz: its header claims dims "
                                               r"\(2000000, 28, 28\) of uint8, 1,568,000,000 bytes of data; an IDX "
                                               r"file may hold at most 1,073,741,824 bytes"):
            idx.read_idx(path)


def test_idx_images_and_labels_whose_headers_disagree_are_refused_before_any_body_is_read(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, gz=True)
    idx_bomb(tmp_path / "train-images-idx3-ubyte.gz", 1_000_000)  # 784 MB claimed: under the limit
    with mock.patch.object(gzip.GzipFile, "readinto", side_effect=AssertionError("a body was read")):
        with pytest.raises(DatasetError, match="by their headers train-images-idx3-ubyte.gz holds 1,000,000 images and "
                                               "train-labels-idx1-ubyte.gz 30 labels: they do not match"):
            load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_an_idx_body_longer_than_its_header_says_is_refused(tmp_path: Path, gz: bool) -> None:
    path = write_idx(tmp_path / ("a" + (".gz" if gz else "")), np.zeros((3, 2), dtype=np.uint8))
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    path.write_bytes(gzip.compress(raw + b"\0") if gz else raw + b"\0")
    with pytest.raises(DatasetError, match=r"dims \(3, 2\) need 6 bytes, found more"):
        idx.read_idx(path)


def test_idx_labels_of_a_float_type_are_refused_not_truncated(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", (np.arange(30) % 10 + 0.5).astype(np.float32))
    with pytest.raises(DatasetError, match="train labels are float32; they must be integer class indices"):
        load_dataset("mnist", tmp_path)
