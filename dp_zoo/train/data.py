"""Data sets and augmentation multiplicity.

- ``load_dataset(DataConfig, split)``: uint8 images ``[N, H, W, C]`` and
  int64 labels in memory, with the train split's per-channel mean/std.
  Sources: scikit-learn's digits (embedded, no download) and TFDS
  (cifar10, cifar100, svhn_cropped, mnist, fashion_mnist; imagenet2012 needs
  a manual download and does not fit this in-memory path on small hosts).
- ``make_augment_fn(AugmultConfig)``: K augmented views per example,
  ``[B, H, W, C] -> [B, K, H, W, C]``, with stateless TF ops, applied by the
  engine in-graph on each sampled micro-batch (so the data set is read only
  for the examples a step sampled).

Digits split (fixed, documented): scikit-learn orders the 1,797 digits as
collected; the first 1,437 are "train" and the last 360 "test" (20%). With
``validation_size = V`` the last V training examples become "validation"
(for hyper-parameter search) and "train" keeps the first 1,437 - V.
"""

import dataclasses
import os

import numpy as np

DIGITS_TRAIN = 1437
TFDS_DATASETS = ("cifar10", "cifar100", "svhn_cropped", "mnist", "fashion_mnist", "imagenet2012")
DATASETS = ("digits",) + TFDS_DATASETS
SPLITS = ("train", "validation", "test")


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
      mean, std: per-channel statistics of ``images / 255`` on the train split.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    split: str
    mean: tuple
    std: tuple

    def __len__(self):
        return len(self.labels)

    @property
    def input_shape(self):
        return tuple(int(d) for d in self.images.shape[1:])


def _stats(images):
    x = images.astype(np.float64) / 255.0
    mean = tuple(float(m) for m in x.mean(axis=(0, 1, 2)))
    std = tuple(float(max(s, 1e-3)) for s in x.std(axis=(0, 1, 2)))
    return mean, std


def _check(data_config, split):
    if data_config.dataset not in DATASETS:
        from dp_zoo.models._registry import unknown_name_message

        raise ValueError(unknown_name_message("dataset", data_config.dataset, list(DATASETS)))
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if data_config.validation_size < 0:
        raise ValueError("validation_size must be >= 0.")


def _digits(data_config, split):
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 grey levels -> uint8 0..255, as a camera image would be stored.
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    v = data_config.validation_size
    if v >= DIGITS_TRAIN:
        raise ValueError(f"validation_size={v} leaves no digits training data (train has {DIGITS_TRAIN}).")
    train_end = DIGITS_TRAIN - v
    mean, std = _stats(images[:train_end])
    sl = {
        "train": (slice(0, train_end), f"digits[:{train_end}]"),
        "validation": (slice(train_end, DIGITS_TRAIN), f"digits[{train_end}:{DIGITS_TRAIN}]"),
        "test": (slice(DIGITS_TRAIN, None), f"digits[{DIGITS_TRAIN}:]"),
    }[split]
    if split == "validation" and v == 0:
        raise ValueError("No validation split: set validation_size > 0 to hold out training examples.")
    return Dataset(images[sl[0]], labels[sl[0]], 10, "digits", sl[1] + " (scikit-learn load_digits)", mean, std)


def _tfds_unavailable_message(name, data_dir, manual_dir):
    where = data_dir or "~/tensorflow_datasets"
    if name == "imagenet2012":
        how = (
            "ImageNet must be downloaded by hand from image-net.org: put ILSVRC2012_img_train.tar "
            f"and ILSVRC2012_img_val.tar in a directory and pass --manual-dir DIR (data dir: {where})."
        )
    else:
        how = (
            f"Prepare it on a machine with internet: `tfds build {name} --data_dir {where}` "
            f"(or `python -c \"import tensorflow_datasets as tfds; tfds.load('{name}', data_dir='{where}')\"`), "
            "then pass --data-dir to that directory."
        )
    return f"Data set {name!r} is not prepared in {where}. {how}"


def _tfds(data_config, split):
    import tensorflow_datasets as tfds

    name = data_config.dataset
    builder = tfds.builder(name, data_dir=data_config.data_dir)
    # Checking the prepared files first fails in milliseconds; letting TFDS
    # try to download offline retries for minutes before failing.
    if not _is_prepared(builder) and not _tfds_mocked(builder):
        if os.environ.get("DP_ZOO_ALLOW_DOWNLOAD", "1") == "0" or not _network_reachable():
            raise DataUnavailableError(
                _tfds_unavailable_message(name, data_config.data_dir, data_config.manual_dir)
            )
        dl = tfds.download.DownloadConfig(manual_dir=data_config.manual_dir)
        builder.download_and_prepare(download_config=dl)
    v = data_config.validation_size
    splits = builder.info.splits
    n_train = splits["train"].num_examples if "train" in splits else None
    if n_train is not None and v >= n_train:
        raise ValueError(f"validation_size={v} >= training examples ({n_train}).")
    # ImageNet has no labelled "test" split: its "validation" is the test set.
    test_split = "validation" if ("test" not in splits and "validation" in splits) else "test"
    # Negative slices keep the split fixed without knowing N up front.
    train_split = f"train[:-{v}]" if v else "train"
    tfds_split = {"train": train_split, "validation": f"train[-{v}:]", "test": test_split}[split]
    if split == "validation" and v == 0:
        raise ValueError("No validation split: set validation_size > 0.")

    def arrays(s):
        ds = builder.as_dataset(split=s, as_supervised=True)
        if data_config.image_size:
            import tensorflow as tf

            size = data_config.image_size
            ds = ds.map(lambda x, y: (tf.cast(tf.image.resize(x, [size, size]), tf.uint8), y))
        xs, ys = [], []
        for x, y in tfds.as_numpy(ds.batch(1024)):
            xs.append(x)
            ys.append(y)
        return np.concatenate(xs).astype(np.uint8), np.concatenate(ys).astype(np.int64)

    images, labels = arrays(tfds_split)
    train_images = images if split == "train" else arrays(train_split)[0]
    mean, std = _stats(train_images)
    num_classes = builder.info.features["label"].num_classes
    return Dataset(images, labels, num_classes, name, f"{name} {tfds_split} (TFDS)", mean, std)


def _tfds_mocked(builder):
    """True inside ``tfds.testing.mock_data`` (tests), where nothing is downloaded."""
    fn = type(builder).download_and_prepare
    return getattr(fn, "__module__", "").startswith("tensorflow_datasets.testing")


def _is_prepared(builder):
    try:
        return bool(builder.is_prepared())
    except Exception:  # older TFDS: look for the dataset_info file
        return os.path.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def _network_reachable(host="storage.googleapis.com", port=443, timeout=3.0):
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_dataset(data_config, split):
    """Loads one split of the configured data set into memory.

    Args:
      data_config: ``DataConfig``.
      split: "train", "validation" or "test".

    Returns:
      ``Dataset``.

    Raises:
      ValueError: unknown data set or split.
      DataUnavailableError: a TFDS data set is not prepared and cannot be
        downloaded; the message says how to get it.
    """
    _check(data_config, split)
    if data_config.dataset == "digits":
        return _digits(data_config, split)
    return _tfds(data_config, split)


def make_augment_fn(augmult):
    """K views per example: ``fn(images [B,H,W,C] float32, seed [2]) -> [B,K,H,W,C]``.

    Styles: "cifar" (reflect-pad + random crop + random flip), "crop" (the
    same without the flip, for digits), "imagenet" (random crop of 87.5% of
    the side, resized back, + flip), "none" (K copies).
    View 0 is the un-augmented image unless ``augment_first_view``.
    """
    import tensorflow as tf

    k = int(augmult.num_views)
    if k < 1:
        raise ValueError(f"augmult num_views must be >= 1, got {k}.")
    style = augmult.style
    if style not in ("cifar", "crop", "imagenet", "none"):
        raise ValueError(f"Unknown augmentation style {style!r}; use cifar, crop, imagenet or none.")
    pad = int(augmult.pad)

    def one_view(images, seed):
        b, h, w, c = images.shape
        if style == "none":
            return images
        s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if style in ("cifar", "crop"):
            padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
            offs = tf.random.stateless_uniform([tf.shape(images)[0], 2], s1, 0, 2 * pad + 1, tf.int32)
            out = tf.map_fn(
                lambda a: tf.slice(a[0], [a[1][0], a[1][1], 0], [h, w, c]),
                (padded, offs), fn_output_signature=tf.TensorSpec([h, w, c], images.dtype),
            )
        else:
            ch, cw = int(round(h * 0.875)), int(round(w * 0.875))
            n = tf.shape(images)[0]
            oy = tf.random.stateless_uniform([n], s1, 0, h - ch + 1, tf.int32)
            ox = tf.random.stateless_uniform([n], tf.reverse(s1, [0]), 0, w - cw + 1, tf.int32)
            boxes = tf.stack([oy / h, ox / w, (oy + ch) / h, (ox + cw) / w], axis=1)
            out = tf.image.crop_and_resize(images, tf.cast(boxes, tf.float32), tf.range(n), [h, w])
        if style in ("cifar", "imagenet"):
            flip = tf.random.stateless_uniform([tf.shape(images)[0], 1, 1, 1], s2) < 0.5
            out = tf.where(flip, tf.reverse(out, [2]), out)
        return out

    def augment(images, seed):
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), k)
        views = []
        for i in range(k):
            if i == 0 and not augmult.augment_first_view:
                views.append(images)
            else:
                views.append(one_view(images, seeds[i]))
        return tf.stack(views, axis=1)

    return augment
