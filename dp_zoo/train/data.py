"""Data sets and augmentation multiplicity.

- ``load_dataset(DataConfig, split)``: uint8 images ``[N, H, W, C]`` and
  int64 labels in memory, with the train split's per-channel mean/std.
  Sources: scikit-learn's digits (embedded, no download) and TFDS
  (cifar10, cifar100, svhn_cropped, mnist, fashion_mnist, imagenet2012).

The in-memory path is built for CIFAR-scale data (CIFAR-10 train is 150 MB
as uint8). ImageNet is loaded the same way, resized to the model's
resolution (shorter side to ``image_size``, centre crop), which is honest
but large: the train split at 224x224 is ~193 GB of uint8. Before reading
anything, ``load_dataset`` estimates the array size; when it would not fit
in this machine's available memory it streams the split instead (below), or
refuses with the numbers if the data set cannot be streamed, rather than
swapping for hours or being killed.

Streaming (``load_dataset(..., streaming=True)``, ``--streaming``, or
automatic when the split does not fit): ``StreamingDataset`` reads a TFDS
data set prepared in the ``array_record`` format through its random-access
data source (``builder.as_data_source``). Poisson sampling stays exact: the
engine draws each step's index set (``sampling.PoissonSampler``, each example
independently with probability q) exactly as for an in-memory split, and
``images[idx]``/``labels[idx]`` fetch and decode just those records (in a
thread pool, with TFDS's own TF image decoder and the same resize/centre
crop), so a batch is bit-identical to the in-memory one for the same
indices. Nothing is ever shuffled or read sequentially for training.
``StreamingDataset.prefetch`` replays the sampler ahead of the engine so
that reading overlaps the DP step. Data prepared as TFRecord (TFDS's
default) has no random access: prepare it with ``tfds build NAME
--file_format=array_record`` (the error says so).

Normalisation constants are never computed from the (private) training
data: a mean/std measured at run time would be released inside the model
(its serving signature normalises) without any privacy accounting. They are
fixed in code (``normalization_constants``): the published per-channel
figures for the standard data sets, and the data-independent (0.5, 0.5),
i.e. pixels mapped to [-1, 1], for everything else, digits included.

Offline behaviour: TFDS, asked for a data set that is not prepared, tries
to download it and retries a failed download for minutes. We check whether
the prepared files exist first and whether the download host is reachable
(a 3 s TCP connect); if not, ``DataUnavailableError`` says how to get the
data (``tfds build NAME``, or the manual directory for ImageNet) within a
second. ``DP_ZOO_ALLOW_DOWNLOAD=0`` forbids downloads outright.
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
# (train N, test N, native [H, W, C]) from the TFDS catalogue: used to size
# the in-memory arrays before anything is prepared or read. ImageNet's test
# split is its labelled validation set; its images vary in size (None).
_KNOWN = {
    "cifar10": (50_000, 10_000, (32, 32, 3)),
    "cifar100": (50_000, 10_000, (32, 32, 3)),
    "svhn_cropped": (73_257, 26_032, (32, 32, 3)),
    "mnist": (60_000, 10_000, (28, 28, 1)),
    "fashion_mnist": (60_000, 10_000, (28, 28, 1)),
    "imagenet2012": (1_281_167, 50_000, None),
}
IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
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
      mean, std: per-channel normalisation constants for ``images / 255``
        (``normalization_constants``: fixed, not measured on the data).
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
    mean, std = normalization_constants("digits", 1)
    sl = {
        "train": (slice(0, train_end), f"digits[:{train_end}]"),
        "validation": (slice(train_end, DIGITS_TRAIN), f"digits[{train_end}:{DIGITS_TRAIN}]"),
        "test": (slice(DIGITS_TRAIN, None), f"digits[{DIGITS_TRAIN}:]"),
    }[split]
    if split == "validation" and v == 0:
        raise ValueError("No validation split: set validation_size > 0 to hold out training examples.")
    return Dataset(images[sl[0]], labels[sl[0]], 10, "digits", sl[1] + " (scikit-learn load_digits)", mean, std)


def _tfds_unavailable_message(name, data_dir, manual_dir, array_record=False):
    where = data_dir or "~/tensorflow_datasets"
    if name == "imagenet2012":
        how = (
            "ImageNet must be downloaded by hand (register at https://image-net.org/download-images): "
            f"put {' and '.join(IMAGENET_MANUAL_FILES)} in a directory and pass --manual-dir DIR; "
            f"TFDS then prepares it into the data dir ({where}, ~150 GB, hours"
            + (", as array_record for streaming" if array_record else "") + "), no network needed."
        )
    elif array_record:
        how = (
            f"Prepare it on a machine with internet: `tfds build {name} --file_format=array_record "
            f"--data_dir {where}`, copy that directory here if needed, and pass --data-dir to it."
        )
    else:
        how = (
            f"Prepare it on a machine with internet: `tfds build {name} --data_dir {where}` "
            f"(or `python -c \"import tensorflow_datasets as tfds; tfds.load('{name}', data_dir='{where}')\"`), "
            "copy that directory here if needed, and pass --data-dir to it."
        )
    return f"Data set {name!r} is not prepared in {where} and cannot be downloaded now. {how}"


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        # TFDS imports importlib_resources without declaring it as a
        # dependency; name the missing module instead of a traceback.
        raise DataUnavailableError(
            f"tensorflow-datasets cannot be imported ({e}). Install it with "
            "`pip install tensorflow-datasets importlib_resources` (or `pip install dp_zoo`)."
        ) from None
    return tfds


def _available_memory_bytes():
    """MemAvailable from /proc/meminfo (Linux), else physical memory, else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _memory_shortfall(name, split, n, shape):
    """None if the in-memory split fits this machine, else a message with the numbers."""
    if shape is None:
        return None
    need = n * int(np.prod(shape))
    have = _available_memory_bytes()
    # Half of what is free: the split is built from batches (a second copy
    # while concatenating) and training needs memory of its own.
    if have is not None and need > have // 2:
        return (
            f"{name} {split} is {n:,} images of {'x'.join(map(str, shape))} = {need / 1e9:.1f} GB as uint8; "
            f"this machine has {have / 1e9:.1f} GB available, and dp_zoo's in-memory input pipeline "
            "needs about twice the array"
        )
    return None


def _check_fits_in_memory(name, split, n, shape):
    """Refuses, before reading, an in-memory split that this machine cannot hold."""
    short = _memory_shortfall(name, split, n, shape)
    if short:
        raise DataUnavailableError(
            f"{short}. Stream it instead (--streaming; needs the data prepared as array_record: "
            f"{_array_record_build_command(name, None, None)}), use a host with more memory, or a smaller "
            "image_size" + (" (ImageNet at 64x64 is 16 GB)." if name == "imagenet2012" else ".")
        )


def _array_record_build_command(name, data_dir, manual_dir):
    cmd = f"tfds build {name} --file_format=array_record"
    if data_dir:
        cmd += f" --data_dir={data_dir}"
    if name == "imagenet2012":
        cmd += f" --manual_dir={manual_dir or 'DIR_WITH_THE_ILSVRC2012_TARS'}"
    return f"`{cmd}`"


def _file_formats(builder):
    """The file formats the prepared data set is stored in (names, e.g. {"tfrecord"})."""
    info = builder.info
    try:
        formats = set(info.available_file_formats())
    except Exception:  # older TFDS
        formats = {info.file_format} if info.file_format is not None else set()
    return {getattr(f, "value", str(f)) for f in formats}


def _tfds_split_sizes(builder, name):
    """(train N, test N, native shape or None) for sizing before reading."""
    n_train, n_test, shape = _KNOWN.get(name, (None, None, None))
    splits = builder.info.splits
    if splits:  # prepared (or mocked): the exact figures
        n_train = splits["train"].num_examples if "train" in splits else n_train
        test = _test_split_name(name, splits)
        n_test = splits[test].num_examples if test in splits else n_test
    feat = builder.info.features["image"]
    if feat.shape and None not in feat.shape:
        shape = tuple(int(d) for d in feat.shape)
    return n_train, n_test, shape


def _test_split_name(name, splits):
    """The labelled held-out split.

    ImageNet's TFDS "test" split (5.x) has no labels (-1): its labelled
    "validation" split is what papers report, so it is our test split.
    """
    if name == "imagenet2012" or ("test" not in splits and "validation" in splits):
        return "validation"
    return "test"




def _tfds(data_config, split, streaming=None):
    tfds = _import_tfds()

    name = data_config.dataset
    builder = tfds.builder(name, data_dir=data_config.data_dir)
    size = data_config.image_size
    v = data_config.validation_size
    n_train, n_test, native = _tfds_split_sizes(builder, name)
    if native is None and not size:
        raise ValueError(
            f"{name} images vary in size; set DataConfig.image_size (the model's resolution, "
            "e.g. 224) so that they can be held as one [N, H, W, C] array."
        )
    shape = (size, size, native[-1] if native else 3) if size else native
    if n_train is not None and v >= n_train:
        raise ValueError(f"validation_size={v} >= training examples ({n_train}).")
    if split == "validation" and v == 0:
        raise ValueError("No validation split: set validation_size > 0.")
    n = {"train": (n_train or 0) - v, "validation": v, "test": n_test or 0}[split]
    why = _memory_shortfall(name, split, n, shape)
    if streaming is None:
        # The memory guard: a split that does not fit is streamed.
        streaming = why is not None
    elif not streaming:
        _check_fits_in_memory(name, split, n, shape)
    mocked = _tfds_mocked(builder)
    must_stream = f"{why}, so it must be streamed from array_record files. " if streaming and why else ""

    # Checking the prepared files first fails in milliseconds; letting TFDS
    # try to download offline retries for minutes before failing.
    if not _is_prepared(builder) and not mocked:
        dl = tfds.download.DownloadConfig(manual_dir=data_config.manual_dir)
        if name == "imagenet2012":
            # Prepared from the manual directory alone: no network involved.
            md = data_config.manual_dir
            missing = [f for f in IMAGENET_MANUAL_FILES if not (md and os.path.exists(os.path.join(md, f)))]
            if missing:
                raise DataUnavailableError(
                    must_stream + (f"--manual-dir {md} lacks {', '.join(missing)}. " if md else "")
                    + _tfds_unavailable_message(name, data_config.data_dir, md, array_record=streaming)
                )
        elif os.environ.get("DP_ZOO_ALLOW_DOWNLOAD", "1") == "0" or not _network_reachable():
            raise DataUnavailableError(must_stream + _tfds_unavailable_message(
                name, data_config.data_dir, data_config.manual_dir, array_record=streaming))
        if streaming:
            # Streaming needs random access: prepare it as array_record.
            builder = tfds.builder(name, data_dir=data_config.data_dir, file_format="array_record")
        builder.download_and_prepare(download_config=dl)
    formats = {"array_record"} if mocked else _file_formats(builder)
    if streaming and "array_record" not in formats:
        raise DataUnavailableError(
            must_stream + f"Streaming {name} needs random access, but it is prepared in {builder.data_dir} as "
            f"{', '.join(sorted(formats)) or 'an unknown format'}, not array_record. Prepare it as "
            f"array_record: {_array_record_build_command(name, data_config.data_dir, data_config.manual_dir)} "
            "(ImageNet: the same manual directory, no network), or convert the prepared copy in place "
            f"with `tfds convert_format --dataset_version_dir={builder.data_dir} --out_file_format=array_record`."
        )
    splits = builder.info.splits
    test_split = _test_split_name(name, splits)
    # Negative slices keep the split fixed without knowing N up front.
    train_split = f"train[:-{v}]" if v else "train"
    tfds_split = {"train": train_split, "validation": f"train[-{v}:]", "test": test_split}[split]
    num_classes = builder.info.features["label"].num_classes
    how = f", shorter side resized to {size} + centre crop" if size else ""

    # A data set prepared only as array_record has no tf.data reader in
    # TFDS (as_dataset raises NotImplementedError): read it through its
    # random-access source, in memory or streamed.
    if streaming or (not mocked and "tfrecord" not in formats):
        full_train = _RandomAccessSplit(builder, "train", 0, None, size)
        train_src = full_train.view(0, len(full_train) - v)
        src = {"train": lambda: train_src, "validation": lambda: full_train.view(len(full_train) - v, None),
               "test": lambda: _RandomAccessSplit(builder, test_split, 0, None, size)}[split]()
        mean, std = normalization_constants(name, builder.info.features["image"].shape[-1] or 3)
        if streaming:
            return StreamingDataset(src, num_classes, name, f"{name} {tfds_split} (TFDS array_record, streamed{how})",
                                    mean, std)
        images, labels = src.read_all()
        return Dataset(images, labels, num_classes, name, f"{name} {tfds_split} (TFDS array_record{how})",
                       mean, std)

    def arrays(s):
        import tensorflow as tf

        ds = builder.as_dataset(split=s, as_supervised=True, shuffle_files=False)
        if size:
            ds = ds.map(lambda x, y: (_resize_center_crop(x, size), y), num_parallel_calls=tf.data.AUTOTUNE)
        xs, ys = [], []
        for x, y in tfds.as_numpy(ds.batch(1024).prefetch(2)):
            xs.append(x)
            ys.append(y)
        return np.concatenate(xs).astype(np.uint8), np.concatenate(ys).astype(np.int64)

    images, labels = arrays(tfds_split)
    mean, std = normalization_constants(name, images.shape[-1])
    return Dataset(images, labels, num_classes, name, f"{name} {tfds_split} (TFDS{how})", mean, std)


_DECODE_THREADS = max(4, min(32, 2 * (os.cpu_count() or 1)))


class _RandomAccessSplit:
    """Records ``[start, stop)`` of one TFDS split, read by index and decoded like ``as_dataset``.

    The image bytes are read with ``SkipDecoding`` and decoded by the
    feature's own TF decoder (the one ``as_dataset`` uses; TFDS's numpy path
    decodes JPEG with PIL/OpenCV, whose pixels differ), then resized/cropped
    by ``_resize_center_crop`` as the in-memory path does. Thread-safe.
    """

    def __init__(self, builder, split, start, stop, size, threads=None):
        import tensorflow as tf
        import tensorflow_datasets as tfds

        self.source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        total = len(self.source)
        self.start = int(start)
        self.stop = total if stop is None else int(stop)
        if not 0 <= self.start <= self.stop <= total:
            raise ValueError(f"records [{start}, {stop}) outside {split} ({total} records).")
        feature = builder.info.features["image"]
        channels = feature.shape[-1] if feature.shape and feature.shape[-1] else 3

        def decode(data):
            image = feature.decode_example(data)
            if size:
                image = _resize_center_crop(image, size)
            return tf.cast(image, tf.uint8)

        self._decode = tf.function(decode, input_signature=[tf.TensorSpec([], tf.string)])
        self._channels = channels
        self.split = split
        self.size = size
        native = tuple(feature.shape) if feature.shape and None not in feature.shape else None
        self.shape = (size, size, channels) if size else native
        self._pool = None
        self._threads = threads or _DECODE_THREADS

    def view(self, start, stop):
        """Records ``[start, stop)`` of this view (same reader and decoder)."""
        import copy

        stop = len(self) if stop is None else int(stop)
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"records [{start}, {stop}) outside a split of {len(self)} records.")
        other = copy.copy(self)
        other.start, other.stop = self.start + int(start), self.start + stop
        other._pool = None
        return other

    def __len__(self):
        return self.stop - self.start

    def _one(self, i):
        rec = self.source[self.start + int(i)]
        image = self._decode(rec["image"]).numpy()
        return image, int(np.asarray(rec["label"]))

    def read(self, indices):
        """(uint8 [n, H, W, C], int64 [n]) for split-relative ``indices`` (duplicates read once)."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"index out of range for a split of {len(self)} examples.")
        uniq, inverse = np.unique(indices, return_inverse=True)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="dp_zoo-decode")
        got = list(self._pool.map(self._one, uniq)) if len(uniq) > 1 else [self._one(i) for i in uniq]
        if self.shape is None and got:
            self.shape = got[0][0].shape
        images = np.zeros((len(uniq),) + tuple(self.shape), np.uint8)
        labels = np.zeros(len(uniq), np.int64)
        for j, (im, lab) in enumerate(got):
            if im.shape != images.shape[1:]:
                raise ValueError(f"{self.split} record {self.start + int(uniq[j])} is {im.shape}, "
                                 f"expected {images.shape[1:]}: set image_size to stream images of varying size.")
            images[j], labels[j] = im, lab
        return images[inverse], labels[inverse]

    def read_all(self, chunk=1024):
        xs, ys = [], []
        for i in range(0, len(self), chunk):
            x, y = self.read(np.arange(i, min(i + chunk, len(self))))
            xs.append(x)
            ys.append(y)
        if not xs:
            return np.zeros((0,) + tuple(self.shape or (0, 0, self._channels)), np.uint8), np.zeros(0, np.int64)
        return np.concatenate(xs), np.concatenate(ys)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class _Column:
    """``images`` or ``labels`` of a ``StreamingDataset``: indexable like the numpy arrays."""

    def __init__(self, owner, which):
        self._owner, self._which = owner, which

    def __len__(self):
        return len(self._owner)

    @property
    def shape(self):
        return (len(self._owner),) + (tuple(self._owner.input_shape) if self._which == 0 else ())

    @property
    def dtype(self):
        return np.dtype(np.uint8 if self._which == 0 else np.int64)

    def __getitem__(self, key):
        if isinstance(key, slice):
            key = np.arange(len(self._owner))[key]
        elif np.isscalar(key):
            return self._owner.fetch(np.asarray([key]))[self._which][0]
        return self._owner.fetch(np.asarray(key))[self._which]

    def __array__(self, dtype=None, copy=None):
        raise TypeError("a streamed split is not held in memory; index it (images[idx]) instead.")


class StreamingDataset:
    """A split read on demand from a TFDS random-access (array_record) source.

    Has the attributes of ``Dataset`` that the engine uses; ``images`` and
    ``labels`` are indexable views (``images[idx]`` with an index array or a
    slice returns uint8 ``[n, H, W, C]``, ``labels[idx]`` int64 ``[n]``),
    reading only the requested records. ``images[idx]`` followed by
    ``labels[idx]`` (what the engine does per micro-batch) reads once.
    """

    streaming = True

    def __init__(self, source, num_classes, name, split, mean, std):
        import threading

        self.source = source
        self.num_classes = num_classes
        self.name = name
        self.split = split
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.images = _Column(self, 0)
        self.labels = _Column(self, 1)
        self._lock = threading.Lock()
        self._last = (None, None)
        self._ready = {}  # idx bytes -> [Future] (prefetched micro-batches)
        self._prefetch = None
        self.prefetch_hits = 0
        self.prefetch_misses = 0

    def __len__(self):
        return len(self.source)

    @property
    def input_shape(self):
        if self.source.shape is None:
            self.source.read([0])
        return tuple(int(d) for d in self.source.shape)

    def fetch(self, idx):
        """(images, labels) of split-relative indices ``idx`` (prefetched if planned)."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        key = idx.tobytes()
        with self._lock:
            if self._last[0] == key:
                return self._last[1]
            futs = self._ready.get(key)
            fut = None
            if futs:
                seq, fut = futs.pop(0)
                # Batches planned before this one were skipped (the engine
                # asked for something else): drop them and free their slots.
                stale = 1
                for k in list(self._ready):
                    keep = [(s, f) for s, f in self._ready[k] if s > seq]
                    stale += len(self._ready[k]) - len(keep)
                    if keep:
                        self._ready[k] = keep
                    else:
                        del self._ready[k]
            state = self._prefetch
        if fut is not None:
            self.prefetch_hits += 1
            for _ in range(stale if state is not None else 0):
                state["slots"].release()
            out = fut.result()
        else:
            if self._prefetch is not None:
                self.prefetch_misses += 1
            out = self.source.read(idx)
        with self._lock:
            self._last = (key, out)
        return out

    def prefetch(self, sampler, start_step, end_step, lookahead=4):
        """Reads the micro-batches of steps ``[start_step, end_step)`` ahead of the engine.

        Replays the engine's own ``sampling.PoissonSampler`` (same secret,
        so the same batches) in a background thread and keeps up to
        ``lookahead`` micro-batches read and decoded. Only an optimisation:
        ``fetch`` serves a prefetched batch only when the engine asks for
        exactly those indices, and reads anything else synchronously, so
        results never depend on it. Its hit counters are internal: they
        add up realised batch sizes and are never published.
        """
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.stop_prefetch()
        state = {"slots": threading.Semaphore(max(1, int(lookahead))), "stop": threading.Event(),
                 "pool": ThreadPoolExecutor(1, thread_name_prefix="dp_zoo-prefetch")}

        def planned():
            for step in range(int(start_step), int(end_step)):
                for mi, _ in sampler.micro_batches(step):
                    yield mi

        def submit(seq, mi):
            fut = state["pool"].submit(self.source.read, mi)
            with self._lock:
                self._ready.setdefault(mi.tobytes(), []).append((seq, fut))

        batches = enumerate(planned(), start=1)
        # The first batches are queued before returning, so that the
        # engine's first request never races the planner thread.
        for _ in range(max(1, int(lookahead))):
            state["slots"].acquire()
            nxt = next(batches, None)
            if nxt is None:
                break
            submit(*nxt)

        def plan():
            for seq, mi in batches:
                while not state["slots"].acquire(timeout=0.5):
                    if state["stop"].is_set():
                        return
                if state["stop"].is_set():
                    return
                submit(seq, mi)

        state["thread"] = threading.Thread(target=plan, name="dp_zoo-sampler", daemon=True)
        self._prefetch = state
        state["thread"].start()

    def stop_prefetch(self):
        state, self._prefetch = self._prefetch, None
        if state is not None:
            state["stop"].set()
            state["thread"].join(timeout=5)
            state["pool"].shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._ready.clear()

    def close(self):
        self.stop_prefetch()
        self.source.close()


def _resize_center_crop(image, size):
    """Shorter side to ``size`` (area-weighted when shrinking), then a centre square.

    Keeps the aspect ratio (ImageNet's eval convention); for square images it
    is a plain resize.
    """
    import tensorflow as tf

    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    scale = size / tf.minimum(h, w)
    nh = tf.maximum(size, tf.cast(tf.round(h * scale), tf.int32))
    nw = tf.maximum(size, tf.cast(tf.round(w * scale), tf.int32))
    x = tf.image.resize(image, [nh, nw], antialias=True)
    x = tf.image.resize_with_crop_or_pad(x, size, size)
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)


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


def load_dataset(data_config, split, streaming=None):
    """Loads one split of the configured data set into memory, or streams it.

    Args:
      data_config: ``DataConfig``.
      split: "train", "validation" or "test".
      streaming: True: a ``StreamingDataset`` (TFDS data prepared as
        array_record); False: in memory (refused if it does not fit);
        None: in memory if it fits, else streamed.

    Returns:
      ``Dataset`` or ``StreamingDataset``.

    Raises:
      ValueError: unknown data set or split.
      DataUnavailableError: a TFDS data set is not prepared and cannot be
        downloaded; the message says how to get it.
    """
    _check(data_config, split)
    if data_config.dataset == "digits":
        if streaming:
            raise ValueError("streaming reads TFDS data sets prepared as array_record; the embedded digits "
                             "data set is 1,797 small images and is always held in memory.")
        return _digits(data_config, split)
    return _tfds(data_config, split, streaming)


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
