"""Batches of one split, for training (shuffled, seeded) and evaluation (in order).

In-memory TensorDatasets (every built-in dataset) are moved to the device once and indexed there:
the fast path, measured against a DataLoader over the same tensors in docs/benchmarks/speed.md (table 7).
Any other torch Dataset (a data factory's, with its transforms and augmentation) goes through a
torch DataLoader with `workers` worker processes; its items are (image, label) pairs.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset


class Batches:
    """(images, labels) batches of `dataset` on `device`."""

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device | str, workers: int = 0) -> None:
        self.dataset, self.batch_size, self.device, self.workers = dataset, batch_size, device, workers
        self.tensors = tuple(t.to(device) for t in dataset.tensors) if isinstance(dataset, TensorDataset) else None

    def __len__(self) -> int:
        """Examples in the split."""
        return len(self.dataset)  # type: ignore[arg-type]  # a map-style Dataset (checked where it is made)

    def shuffled(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch in an order drawn from `generator` (so a seeded run repeats)."""
        if self.tensors is not None:
            x, y = self.tensors
            order = torch.randperm(len(y), generator=generator).to(self.device)
            for i in range(0, len(order), self.batch_size):
                batch = order[i:i + self.batch_size]
                yield x[batch], y[batch]
            return
        yield from self._loaded(DataLoader(self.dataset, self.batch_size, shuffle=True, generator=generator,
                                           num_workers=self.workers))

    def ordered(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The split in its own order (for evaluation)."""
        if self.tensors is not None:
            x, y = self.tensors
            for i in range(0, len(y), self.batch_size):
                yield x[i:i + self.batch_size], y[i:i + self.batch_size]
            return
        yield from self._loaded(DataLoader(self.dataset, self.batch_size, shuffle=False, num_workers=self.workers))

    def _loaded(self, loader: DataLoader) -> Iterator[tuple[Tensor, Tensor]]:
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True)
            yield (images if images.is_floating_point() else images.float(),
                   torch.as_tensor(labels).to(self.device, torch.int64, non_blocking=True))
