"""The data sets dp_zoo knows, the in-memory split type, and fixed normalisation.

Normalisation constants are never computed from the (private) training
data: a mean/std measured at run time would be released inside the model
(its serving signature normalises) without any privacy accounting. They are
fixed in code (``normalization_constants``): the published per-channel
figures for the standard data sets, and the data-independent (0.5, 0.5),
i.e. pixels mapped to [-1, 1], for everything else, digits included.
"""

import dataclasses
import hashlib
from typing import Optional

import numpy as np

TFDS_DATASETS = ("cifar10", "cifar100", "svhn_cropped", "mnist", "fashion_mnist", "imagenet2012")
DATASETS = ("digits",) + TFDS_DATASETS
SPLITS = ("train", "validation", "test")
# (train N, test N, native [H, W, C]) from the TFDS catalogue: used to size
# the in-memory arrays before anything is prepared or read. ImageNet's test
# split is its labelled validation set; its images vary in size (None).
KNOWN_SIZES = {
    "cifar10": (50_000, 10_000, (32, 32, 3)),
    "cifar100": (50_000, 10_000, (32, 32, 3)),
    "svhn_cropped": (73_257, 26_032, (32, 32, 3)),
    "mnist": (60_000, 10_000, (28, 28, 1)),
    "fashion_mnist": (60_000, 10_000, (28, 28, 1)),
    "imagenet2012": (1_281_167, 50_000, None),
}
IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


class DataUnavailableError(RuntimeError):
    """The data set is not on this machine and cannot be fetched now."""


@dataclasses.dataclass
class Dataset:
    """An in-memory split.

    Attributes:
      images: uint8 ``[N, H, W, C]``.
      labels: int64 ``[N]``.
      num_classes: number of classes.
      name: data set name.
      split: exact description of the examples in this split.
      mean, std: per-channel normalisation constants for ``images / 255``
        (``normalization_constants``: fixed, not measured on the data).
      sha256: ``{"images": hex, "labels": hex}``, the SHA-256 of these arrays
        (``array_sha256``), set only by sources whose arrays are public by
        construction (scikit-learn's embedded digits, dp_zoo's checked MNIST
        copy): a hash of private training data would identify it, so every
        other source leaves it None.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    split: str
    mean: tuple
    std: tuple
    sha256: Optional[dict] = None

    def __len__(self):
        return len(self.labels)

    @property
    def input_shape(self):
        return tuple(int(d) for d in self.images.shape[1:])


# Published per-channel mean/std of images / 255 (torchvision / timm / the
# data sets' common training code). Fixed constants, not computed at run
# time: see the module docstring.
PUBLIC_NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def normalization_constants(name, channels):
    """``(mean, std)`` for data set ``name`` with ``channels`` channels, data-independent.

    The published figures where the data set has them, else 0.5 / 0.5 per
    channel (pixels to [-1, 1]). Never measured on the training data, which
    is private: the constants ship inside the exported model.
    """
    if name in PUBLIC_NORMALIZATION and len(PUBLIC_NORMALIZATION[name][0]) == channels:
        mean, std = PUBLIC_NORMALIZATION[name]
        return tuple(mean), tuple(std)
    return (0.5,) * channels, (0.5,) * channels


def array_sha256(a):
    """SHA-256 (hex) of an array's bytes, C order: uint8 as is, any other integers as little-endian int64.

    The hash the run record gives for a split's ``images`` (uint8
    ``[N, H, W, C]``) and ``labels`` (int64): anyone can recompute it with
    ``hashlib.sha256(images.tobytes())``.
    """
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = a.astype("<i8")
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
