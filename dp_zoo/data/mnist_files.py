"""Reading a local copy of MNIST: ``mnist.pkl.gz``, Keras' ``mnist.npz`` or the four IDX files.

Each reader returns ``MnistArrays``: uint8 images ``[N, 28, 28]`` and int64
labels, train and test, exactly as the file holds them (the standard-split
check is ``mnist_local``'s). Nothing here imports TensorFlow.

``mnist.pkl.gz`` (deeplearning.net's file) is a Python 2 pickle of three
``(images, labels)`` pairs: 50,000 train, 10,000 validation, 10,000 test,
float32 pixels ``k / 256``. Its train + validation, concatenated, are the
standard 60,000 training images in order. A pickle can run any code when it
is loaded, so it is read by ``_ArrayUnpickler``, which resolves only the
three globals numpy's array pickles name and refuses every other one before
anything is called; the pixels must be exact multiples of 1/256, which map
back to the uint8 ``k`` without rounding.

Keras' ``mnist.npz`` holds ``x_train``, ``y_train``, ``x_test``, ``y_test``
and is read with ``allow_pickle=False``. IDX (LeCun's format: big-endian
magic ``0x00000803`` images / ``0x00000801`` labels, then the sizes and the
bytes) is read from the four files, gzipped or not.
"""

import dataclasses
import gzip
import os
import pickle
import zipfile

import numpy as np


class MnistFormatError(ValueError):
    """A local MNIST file that is not what it claims to be (the message names the problem)."""


@dataclasses.dataclass(frozen=True)
class MnistArrays:
    """MNIST's train and test arrays as read from a file (``x_*`` uint8 ``[N, 28, 28]``, ``y_*`` int64)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # which file(s), for the cache's provenance note


IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def read(paths):
    """The arrays of one local copy: a ``.pkl.gz``, an ``.npz``, four IDX files or a directory of them.

    Raises:
      MnistFormatError: the file is not one of these formats, or its arrays
        are malformed (the message says which and how to get a good copy).
      FileNotFoundError: a path does not exist.
    """
    paths = [os.fspath(p) for p in paths]
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p} does not exist.")
    if len(paths) == 1 and os.path.isdir(paths[0]):
        found = [os.path.join(paths[0], f) for f in sorted(os.listdir(paths[0])) if _idx_role(f)]
        if not found:
            raise MnistFormatError(f"{paths[0]} holds none of the four IDX files ({', '.join(IDX_NAMES.values())}).")
        return read_idx(found)
    if len(paths) == 1 and paths[0].endswith((".pkl.gz", ".pkl")):
        return read_pickle(paths[0])
    if len(paths) == 1 and paths[0].endswith(".npz"):
        return read_npz(paths[0])
    if all(_idx_role(os.path.basename(p)) for p in paths):
        return read_idx(paths)
    raise MnistFormatError(
        f"cannot tell the format of {', '.join(paths)}: pass mnist.pkl.gz, Keras' mnist.npz, or the four IDX "
        f"files ({', '.join(IDX_NAMES.values())}, gzipped or not) or their directory.")


# -- mnist.pkl.gz -------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Loads numpy arrays and nothing else: any other global is refused before it is called.

    A pickle calls only what ``find_class`` returns (REDUCE, NEWOBJ, BUILD
    act on those objects), so admitting ``_reconstruct``, ``ndarray`` and
    ``dtype`` alone means no other code can run.
    """

    def find_class(self, module, name):
        allowed = _allowed_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise MnistFormatError(
            f"the pickle asks for {module}.{name}, which is not part of a numpy array; refusing to load it "
            "(only numpy's array reconstruction is admitted, so no code in the file runs). Use a trusted "
            "copy of mnist.pkl.gz, Keras' mnist.npz or the IDX files.")

    def persistent_load(self, pid):
        raise MnistFormatError("the pickle uses persistent ids; a file of numpy arrays has none. Refusing to load it.")


def _allowed_globals():
    # numpy 2 moved numpy.core to numpy._core; old pickles name the former.
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


def read_pickle(path):
    """``mnist.pkl.gz``: train + validation as the 60,000 training images, test as test; pixels k/256 -> k."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            # Python 2 str pickles of array bytes: latin1 maps them back byte for byte.
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except MnistFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError) as e:
        raise MnistFormatError(f"{path} is not a readable pickle of numpy arrays ({type(e).__name__}: {e}).") from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 3
            and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in obj)):
        raise MnistFormatError(f"{path} does not hold three (images, labels) pairs (train, validation, test) "
                               "as deeplearning.net's mnist.pkl.gz does.")
    (xa, ya), (xv, yv), (xt, yt) = obj
    parts = {}
    for what, x, y in (("train", xa, ya), ("validation", xv, yv), ("test", xt, yt)):
        parts[what] = (_pixels_from_256ths(x, f"{path} {what} images"), _labels(y, f"{path} {what} labels"))
        if len(parts[what][0]) != len(parts[what][1]):
            raise MnistFormatError(f"{path} {what}: {len(parts[what][0])} images but {len(parts[what][1])} labels.")
    return MnistArrays(
        x_train=np.concatenate([parts["train"][0], parts["validation"][0]]),
        y_train=np.concatenate([parts["train"][1], parts["validation"][1]]),
        x_test=parts["test"][0], y_test=parts["test"][1],
        source=f"{os.path.basename(path)} (train + validation = the training split)",
    )


def _pixels_from_256ths(x, what):
    """float pixels k/256 (``[N, 784]``) -> uint8 k ``[N, 28, 28]``, refusing anything inexact."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise MnistFormatError(f"{what} must be a float array of pixels k/256, got {_describe(x)}.")
    if x.ndim != 2 or x.shape[1] != 784:
        raise MnistFormatError(f"{what} must be [N, 784] (28x28 flattened), got shape {list(x.shape)}.")
    # k/256 and k are exact in any float type with an 8-bit mantissa, so this product is exact.
    k = x * x.dtype.type(256)
    if not np.all(np.isfinite(k)) or k.min() < 0 or k.max() > 255 or not np.array_equal(k, np.floor(k)):
        raise MnistFormatError(f"{what}: pixels are not exact multiples of 1/256 in [0, 255/256], so they do not "
                               "map back to the original bytes; this is not deeplearning.net's mnist.pkl.gz.")
    return k.astype(np.uint8).reshape(-1, 28, 28)


# -- mnist.npz ------------------------------------------------------------------------


def read_npz(path):
    """Keras' ``mnist.npz`` (``x_train``, ``y_train``, ``x_test``, ``y_test``), read without pickle."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in IDX_NAMES if k not in z.files]
            if missing:
                raise MnistFormatError(f"{path} lacks {missing}; Keras' mnist.npz holds x_train, y_train, "
                                       f"x_test and y_test (it has {sorted(z.files)}).")
            arrays = {k: z[k] for k in IDX_NAMES}
    except MnistFormatError:
        raise
    except ValueError as e:  # an object array: np.load refuses it without pickle
        raise MnistFormatError(f"{path} holds something other than plain arrays ({e}); refusing to unpickle it.") \
            from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise MnistFormatError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}).") from None
    return MnistArrays(
        x_train=_images(arrays["x_train"], f"{path} x_train"), y_train=_labels(arrays["y_train"], f"{path} y_train"),
        x_test=_images(arrays["x_test"], f"{path} x_test"), y_test=_labels(arrays["y_test"], f"{path} y_test"),
        source=os.path.basename(path),
    )


# -- IDX -------------------------------------------------------------------------------


def _idx_role(filename):
    """"x_train" etc. for an IDX file name (``train-images-idx3-ubyte[.gz]``, also with ``.`` for ``-``), else None."""
    stem = filename[:-3] if filename.endswith(".gz") else filename
    stem = stem.replace(".", "-")
    for role, name in IDX_NAMES.items():
        if stem == name:
            return role
    return None


def read_idx(paths):
    """The four IDX files (gzipped or not), recognised by their standard names."""
    by_role = {}
    for p in paths:
        role = _idx_role(os.path.basename(p))
        if role in by_role:
            raise MnistFormatError(f"two files for {IDX_NAMES[role]}: {by_role[role]} and {p}.")
        by_role[role] = p
    missing = [IDX_NAMES[r] for r in IDX_NAMES if r not in by_role]
    if missing:
        raise MnistFormatError(f"missing IDX file(s) {', '.join(missing)} (gzipped or not); pass all four.")
    arrays = {r: _read_idx_file(by_role[r], images=r.startswith("x")) for r in IDX_NAMES}
    return MnistArrays(**arrays, source="IDX files " + ", ".join(os.path.basename(by_role[r]) for r in IDX_NAMES))


def _read_idx_file(path, images):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise MnistFormatError(f"{path} cannot be read ({type(e).__name__}: {e}).") from None
    want_magic, dims = (0x0803, 3) if images else (0x0801, 1)
    header = 4 + 4 * dims
    if len(raw) < header:
        raise MnistFormatError(f"{path} is {len(raw)} bytes, shorter than an IDX header.")
    magic = int.from_bytes(raw[:4], "big")
    if magic != want_magic:
        raise MnistFormatError(f"{path}: IDX magic {magic:#010x}, expected {want_magic:#010x} "
                               f"({'uint8 images, 3 dimensions' if images else 'uint8 labels, 1 dimension'}).")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(shape)):
        raise MnistFormatError(f"{path}: the header says {list(shape)} ({int(np.prod(shape))} bytes) but "
                               f"{data.size} bytes follow it.")
    data = data.reshape(shape)
    return _images(data, path) if images else _labels(data, path)


# -- checks shared by the readers ---------------------------------------------------------


def _images(x, what):
    """uint8 ``[N, 28, 28]`` (a trailing channel of 1 is dropped), else a one-line error."""
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
        raise MnistFormatError(f"{what} must be uint8 pixels, got {_describe(x)}.")
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise MnistFormatError(f"{what} must be [N, 28, 28] images, got shape {list(x.shape)}.")
    return np.ascontiguousarray(x)


def _labels(y, what):
    """int64 ``[N]`` labels in 0..9, else a one-line error."""
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu":
        raise MnistFormatError(f"{what} must be integer class labels, got {_describe(y)}.")
    if y.ndim != 1:
        raise MnistFormatError(f"{what} must be one label per image ([N]), got shape {list(y.shape)}.")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise MnistFormatError(f"{what} must be digits 0..9, found {int(y.min())}..{int(y.max())}.")
    return y.astype(np.int64)


def _describe(x):
    if isinstance(x, np.ndarray):
        return f"a {x.dtype} array of shape {list(x.shape)}"
    return f"a {type(x).__name__}"

