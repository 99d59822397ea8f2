"""dp_zoo's own copy of MNIST: the standard-split check, the checksummed cache, and reading a split.

``import_files`` (``python -m dp_zoo.data import mnist FILE``) reads a local
copy (``mnist_files``), checks that it is the standard split (``check``:
60,000 training and 10,000 test images, 28x28 uint8, the known label counts,
and the SHA-256 of each array, which pins the standard order and pixels), and
writes it to ``<data home>/mnist/`` (``data_home``: ``$DP_ZOO_HOME/datasets``,
else the user cache) atomically: the arrays go to a content-named ``.npz``
first, then ``mnist.json``, which names that file and the arrays' SHA-256,
replaces the old one in one rename. A crash leaves the old copy or the new
one, never a mixture.

``load`` serves a split from that copy, re-checking every array's SHA-256
against ``mnist.json`` and the pinned standard, so the arrays a run trains on
are the public standard MNIST and their SHA-256 (recorded in the run record)
are public constants, not a fingerprint of private data. With no copy in the
data home it imports Keras' ``$KERAS_HOME/datasets/mnist.npz`` when that
exists; otherwise it returns None and the caller reads MNIST from TFDS.
"""

import dataclasses
import hashlib
import json
import os
import tempfile

import numpy as np

from dp_zoo.data import mnist_files
from dp_zoo.data.catalogue import Dataset, array_sha256, normalization_constants
from dp_zoo.data.mnist_files import MnistFormatError

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
INDEX = "mnist.json"
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Standard:
    """What an import must match: sizes, label counts per class, and each array's SHA-256.

    ``sha256`` hashes ``x_*`` as uint8 ``[N, 28, 28]`` and ``y_*`` as
    little-endian int64, in C order (``array_sha256``).
    """

    n_train: int
    n_test: int
    train_counts: tuple
    test_counts: tuple
    sha256: dict


# The standard MNIST split (LeCun, Cortes and Burges), as read from deeplearning.net's
# mnist.pkl.gz (train + validation = the 60,000 training images; pixels k/256 -> k). The
# label counts are the official ones; the training images' mean of x/255 is 0.1306605 and
# their std 0.3081078, the published MNIST normalisation figures (catalogue).
MNIST = Standard(
    n_train=60_000, n_test=10_000,
    train_counts=(5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    test_counts=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    sha256={
        "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
        "y_train": "e474323ac02fc156161b0bbb1f8c9cfeb327a74bcd9f9680a8385269a24f566c",
        "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
        "y_test": "2fd8de6bdb8d11780b4b96dc57847bcfe6953f7c32aa48bfcd8237c3b7847243",
    },
)


def describe(arrays):
    """A ``Standard`` describing ``arrays`` (``MnistArrays``): what ``check`` compares with."""
    counts = [tuple(int(c) for c in np.bincount(y, minlength=10)) for y in (arrays.y_train, arrays.y_test)]
    return Standard(len(arrays.y_train), len(arrays.y_test), counts[0], counts[1],
                    {k: array_sha256(getattr(arrays, k)) for k in ARRAYS})


def check(arrays, standard=None):
    """Refuses ``arrays`` unless they are ``standard``'s split (default ``MNIST``; one-line ``MnistFormatError``)."""
    standard = MNIST if standard is None else standard
    got = describe(arrays)
    if (got.n_train, got.n_test) != (standard.n_train, standard.n_test):
        raise MnistFormatError(
            f"{arrays.source} has {got.n_train:,} training and {got.n_test:,} test images; the standard MNIST "
            f"split has {standard.n_train:,} and {standard.n_test:,}.")
    for split, have, want in (("training", got.train_counts, standard.train_counts),
                              ("test", got.test_counts, standard.test_counts)):
        if have != want:
            raise MnistFormatError(f"{arrays.source}: {split} label counts {list(have)} differ from the standard "
                                   f"MNIST's {list(want)}; this is not the standard split.")
    for k in ARRAYS:
        if got.sha256[k] != standard.sha256[k]:
            what = "label order" if k.startswith("y") else "images (order or pixels)"
            raise MnistFormatError(
                f"{arrays.source}: {k} differs from the standard MNIST's {what} (SHA-256 {got.sha256[k][:16]}... "
                f"instead of {standard.sha256[k][:16]}...); get an unmodified copy.")


def data_home():
    """Where dp_zoo keeps imported data sets: ``$DP_ZOO_HOME/datasets``, else ``<user cache>/dp_zoo/datasets``.

    The same base as published models (``dp_zoo.zoo.cache_dir``, a higher
    layer, so the two lines are repeated here).
    """
    if os.environ.get("DP_ZOO_HOME"):
        return os.path.join(os.environ["DP_ZOO_HOME"], "datasets")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "dp_zoo", "datasets")


def cache_dir():
    """The directory of dp_zoo's MNIST copy."""
    return os.path.join(data_home(), "mnist")


def keras_npz():
    """Keras' download location of ``mnist.npz``: ``$KERAS_HOME/datasets/mnist.npz`` (default ``~/.keras``)."""
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(base, "datasets", "mnist.npz")


def import_files(paths, standard=None):
    """Reads a local copy, checks it against ``standard`` (default ``MNIST``) and writes the cache.

    Returns the cache index (``mnist.json``'s contents) with its ``directory``.
    """
    standard = MNIST if standard is None else standard
    arrays = mnist_files.read(paths)
    check(arrays, standard)
    return _write(arrays, [os.fspath(p) for p in paths])


def _write(arrays, paths):
    directory = cache_dir()
    os.makedirs(directory, exist_ok=True)
    sums = {k: array_sha256(getattr(arrays, k)) for k in ARRAYS}
    npz_name = f"mnist-{hashlib.sha256(''.join(sums[k] for k in ARRAYS).encode()).hexdigest()[:16]}.npz"
    index = {
        "format": FORMAT, "dataset": "mnist", "arrays": npz_name, "sha256": sums,
        "source": arrays.source, "source_sha256": {os.path.basename(p): _file_sha256(p) for p in _files(paths)},
    }
    _atomic_write(os.path.join(directory, npz_name),
                  lambda f: np.savez(f, **{k: getattr(arrays, k) for k in ARRAYS}))
    _atomic_write(os.path.join(directory, INDEX), lambda f: f.write(json.dumps(index, indent=2).encode()))
    for stale in os.listdir(directory):  # older imports, no longer named by the index
        if stale.startswith("mnist-") and stale.endswith(".npz") and stale != npz_name:
            os.remove(os.path.join(directory, stale))
    return dict(index, directory=directory)


def _files(paths):
    out = []
    for p in paths:
        out += sorted(os.path.join(p, f) for f in os.listdir(p)) if os.path.isdir(p) else [p]
    return [p for p in out if os.path.isfile(p)]


def _file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path, write):
    """Writes ``path`` through a temporary sibling, fsynced, then one rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the copy is public data
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_cache(standard=None):
    """The cached ``MnistArrays``, each array re-checked against the index and ``standard``; None if absent."""
    standard = MNIST if standard is None else standard
    directory = cache_dir()
    index_path = os.path.join(directory, INDEX)
    if not os.path.exists(index_path):
        return None
    redo = f"re-import it: python -m dp_zoo.data import mnist FILE (or remove {directory} to use TFDS)"
    try:
        with open(index_path) as f:
            index = json.load(f)
        with np.load(os.path.join(directory, os.path.basename(index["arrays"])), allow_pickle=False) as z:
            arrays = mnist_files.MnistArrays(**{k: z[k] for k in ARRAYS}, source=index.get("source", "?"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MnistFormatError(f"dp_zoo's MNIST copy in {directory} is unreadable ({type(e).__name__}: {e}); "
                               f"{redo}.") from None
    for k in ARRAYS:
        got = array_sha256(getattr(arrays, k))
        if got != index["sha256"].get(k) or got != standard.sha256[k]:
            raise MnistFormatError(f"dp_zoo's MNIST copy in {directory}: {k} fails its SHA-256 check (the file "
                                   f"changed after it was imported); {redo}.")
    return arrays


def load(data_config, split, streaming=None):
    """The ``split`` of dp_zoo's MNIST copy as a ``Dataset``, or None when there is no copy to read.

    Imports Keras' ``mnist.npz`` first when the data home has no copy and
    Keras has one (``keras_npz``).
    """
    arrays = read_cache()
    if arrays is None and os.path.exists(keras_npz()):
        print(f"Importing Keras' {keras_npz()} into dp_zoo's MNIST copy ({cache_dir()}).")
        import_files([keras_npz()])
        arrays = read_cache()
    if arrays is None:
        return None
    if streaming:
        raise ValueError("streaming reads TFDS data sets prepared as array_record; dp_zoo's local MNIST copy "
                         f"({cache_dir()}, 55 MB) is always held in memory.")
    n, v = len(arrays.y_train), data_config.validation_size
    if v >= n:
        raise ValueError(f"validation_size={v} >= training examples ({n}).")
    if split == "validation" and v == 0:
        raise ValueError("No validation split: set validation_size > 0.")
    # The tuner's validation split is held out of the training images; the test images stay apart.
    x, y, name = {
        "train": (arrays.x_train[:n - v], arrays.y_train[:n - v], f"train[:-{v}]" if v else "train"),
        "validation": (arrays.x_train[n - v:], arrays.y_train[n - v:], f"train[-{v}:]"),
        "test": (arrays.x_test, arrays.y_test, "test"),
    }[split]
    images = _resized(x[..., None], data_config.image_size)
    mean, std = normalization_constants("mnist", 1)
    size = data_config.image_size
    how = f", resized to {size}x{size}" if size and size != 28 else ""
    return Dataset(images, y.astype(np.int64), 10, "mnist",
                   f"mnist {name} (dp_zoo's checked copy of the standard MNIST arrays, from {arrays.source}{how})",
                   mean, std, sha256={"images": array_sha256(images), "labels": array_sha256(y)})


def _resized(images, size):
    """``images`` at ``size`` x ``size`` (the TFDS path's resize), or unchanged at the native 28."""
    if not size or size == 28:
        return np.ascontiguousarray(images)
    import tensorflow as tf

    from dp_zoo.data.image_ops import resize_center_crop

    ds = tf.data.Dataset.from_tensor_slices(images).map(lambda im: resize_center_crop(im, size)).batch(1024)
    return np.concatenate([b.numpy() for b in ds]).astype(np.uint8)
