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
        data.load_dataset(C.DataConfig(dataset="imagenet2012", data_dir=str(tmp_path)), "train")
    assert time.time() - t0 < 10
