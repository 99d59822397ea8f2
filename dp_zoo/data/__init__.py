"""Data sets and augmentation multiplicity.

- ``load_dataset(DataConfig, split)`` (``load``): uint8 images
  ``[N, H, W, C]`` and int64 labels in memory, with fixed per-channel
  normalisation constants (``catalogue``). Sources: scikit-learn's digits
  (``digits``: embedded, no download), dp_zoo's checked local copy of MNIST
  (``mnist_local``, imported by ``python -m dp_zoo.data import mnist FILE``
  from the formats ``mnist_files`` reads; used for mnist when present) and
  TFDS (``tfds_source``: cifar10, cifar100, svhn_cropped, mnist,
  fashion_mnist, imagenet2012), held in memory or, when a split does not fit
  or ``streaming=True``, read by index from array_record files
  (``streaming``) with Poisson sampling unchanged.
- ``make_augment_fn(AugmultConfig)`` (``image_ops``): K augmented views per
  example, applied by the engine in-graph on each sampled micro-batch.
"""

from dp_zoo.data.catalogue import (DATASETS, SPLITS, TFDS_DATASETS, Dataset, DataUnavailableError,
                                   array_sha256, normalization_constants)
from dp_zoo.data.image_ops import make_augment_fn
from dp_zoo.data.load import load_dataset
from dp_zoo.data.mnist_files import MnistFormatError
from dp_zoo.data.streaming import StreamingDataset

__all__ = [
    "DATASETS",
    "SPLITS",
    "TFDS_DATASETS",
    "Dataset",
    "DataUnavailableError",
    "MnistFormatError",
    "StreamingDataset",
    "array_sha256",
    "load_dataset",
    "make_augment_fn",
    "normalization_constants",
]
