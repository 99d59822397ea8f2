"""Item 6: one example with a non-finite gradient is zeroed like a padding row; the step still happens."""

import keras
import numpy as np
import pytest

import dp_zoo
from dp_zoo.train import dp_sgd


def _dense():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])


def _wrn():
    keras.utils.set_random_seed(0)
    return dp_zoo.create_model("wrn_test", num_classes=10, input_shape=(8, 8, 1))


@pytest.mark.parametrize("build", [_dense, _wrn], ids=["dense", "wrn_ws_path"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_example_contributes_zero_and_the_rest_is_unchanged(build, bad):
    model = build()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 1, 8, 8, 1)).astype(np.float32)
    y = np.array([1, 2, 3, 4])
    x[2, 0, 3, 3, 0] = bad
    got, _ = dp_sgd.clipped_grad_sum(model, x, y, l2_clip=1.0, mask=np.ones(4, np.float32))
    clean = x.copy()
    clean[2] = 0.0
    want, _ = dp_sgd.clipped_grad_sum(model, clean, y, l2_clip=1.0, mask=np.array([1, 1, 0, 1], np.float32))
    for g, w in zip(got, want):
        assert np.all(np.isfinite(g.numpy()))
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)
