"""Datasets as normalized train/val/test tensors, from local files only (never a download).

``load_dataset(name, root)`` returns a :class:`DataSplits` whose splits are
``TensorDataset(images, labels)`` with images ``float32 (N, C, H, W)`` and labels
``int64 (N,)``. One module per concern:

* ``splits``: names, errors, DataSplits, and carving val/test with a seed (normalized with the
  training split's statistics only);
* ``datasets``: the registry (load_dataset, dataset_shape) and ``digits``, scikit-learn's bundled
  8x8 digits with a fixed 20% test set (seed 0, whatever the run's seed);
* ``folders``: where file-based datasets are looked for (root, ``$KRONSEARCH_DATA``,
  ``/usr/share/datasets``);
* ``idx``: ``fashion-mnist`` / ``mnist``, the four standard IDX files, gzipped or raw;
* ``cifar``: ``cifar10`` / ``cifar100``, the python-version pickles through a restricted unpickler;
* ``synthetic``: a teacher-student task with planted block sparsity.
"""

from kronsearch.data.datasets import dataset_shape, load_dataset
from kronsearch.data.folders import find_root
from kronsearch.data.splits import DATASETS, DatasetError, DatasetNotFoundError, DataSplits
from kronsearch.data.synthetic import SYNTHETIC_DEFAULTS

__all__ = ["DATASETS", "SYNTHETIC_DEFAULTS", "DataSplits", "DatasetError", "DatasetNotFoundError", "dataset_shape",
           "find_root", "load_dataset"]
