"""Old path of ``dp_zoo.data`` (issue #29), kept for one release.

A package, not an alias, so that ``dp_zoo.train.data.<module>`` finds its own
old-path modules here (each is the ``dp_zoo.data`` module of that name).
"""
from dp_zoo.data import (DATASETS, SPLITS, TFDS_DATASETS, Dataset, DataUnavailableError, MnistFormatError,
                         StreamingDataset, array_sha256, load_dataset, make_augment_fn, normalization_constants)

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
