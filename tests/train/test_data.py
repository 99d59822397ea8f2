"""Data: the embedded digits split, augmentation multiplicity, TFDS loading (mock_data)."""

import time

import numpy as np
import pytest
import tensorflow as tf

from dp_zoo import data
from dp_zoo.data import image_ops, tfds_source
from dp_zoo.recipes import config as C

# Published normalisation constants, typed here (not read from dp_zoo): CIFAR-10's per-channel
# mean/std of x/255 over its training set, and torchvision's ImageNet figures.
CIFAR10_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


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
    monkeypatch.setattr(tfds_source, "_available_memory_bytes", lambda: 10**8)
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
    assert (tr.mean, tr.std) == (te.mean, te.std) == IMAGENET_MEAN_STD and tr.num_classes == 1000


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
    assert got[0] == got[1] == CIFAR10_MEAN_STD
    assert data.normalization_constants("unknown_set", 3) == ((0.5,) * 3, (0.5,) * 3)
    assert data.normalization_constants("imagenet2012", 3) == IMAGENET_MEAN_STD
    assert data.normalization_constants("mnist", 1) == ((0.1307,), (0.3081,))


def test_normalize_maps_pixels_to_standardised_values():
    """The exact map every consumer (training, evaluation, serving) applies: (x / 255 - mean) / std."""
    from dp_zoo.preprocessing import normalize

    x = np.array([[[[0, 128, 255], [51, 102, 204]]]], np.uint8)  # [1, 1, 2, 3]
    mean, std = IMAGENET_MEAN_STD
    want = [[[[(0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225],
              [(0.2 - 0.485) / 0.229, (0.4 - 0.456) / 0.224, (0.8 - 0.406) / 0.225]]]]
    got = normalize(x, mean, std).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_imagenet_resize_keeps_aspect_and_crops_the_centre():
    """Shorter side to the model's resolution, then the centre square (ImageNet's eval convention)."""
    rng = np.random.default_rng(0)
    # Shorter side already at the size: no resampling, the crop is columns 8..31 of 40.
    x = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    got = image_ops.resize_center_crop(tf.constant(x), 24).numpy()
    assert got.dtype == np.uint8 and got.shape == (24, 24, 3)
    np.testing.assert_array_equal(got, x[:, 8:32])
    np.testing.assert_array_equal(image_ops.resize_center_crop(tf.constant(x.transpose(1, 0, 2)), 24).numpy(),
                                  x.transpose(1, 0, 2)[8:32])  # portrait: rows 8..31
    # Shrinking 30x60 -> 24x48: a flat colour stays that colour, channel by channel.
    flat = np.broadcast_to(np.array([10, 128, 250], np.uint8), (30, 60, 3)).copy()
    np.testing.assert_array_equal(image_ops.resize_center_crop(tf.constant(flat), 24).numpy(),
                                  np.broadcast_to(flat[0, 0], (24, 24, 3)))
    # Left half black, right half white: the centre square holds both halves, split in its middle
    # (a corner crop would be one colour; a plain squash to 24x24 would keep the halves at 12 too, but
    # the first test above rules that out).
    halves = np.zeros((30, 60, 3), np.uint8)
    halves[:, 30:] = 255
    got = image_ops.resize_center_crop(tf.constant(halves), 24).numpy()
    assert (got[:, :10] == 0).all() and (got[:, -10:] == 255).all()


def test_imagenet_augmentation_is_a_seven_eighths_crop_resized_back_and_flipped():
    """On a horizontal ramp (pixel value = column), every "imagenet" view is a ramp again: slope +-7/8
    (a crop of 87.5% of the side stretched back to full width; negative when flipped), inside 0..31."""
    x = np.broadcast_to(np.arange(32, dtype=np.float32)[None, None, :, None], (6, 32, 32, 1)).copy()
    views = data.make_augment_fn(C.AugmultConfig(num_views=8, style="imagenet"))(
        tf.constant(x), tf.constant([4, 2], tf.int64)).numpy()
    assert views.shape == (6, 8, 32, 32, 1)
    rows = views[..., 0].reshape(-1, 32)
    slopes = np.diff(rows, axis=1)
    np.testing.assert_allclose(np.abs(slopes), 28 / 32, atol=1e-4)
    assert (rows >= -1e-4).all() and (rows <= 31 + 1e-4).all()
    signs = np.sign(slopes[:, 0])
    assert {-1.0, 1.0} <= set(signs)  # some views flipped, some not
    assert len({round(float(r[0]), 3) for r in rows}) > 2  # crops at different offsets
