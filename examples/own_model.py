"""Your own network and your own data, as a space file reaches them by reference.

search_spaces/own_model.yaml points at the two factories below:

    model: {factory: "examples.own_model:small_mlp", options: {hidden: 64}}
    data:  {factory: "examples.own_model:noisy_digits", options: {noise: 0.1}}

A model factory is called with input_shape=(C, H, W), num_classes and the options, and returns an
nn.Module whose nn.Linear layers kronsearch may decompose (named by model.include/exclude globs).
A data factory is called with the options and returns train, val and test (any torch Datasets of
(image, label) pairs; transforms and augmentation run inside them), input_shape and num_classes.
The module must be importable from the folder you run kronsearch in (or installed).
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset


def small_mlp(input_shape: tuple[int, int, int], num_classes: int, hidden: int = 64) -> nn.Module:
    """Flatten -> Linear(C*H*W, hidden) -> GELU -> Linear(hidden, hidden) -> GELU -> Linear(hidden, classes)."""
    features = input_shape[0] * input_shape[1] * input_shape[2]
    return nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Linear(hidden, num_classes))


class NoisyImages(Dataset):
    """(image, label) pairs with Gaussian noise added on every read when `noise` > 0 (an augmentation)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, noise: float = 0.0) -> None:
        self.images, self.labels, self.noise = images, labels, noise

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.noise > 0:
            image = image + self.noise * torch.randn_like(image)
        return image, int(self.labels[index])


def noisy_digits(noise: float = 0.1, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """scikit-learn's digits as (1, 8, 8) images scaled to [0, 1]; noise augments the training split only."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = n_val = int(val_fraction * len(labels))
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return {"train": NoisyImages(images[train], labels[train], noise),
            "val": NoisyImages(images[val], labels[val]), "test": NoisyImages(images[test], labels[test]),
            "input_shape": (1, 8, 8), "num_classes": 10}
