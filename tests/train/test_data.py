"""Data: the embedded digits split, augmentation multiplicity, TFDS loading (mock_data)."""

import time

import numpy as np
import pytest
import tensorflow as tf

from dp_zoo.train import config as C, data


def test_digits_split_is_fixed_and_documented():
    tr = data.load_dataset(C.DataConfig(), "train")
    te = data.load_dataset(C.DataConfig(), "test")
    assert (len(tr), len(te)) == (1437, 360)
    assert tr.images.dtype == np.uint8 and tr.images.shape[1:] == (8, 8, 1)
    assert tr.images.max() == 255 and tr.labels.dtype == np.int64 and tr.num_classes == 10
    assert "digits[:1437]" in tr.split and "digits[1437:]" in te.split
    # Same bytes every time (no shuffling), and train/test disjoint by construction.
    assert np.array_equal(tr.images, data.load_dataset(C.DataConfig(), "train").images)
    v = data.load_dataset(C.DataConfig(validation_size=300), "validation")
    tr2 = data.load_dataset(C.DataConfig(validation_size=300), "train")
    assert len(v) == 300 and len(tr2) == 1137
    assert np.array_equal(np.concatenate([tr2.images, v.images]), tr.images)


def test_augmult_views_are_crops_of_the_padded_image():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 8, 8, 1)).astype(np.float32)
    aug = data.make_augment_fn(C.AugmultConfig(num_views=6, style="crop", pad=2, augment_first_view=False))
    v = aug(tf.constant(x), tf.constant([3, 4], tf.int64)).numpy()
    assert v.shape == (5, 6, 8, 8, 1)
    np.testing.assert_array_equal(v[:, 0], x)  # view 0 un-augmented
    padded = np.pad(x, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    for i in range(5):
        for k in range(1, 6):
            assert any(np.array_equal(v[i, k], padded[i, a:a + 8, b:b + 8]) for a in range(5) for b in range(5))
    assert len({v[0, k].tobytes() for k in range(6)}) > 2  # views differ
    again = aug(tf.constant(x), tf.constant([3, 4], tf.int64)).numpy()
    np.testing.assert_array_equal(v, again)  # stateless: same seed, same views


def test_cifar_style_flips_and_imagenet_style_shapes():
    x = tf.random.normal([4, 32, 32, 3])
    v = data.make_augment_fn(C.AugmultConfig(num_views=16, style="cifar"))(x, tf.constant([1, 1], tf.int64))
    assert v.shape == (4, 16, 32, 32, 3)
    assert not np.array_equal(v[:, 0].numpy(), x.numpy())  # augment_first_view=True (the paper's CIFAR)
    # Some views are mirror images of a crop of the padded image: flips happen.
    padded = np.pad(x.numpy(), [(0, 0), (4, 4), (4, 4), (0, 0)], mode="reflect")
    crops = [padded[0, a:a + 32, b:b + 32] for a in range(9) for b in range(9)]
    kinds = set()
    for k in range(16):
        view = v[0, k].numpy()
        kinds.add("plain" if any(np.array_equal(view, c) for c in crops) else
                  "flipped" if any(np.array_equal(view[:, ::-1], c) for c in crops) else "other")
    assert kinds == {"plain", "flipped"}
    v = data.make_augment_fn(C.AugmultConfig(num_views=2, style="imagenet"))(x, tf.constant([1, 1], tf.int64))
    assert v.shape == (4, 2, 32, 32, 3)


def test_tfds_cifar10_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=40):
        tr = data.load_dataset(C.DataConfig(dataset="cifar10", data_dir=str(tmp_path)), "train")
        te = data.load_dataset(C.DataConfig(dataset="cifar10", data_dir=str(tmp_path)), "test")
    assert tr.images.shape[1:] == (32, 32, 3) and tr.images.dtype == np.uint8
    assert tr.num_classes == 10 and len(tr) == 40 and len(te) == 40
    assert len(tr.mean) == 3 and all(s > 0 for s in tr.std)


def test_missing_tfds_data_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("DP_ZOO_ALLOW_DOWNLOAD", "0")
    t0 = time.time()
    with pytest.raises(data.DataUnavailableError, match="tfds build cifar10"):
        data.load_dataset(C.DataConfig(dataset="cifar10", data_dir=str(tmp_path)), "train")
    with pytest.raises(data.DataUnavailableError, match="--manual-dir"):
        data.load_dataset(C.DataConfig(dataset="imagenet2012", data_dir=str(tmp_path), image_size=32), "train")
    assert time.time() - t0 < 10


def test_offline_detection_itself_is_fast(tmp_path, monkeypatch):
    """The real reachability check (not the env switch), with the network cut."""
    import socket

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.delenv("DP_ZOO_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setattr(socket, "create_connection", no_network)
    t0 = time.time()
    with pytest.raises(data.DataUnavailableError, match="tfds build mnist"):
        data.load_dataset(C.DataConfig(dataset="mnist", data_dir=str(tmp_path)), "train")
    assert time.time() - t0 < 5


def test_imagenet_needs_manual_files_and_a_resolution(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        data.load_dataset(C.DataConfig(dataset="imagenet2012", data_dir=str(tmp_path)), "train")
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "ILSVRC2012_img_val.tar").write_bytes(b"")
    with pytest.raises(data.DataUnavailableError, match="lacks ILSVRC2012_img_train.tar"):
        data.load_dataset(C.DataConfig(dataset="imagenet2012", data_dir=str(tmp_path), image_size=32,
                                       manual_dir=str(tmp_path / "manual")), "test")


def test_a_split_too_big_for_memory_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_available_memory_bytes", lambda: 10**8)
    with pytest.raises(data.DataUnavailableError, match=r"cifar10 train is 50,000 images of 32x32x3 = 0.2 GB"):
        data.load_dataset(C.DataConfig(dataset="cifar10", data_dir=str(tmp_path)), "train")


def test_tfds_imagenet_mock_resized_to_the_model_resolution(tmp_path):
    import tensorflow_datasets as tfds

    cfg = C.DataConfig(dataset="imagenet2012", data_dir=str(tmp_path), image_size=24)
    with tfds.testing.mock_data(num_examples=6):
        tr = data.load_dataset(cfg, "train")
        te = data.load_dataset(cfg, "test")
    assert tr.images.shape == (6, 24, 24, 3) and te.images.shape == (6, 24, 24, 3)
    assert "validation" in te.split and "centre crop" in te.split  # ImageNet's labelled val is the test set
    assert te.mean == tr.mean and tr.num_classes == 1000


def test_normalisation_constants_are_fixed_not_measured_on_private_data(tmp_path):
    """mean/std ship inside the exported model: they must not depend on the training data."""
    import tensorflow_datasets as tfds

    # Digits: data-independent 0.5 / 0.5, whatever part of the data is used.
    a = data.load_dataset(C.DataConfig(dataset="digits"), "train")
    b = data.load_dataset(C.DataConfig(dataset="digits", validation_size=300), "train")
    assert a.mean == b.mean == (0.5,) and a.std == b.std == (0.5,)
    # CIFAR-10: the published constants, identical for two different (mock) data sets.
    got = []
    for n in (20, 40):
        with tfds.testing.mock_data(num_examples=n):
            d = data.load_dataset(C.DataConfig(dataset="cifar10", data_dir=str(tmp_path)), "train")
        got.append((d.mean, d.std))
    assert got[0] == got[1] == data.PUBLIC_NORMALIZATION["cifar10"]
    assert data.normalization_constants("unknown_set", 3) == ((0.5,) * 3, (0.5,) * 3)
