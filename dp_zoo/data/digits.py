"""scikit-learn's digits, embedded in scikit-learn (no download).

The split is fixed and documented: scikit-learn orders the 1,797 digits as
collected; the first 1,437 are "train" and the last 360 "test" (20%). With
``validation_size = V`` the last V training examples become "validation"
(for hyper-parameter search) and "train" keeps the first 1,437 - V.
"""

import numpy as np

from dp_zoo.data.catalogue import Dataset, array_sha256, normalization_constants

DIGITS_TRAIN = 1437


def load(data_config, split):
    """The digits ``split`` ("train", "validation" or "test") as a ``Dataset``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 grey levels -> uint8 0..255, as a camera image would be stored.
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    v = data_config.validation_size
    if v >= DIGITS_TRAIN:
        raise ValueError(f"validation_size={v} leaves no digits training data (train has {DIGITS_TRAIN}).")
    train_end = DIGITS_TRAIN - v
    mean, std = normalization_constants("digits", 1)
    sl = {
        "train": (slice(0, train_end), f"digits[:{train_end}]"),
        "validation": (slice(train_end, DIGITS_TRAIN), f"digits[{train_end}:{DIGITS_TRAIN}]"),
        "test": (slice(DIGITS_TRAIN, None), f"digits[{DIGITS_TRAIN}:]"),
    }[split]
    if split == "validation" and v == 0:
        raise ValueError("No validation split: set validation_size > 0 to hold out training examples.")
    x, y = np.ascontiguousarray(images[sl[0]]), labels[sl[0]]
    # Embedded in scikit-learn, so public: the hash of what ran is no fingerprint of private data.
    return Dataset(x, y, 10, "digits", sl[1] + " (scikit-learn load_digits)", mean, std,
                   sha256={"images": array_sha256(x), "labels": array_sha256(y)})
