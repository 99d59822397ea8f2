"""TFDS data sets: prepared-data checks, the memory guard, and reading a split.

The in-memory path is built for CIFAR-scale data (CIFAR-10 train is 150 MB
as uint8). ImageNet is loaded the same way, resized to the model's
resolution (shorter side to ``image_size``, centre crop), which is honest
but large: the train split at 224x224 is ~193 GB of uint8. Before reading
anything, ``load`` estimates the array size; when it would not fit in this
machine's available memory it streams the split instead (``streaming``), or
refuses with the numbers if the data set cannot be streamed, rather than
swapping for hours or being killed. Data prepared as TFRecord (TFDS's
default) has no random access, so it cannot be streamed: prepare it with
``tfds build NAME --file_format=array_record`` (the error says so).

Offline behaviour: TFDS, asked for a data set that is not prepared, tries
to download it and retries a failed download for minutes. We check whether
the prepared files exist first and whether the download host is reachable
(a 3 s TCP connect); if not, ``DataUnavailableError`` says how to get the
data (``tfds build NAME``, or the manual directory for ImageNet) within a
second. ``DP_ZOO_ALLOW_DOWNLOAD=0`` forbids downloads outright.
"""

import os

import numpy as np

from dp_zoo.data.catalogue import (IMAGENET_MANUAL_FILES, KNOWN_SIZES, Dataset, DataUnavailableError,
                                   normalization_constants)
from dp_zoo.data.image_ops import resize_center_crop
from dp_zoo.data.streaming import RandomAccessSplit, StreamingDataset


def load(data_config, split, streaming=None):
    """One split of a TFDS data set: a ``Dataset`` in memory, or a ``StreamingDataset``.

    ``streaming`` as in ``load_dataset``: None streams exactly when the
    split would not fit in memory.
    """
    tfds = _import_tfds()

    name = data_config.dataset
    builder = tfds.builder(name, data_dir=data_config.data_dir)
    n, shape = _split_size(builder, data_config, split)
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
        builder = _prepare(tfds, builder, data_config, streaming, must_stream)
    formats = {"array_record"} if mocked else _file_formats(builder)
    if streaming and "array_record" not in formats:
        raise DataUnavailableError(must_stream + _not_array_record_message(builder, data_config, formats))
    # A data set prepared only as array_record has no tf.data reader in
    # TFDS (as_dataset raises NotImplementedError): read it through its
    # random-access source, in memory or streamed.
    if streaming or (not mocked and "tfrecord" not in formats):
        return _read_random_access(builder, data_config, split, streaming)
    return _read_tf_data(tfds, builder, data_config, split)


def _split_size(builder, data_config, split):
    """(examples in ``split``, array shape [H, W, C] or None), checking the configuration."""
    name, size, v = data_config.dataset, data_config.image_size, data_config.validation_size
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
    return n, shape


def _prepare(tfds, builder, data_config, streaming, must_stream):
    """Prepares an unprepared data set, or raises ``DataUnavailableError`` when it cannot be fetched now.

    Returns the builder to read from (an array_record one when streaming).
    """
    name = data_config.dataset
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
    return builder


def _not_array_record_message(builder, data_config, formats):
    name = data_config.dataset
    return (
        f"Streaming {name} needs random access, but it is prepared in {builder.data_dir} as "
        f"{', '.join(sorted(formats)) or 'an unknown format'}, not array_record. Prepare it as "
        f"array_record: {_array_record_build_command(name, data_config.data_dir, data_config.manual_dir)} "
        "(ImageNet: the same manual directory, no network), or convert the prepared copy in place "
        f"with `tfds convert_format --dataset_version_dir={builder.data_dir} --out_file_format=array_record`."
    )


def _tfds_split(builder, data_config, split):
    """The TFDS split expression of ``split``, e.g. ``train[:-500]``."""
    v = data_config.validation_size
    # Negative slices keep the split fixed without knowing N up front.
    train_split = f"train[:-{v}]" if v else "train"
    test_split = _test_split_name(data_config.dataset, builder.info.splits)
    return {"train": train_split, "validation": f"train[-{v}:]", "test": test_split}[split]


def _resize_note(size):
    return f", shorter side resized to {size} + centre crop" if size else ""


def _read_random_access(builder, data_config, split, streaming):
    """The split through the array_record data source: streamed, or read whole into memory."""
    name, size, v = data_config.dataset, data_config.image_size, data_config.validation_size
    tfds_split, how = _tfds_split(builder, data_config, split), _resize_note(size)
    num_classes = builder.info.features["label"].num_classes
    test_split = _test_split_name(name, builder.info.splits)
    full_train = RandomAccessSplit(builder, "train", 0, None, size)
    train_src = full_train.view(0, len(full_train) - v)
    src = {"train": lambda: train_src, "validation": lambda: full_train.view(len(full_train) - v, None),
           "test": lambda: RandomAccessSplit(builder, test_split, 0, None, size)}[split]()
    mean, std = normalization_constants(name, builder.info.features["image"].shape[-1] or 3)
    if streaming:
        return StreamingDataset(src, num_classes, name, f"{name} {tfds_split} (TFDS array_record, streamed{how})",
                                mean, std)
    images, labels = src.read_all()
    return Dataset(images, labels, num_classes, name, f"{name} {tfds_split} (TFDS array_record{how})", mean, std)


def _read_tf_data(tfds, builder, data_config, split):
    """The split read into memory through ``as_dataset`` (TFRecord data)."""
    import tensorflow as tf

    name, size = data_config.dataset, data_config.image_size
    tfds_split = _tfds_split(builder, data_config, split)
    num_classes = builder.info.features["label"].num_classes
    ds = builder.as_dataset(split=tfds_split, as_supervised=True, shuffle_files=False)
    if size:
        ds = ds.map(lambda x, y: (resize_center_crop(x, size), y), num_parallel_calls=tf.data.AUTOTUNE)
    xs, ys = [], []
    for x, y in tfds.as_numpy(ds.batch(1024).prefetch(2)):
        xs.append(x)
        ys.append(y)
    images, labels = np.concatenate(xs).astype(np.uint8), np.concatenate(ys).astype(np.int64)
    mean, std = normalization_constants(name, images.shape[-1])
    return Dataset(images, labels, num_classes, name, f"{name} {tfds_split} (TFDS{_resize_note(size)})", mean, std)


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
    if name == "mnist":
        how += (" Or, offline, import a local copy: `python -m dp_zoo.data import mnist FILE` (mnist.pkl.gz, "
                "Keras' mnist.npz or the four IDX files; README, \"MNIST\").")
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
    n_train, n_test, shape = KNOWN_SIZES.get(name, (None, None, None))
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
