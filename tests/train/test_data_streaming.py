"""Streaming a TFDS split from array_record files with exact Poisson sampling.

TFDS data sets cannot be downloaded here, so a tiny real TFDS builder is
prepared twice in a temporary directory from the same deterministic
examples: once as TFRecord (TFDS's default, read by the in-memory path
through ``as_dataset``) and once as array_record (random access, read by the
streaming path through ``as_data_source``). ``tfds.builder`` is pointed at
it under a catalogue name, so ``load_dataset`` and the CLI run their real
code on real files. ``tfds.testing.mock_data`` does mock data sources in
TFDS 4.9.10, but its data source and its ``as_dataset`` generate different
examples (and its ``__getitems__`` is broken), so it is used only for a
smoke test here.
"""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dp_zoo import data
from dp_zoo.data import sampling
from dp_zoo.data import tfds_source
from dp_zoo.recipes import config as C


class DpZooTinyVarying(tfds.core.GeneratorBasedBuilder):
    """JPEG images of varying size (like ImageNet): train 40, validation 12."""

    VERSION = tfds.core.Version("1.0.0")
    SHAPE = (None, None, 3)
    SPLITS = (("train", 40), ("validation", 12))
    FORMAT = "jpeg"

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=self.SHAPE, encoding_format=self.FORMAT),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {name: self._generate_examples(seed, n) for seed, (name, n) in enumerate(self.SPLITS)}

    def _generate_examples(self, seed, n):
        rng = np.random.default_rng(seed)
        for i in range(n):
            if self.SHAPE[0] is None:
                h, w = rng.integers(12, 40, 2)
            else:
                h, w = self.SHAPE[:2]
            image = rng.integers(0, 256, (h, w, self.SHAPE[2]), dtype=np.uint8)
            yield i, {"image": image, "label": int(rng.integers(10))}


class DpZooTinyCifar(DpZooTinyVarying):
    """32x32x3 PNG (like CIFAR-10): train 96, test 20."""

    SHAPE = (32, 32, 3)
    SPLITS = (("train", 96), ("test", 20))
    FORMAT = "png"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    for cls in (DpZooTinyVarying, DpZooTinyCifar):
        for fmt in ("tfrecord", "array_record"):
            cls(data_dir=str(root / fmt), file_format=fmt).download_and_prepare()
    return root


@pytest.fixture
def as_catalogue(monkeypatch, prepared):
    """``as_catalogue(cls)``: tfds.builder(any name, data_dir=D) builds ``cls`` from D."""

    def install(cls):
        def builder(name, data_dir=None, **kwargs):
            return cls(data_dir=data_dir, **kwargs)

        monkeypatch.setattr(tfds, "builder", builder)

    yield install


# torchvision's ImageNet constants (the published figures, typed here, not read from dp_zoo).
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _imagenet_like(prepared, fmt, **kw):
    return C.DataConfig(dataset="imagenet2012", data_dir=str(prepared / fmt), image_size=24, **kw)


@pytest.mark.parametrize("validation_size", [0, 7])
def test_streamed_batches_equal_the_in_memory_ones_for_the_sampled_indices(prepared, as_catalogue, validation_size):
    as_catalogue(DpZooTinyVarying)
    splits = ["train", "test"] + (["validation"] if validation_size else [])
    for split in splits:
        mem = data.load_dataset(_imagenet_like(prepared, "tfrecord", validation_size=validation_size), split,
                                streaming=False)
        st = data.load_dataset(_imagenet_like(prepared, "array_record", validation_size=validation_size), split,
                               streaming=True)
        assert isinstance(mem, data.Dataset) and isinstance(st, data.StreamingDataset)
        assert len(st) == len(mem) and st.input_shape == mem.input_shape == (24, 24, 3)
        assert st.num_classes == 10 and "streamed" in st.split
        # Both paths normalise with ImageNet's published constants, never statistics of the data.
        assert (st.mean, st.std) == (mem.mean, mem.std) == IMAGENET_MEAN_STD
        # Exactly what the engine does per step: Poisson sample, fixed-size
        # micro-batches padded with index 0 / mask 0, then images[idx], labels[idx].
        q = min(1.0, 9 / len(mem))
        for step in range(4):
            idx = sampling.poisson_sample(len(mem), q, secret=sampling.RunSecret.from_seed(3), step=step)
            batches = sampling.micro_batches(idx, 4)
            assert sum(int(mm.sum()) for _, mm in batches) == len(idx)
            for mi, mm in batches:
                np.testing.assert_array_equal(st.images[mi], mem.images[mi])
                np.testing.assert_array_equal(st.labels[mi], mem.labels[mi])
                assert st.images[mi].dtype == np.uint8 and st.labels[mi].dtype == np.int64
        # Slices (evaluation) and scalars.
        np.testing.assert_array_equal(st.images[2:9], mem.images[2:9])
        np.testing.assert_array_equal(st.labels[:], mem.labels)
        assert st.labels[5] == mem.labels[5]
        st.close()


def test_duplicate_and_padding_indices_are_read_once(prepared, as_catalogue):
    as_catalogue(DpZooTinyCifar)
    st = data.load_dataset(C.DataConfig(dataset="cifar10", data_dir=str(prepared / "array_record")), "train",
                           streaming=True)
    reads = []
    one = st.source._one
    st.source._one = lambda i: (reads.append(int(i)), one(i))[1]
    idx, mask = sampling.micro_batches(np.array([5, 9]), 6)[0]  # 4 padding rows -> index 0
    assert idx.tolist() == [5, 9, 0, 0, 0, 0] and mask.tolist() == [1, 1, 0, 0, 0, 0]
    images, labels = st.images[idx], st.labels[idx]
    assert sorted(reads) == [0, 5, 9]  # labels[idx] after images[idx] reads nothing more
    assert images.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(images[2:], np.repeat(images[2:3], 4, axis=0))
    with pytest.raises(IndexError):
        st.images[np.array([len(st)])]
    with pytest.raises(TypeError, match="not held in memory"):
        np.asarray(st.images)


def test_prefetch_replays_the_engines_poisson_sampler(prepared, as_catalogue):
    as_catalogue(DpZooTinyCifar)
    st = data.load_dataset(C.DataConfig(dataset="cifar10", data_dir=str(prepared / "array_record")), "train",
                           streaming=True)
    mem = data.load_dataset(C.DataConfig(dataset="cifar10", data_dir=str(prepared / "tfrecord")), "train",
                            streaming=False)
    sampler = sampling.PoissonSampler(len(st), 30 / len(st), sampling.RunSecret.generate(), 8)
    st.prefetch(sampler, start_step=2, end_step=8, lookahead=3)
    try:
        n_micro = 0
        for step in range(2, 8):  # the engine's order
            for mi, _ in sampler.micro_batches(step):
                np.testing.assert_array_equal(st.images[mi], mem.images[mi])
                np.testing.assert_array_equal(st.labels[mi], mem.labels[mi])
                n_micro += 1
        assert st.prefetch_hits == n_micro and st.prefetch_misses == 0
        # An index set the sampler did not plan is read on demand, correctly.
        odd = np.array([1, 2, 3])
        np.testing.assert_array_equal(st.images[odd], mem.images[odd])
        assert st.prefetch_misses == 1
    finally:
        st.close()


def test_the_memory_guard_streams_or_says_how_to_prepare_array_record(prepared, as_catalogue, monkeypatch):
    as_catalogue(DpZooTinyCifar)
    monkeypatch.setattr(tfds_source, "_available_memory_bytes", lambda: 100_000)  # 96 x 3 KB does not fit in half
    cfg = C.DataConfig(dataset="cifar10", data_dir=str(prepared / "array_record"))
    assert isinstance(data.load_dataset(cfg, "train"), data.StreamingDataset)
    with pytest.raises(data.DataUnavailableError, match="--streaming"):
        data.load_dataset(cfg, "train", streaming=False)
    tfr = C.DataConfig(dataset="cifar10", data_dir=str(prepared / "tfrecord"))
    for streaming in (None, True):
        with pytest.raises(data.DataUnavailableError) as e:
            data.load_dataset(tfr, "train", streaming=streaming)
        msg = str(e.value)
        assert "not array_record" in msg and "tfds build cifar10 --file_format=array_record" in msg
        assert "tfds convert_format" in msg


def test_array_record_only_data_loads_in_memory_too(prepared, as_catalogue):
    """TFDS has no as_dataset for array_record: the in-memory path reads the data source."""
    as_catalogue(DpZooTinyVarying)
    a = data.load_dataset(_imagenet_like(prepared, "array_record"), "test", streaming=False)
    b = data.load_dataset(_imagenet_like(prepared, "tfrecord"), "test", streaming=False)
    assert isinstance(a, data.Dataset)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert (a.mean, a.std) == (b.mean, b.std) == IMAGENET_MEAN_STD


def test_digits_cannot_be_streamed():
    with pytest.raises(ValueError, match="always held in memory"):
        data.load_dataset(C.DataConfig(), "train", streaming=True)


def test_streaming_under_mock_data():
    with tfds.testing.mock_data(num_examples=24):
        st = data.load_dataset(C.DataConfig(dataset="cifar10", data_dir="/nonexistent"), "train", streaming=True)
        idx = np.array([0, 3, 3, 23])
        x, y = st.images[idx], st.labels[idx]
    assert len(st) == 24 and x.shape == (4, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x[1], x[2])


def _cli_run(tmp_path, prepared, fmt, extra):
    from dp_zoo.commands import train as train_cli
    from dp_zoo.jobs import training as run

    argv = ["--recipe", "wrn16_4_cifar10_eps8", "--steps", "3", "--batch-size", "24",
            "--physical-batch-size", "8", "--augmult", "2", "--noise-multiplier", "1.0", "--deterministic",
            "--data-dir", str(prepared / fmt), "--run-dir", str(tmp_path / fmt), "--nopublish", "--noprogress",
            *extra]
    args = train_cli._parser().parse_args(argv)
    name, config, recipe = train_cli.resolve(args)
    config = config.replace(model="wrn_test")  # a tiny network: the input pipeline is under test
    return run.train(name, config, recipe, train_cli.run_options(args))


@pytest.mark.slow
def test_cli_streaming_run_equals_the_in_memory_run(tmp_path, prepared, as_catalogue):
    from tensorflow.python.framework import config as tf_config

    as_catalogue(DpZooTinyCifar)
    try:
        streamed = _cli_run(tmp_path, prepared, "array_record", ["--streaming"])
        in_memory = _cli_run(tmp_path, prepared, "tfrecord", ["--nostreaming"])
    finally:
        tf_config.disable_op_determinism()  # --deterministic turned it on for this process
    on_disk = json.load(open(tmp_path / "array_record" / "run_record.json"))
    assert on_disk["data"]["streaming"] is True and in_memory["data"]["streaming"] is False
    assert "streamed" in on_disk["data"]["train_split"]
    # The prefetcher's counters add up realised batch sizes: never published.
    assert not any("micro_batches" in k for k in on_disk["data"])
    assert streamed["privacy"]["nominal_epsilon"] == in_memory["privacy"]["nominal_epsilon"]
    assert streamed["privacy"]["nominal_epsilon"]["pld"] > 0 and streamed["privacy"]["steps"] == 3
    # Same seed, same batches, same (seeded) noise: the same weights, bit for bit.
    assert streamed["weights_sha256"] == in_memory["weights_sha256"]
    assert streamed["metrics"]["test_accuracy_last"] == in_memory["metrics"]["test_accuracy_last"]


def test_unprepared_and_too_big_says_to_prepare_array_record(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "_available_memory_bytes", lambda: 10**8)
    monkeypatch.setenv("DP_ZOO_ALLOW_DOWNLOAD", "0")
    with pytest.raises(data.DataUnavailableError) as e:
        data.load_dataset(C.DataConfig(dataset="cifar10", data_dir=str(tmp_path)), "train")
    msg = str(e.value)
    assert "50,000 images of 32x32x3 = 0.2 GB" in msg and "must be streamed" in msg
    assert "tfds build cifar10 --file_format=array_record" in msg
