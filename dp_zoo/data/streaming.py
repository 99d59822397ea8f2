"""Streaming a TFDS split: records read by index, on demand.

``StreamingDataset`` reads a TFDS data set prepared in the ``array_record``
format through its random-access data source (``builder.as_data_source``).
Poisson sampling stays exact: the engine draws each step's index set
(``sampling.PoissonSampler``, each example independently with probability
q) exactly as for an in-memory split, and ``images[idx]``/``labels[idx]``
fetch and decode just those records (in a thread pool, with TFDS's own TF
image decoder and the same resize/centre crop), so a batch is bit-identical
to the in-memory one for the same indices. Nothing is ever shuffled or read
sequentially for training. ``StreamingDataset.prefetch`` replays the sampler
ahead of the engine so that reading overlaps the DP step.
"""

import os

import numpy as np

from dp_zoo.data.image_ops import resize_center_crop

_DECODE_THREADS = max(4, min(32, 2 * (os.cpu_count() or 1)))


class RandomAccessSplit:
    """Records ``[start, stop)`` of one TFDS split, read by index and decoded like ``as_dataset``.

    The image bytes are read with ``SkipDecoding`` and decoded by the
    feature's own TF decoder (the one ``as_dataset`` uses; TFDS's numpy path
    decodes JPEG with PIL/OpenCV, whose pixels differ), then resized/cropped
    by ``image_ops.resize_center_crop`` as the in-memory path does. Thread-safe.
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
                image = resize_center_crop(image, size)
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
